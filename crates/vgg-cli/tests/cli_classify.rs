//! `vgg classify`: the same top-5 as torchvision's preprocessing and PyTorch on a committed
//! fixture (scripts/make_fixtures.py --classify), and named errors for bad images.

mod common;

use std::path::Path;

use common::{init_grey_32, ok, refused};

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/classify")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn top_5_matches_torchvision() {
    top_5_matches_torchvision_in("f32");
}

/// The bf16 math mode keeps the top 5, though this fixture's probabilities differ by only 2%.
#[test]
fn top_5_matches_torchvision_in_bf16() {
    top_5_matches_torchvision_in("bf16");
}

fn top_5_matches_torchvision_in(precision: &str) {
    let out = ok(&[
        "classify",
        "--weights",
        &fixture("weights.safetensors"),
        &fixture("image.png"),
        "--precision",
        precision,
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

/// A network trained on the digits (its metadata says so) is shown a picture as the digits were
/// made: grey levels on 8x8, ink bright, each enlarged to a 4x4 block, in [-1, 1]. Checked against
/// the same values built here and given as a .npy: the logits agree. A picture of dark strokes on
/// light paper is inverted first, and the output says so.
#[test]
fn a_digits_network_sees_a_picture_as_its_training_data() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let weights = at("digits.safetensors");
    init_grey_32(&weights);
    // What `vgg train` records: the data set.
    let mut file = vgg_nn::io::load_safetensors(Path::new(&weights)).unwrap();
    file.metadata
        .insert("train.dataset".into(), "digits".into());
    vgg_nn::io::save_safetensors(Path::new(&weights), &file).unwrap();

    // An 8x8 picture (no resampling at that size): a bright stroke on a dark ground.
    let level = |x: u32, y: u32| {
        if x == 3 || y == 5 {
            255u8
        } else {
            (x * 9 + y * 5) as u8
        }
    };
    let picture = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([level(x, y); 3]));
    picture.save(at("seven.png")).unwrap();
    let mut values = vec![0.0f32; 32 * 32];
    for y in 0..32 {
        for x in 0..32 {
            values[y * 32 + x] = 2.0 * level(x as u32 / 4, y as u32 / 4) as f32 / 255.0 - 1.0;
        }
    }
    vgg_nn::io::save_npy(
        Path::new(&at("seven.npy")),
        &vgg_nn::io::HostTensor {
            shape: vec![1, 1, 32, 32],
            data: values,
        },
    )
    .unwrap();
    for (input, output) in [("seven.png", "png.npy"), ("seven.npy", "npy.npy")] {
        ok(&[
            "forward",
            "--weights",
            &weights,
            "--input",
            &at(input),
            "--output",
            &at(output),
        ]);
    }
    let from_png = vgg_nn::io::load_npy(Path::new(&at("png.npy"))).unwrap();
    let from_npy = vgg_nn::io::load_npy(Path::new(&at("npy.npy"))).unwrap();
    for (a, b) in from_png.data.iter().zip(&from_npy.data) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }

    let out = ok(&["classify", "--weights", &weights, &at("seven.png")]);
    assert!(out.contains("images prepared as the digits'"), "{out}");
    assert!(!out.contains("inverted"), "{out}");
    // The classes are digits, named once.
    let first = out
        .lines()
        .find(|l| l.trim_start().starts_with("1."))
        .unwrap();
    assert_eq!(first.split_whitespace().count(), 3, "{first}");

    let paper = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([255 - level(x, y); 3]));
    paper.save(at("paper.png")).unwrap();
    let out = ok(&["classify", "--weights", &weights, &at("paper.png")]);
    assert!(out.contains("inverted to the digits' bright ink"), "{out}");
}
