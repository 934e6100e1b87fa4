//! `vgg classify`: the same top-5 as torchvision's preprocessing and PyTorch on a committed
//! fixture (scripts/make_fixtures.py --classify), and named errors for bad images.

mod common;

use std::path::Path;

use common::{ok, refused};

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/classify")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn top_5_matches_torchvision() {
    let out = ok(&[
        "classify",
        "--weights",
        &fixture("weights.safetensors"),
        &fixture("image.png"),
    ]);
    let ours: Vec<usize> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    let theirs: Vec<usize> = expected["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(ours, theirs, "{out}");
    assert!(
        out.contains("black widow"),
        "ImageNet names are printed: {out}"
    );
}

#[test]
fn bad_images_are_named() {
    let weights = fixture("weights.safetensors");
    let dir = std::env::temp_dir().join(format!("vgg-classify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = std::fs::read(fixture("image.png")).unwrap();
    let truncated = dir.join("truncated.png");
    std::fs::write(&truncated, &png[..png.len() / 3]).unwrap();
    refused(
        &[
            "classify",
            "--weights",
            &weights,
            truncated.to_str().unwrap(),
        ],
        &["truncated.png", "not a valid PNG or JPEG"],
    );
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a picture").unwrap();
    refused(
        &["classify", "--weights", &weights, text.to_str().unwrap()],
        &["notes.txt", "supported format"],
    );
    let bmp = dir.join("image.bmp");
    std::fs::write(&bmp, [b"BM".as_slice(), &[0u8; 60]].concat()).unwrap();
    refused(
        &["classify", "--weights", &weights, bmp.to_str().unwrap()],
        &["image.bmp"],
    );
    refused(
        &["classify", "--weights", &weights, "/nonexistent/cat.jpg"],
        &["cannot read", "cat.jpg"],
    );
}

#[test]
fn untrained_weights_are_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("drawn.safetensors");
    let weights = weights.to_str().unwrap();
    ok(&[
        "init",
        "--model",
        "vgg11",
        "--width-mult",
        "0.0625",
        "--hidden",
        "16",
        "--output",
        weights,
    ]);
    let out = ok(&["classify", "--weights", weights, &fixture("image.png")]);
    assert!(
        out.starts_with(
            "note: these weights are untrained (drawn by `vgg init`, reference, seed 0)"
        ),
        "{out}"
    );
    // Weights with no such record (the fixture, exported from PyTorch) get no note.
    let out = ok(&[
        "classify",
        "--weights",
        &fixture("weights.safetensors"),
        &fixture("image.png"),
    ]);
    assert!(!out.contains("untrained"), "{out}");
}
