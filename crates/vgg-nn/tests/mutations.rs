//! Mutation tests of vgg-nn's loaders (safetensors, .npy, images with ImageNet preprocessing):
//! thousands of damaged files each, never a panic, bounded memory (support/mutate.rs).

#[path = "support/mutate.rs"]
mod mutate;

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

use vgg_nn::io::{self, HostTensor, TensorFile};

#[global_allocator]
static ALLOC: mutate::Counting = mutate::Counting;

const CASES: usize = 1500;

/// Parsing holds the file and its values: a few times the file's size, plus room for messages.
fn tensor_bound(len: usize) -> usize {
    8 * len + (1 << 20)
}

fn tensor(shape: &[usize], seed: u64) -> HostTensor {
    let n = shape.iter().product::<usize>();
    let mut rng = mutate::Rng::new(seed);
    HostTensor {
        shape: shape.to_vec(),
        data: (0..n)
            .map(|_| rng.next() as f32 / u64::MAX as f32 - 0.5)
            .collect(),
    }
}

#[test]
fn damaged_safetensors_files_are_errors() {
    let file = TensorFile {
        tensors: vec![
            ("features.0.weight".into(), tensor(&[4, 3, 3, 3], 1)),
            ("features.0.bias".into(), tensor(&[4], 2)),
            ("classifier.0.weight".into(), tensor(&[10, 16], 3)),
        ],
        metadata: HashMap::from([("vgg.model".to_string(), "vgg11".to_string())]),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    io::save_safetensors(&path, &file).unwrap();
    let valid = std::fs::read(&path).unwrap();
    let header = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
    let cases = mutate::cases(&valid, header, CASES, 11);
    let refused = mutate::check("safetensors", &cases, true, tensor_bound, |b| {
        io::parse_safetensors(b, &path)
    });
    assert!(refused > cases.len() / 2, "{refused} of {}", cases.len());
}

#[test]
fn damaged_npy_files_are_errors() {
    let valid = io::npy_bytes(&tensor(&[2, 3, 4, 4], 4));
    let cases = mutate::cases(&valid, 128, CASES, 12);
    let path = Path::new("x.npy");
    let refused = mutate::check("npy", &cases, true, tensor_bound, |b| {
        io::parse_npy(b, path)
    });
    assert!(refused > cases.len() / 2, "{refused} of {}", cases.len());
}

fn encoded(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A decoder may hold a few bytes per declared pixel, and the decoded image is bounded by the
/// pixels a file of that size may declare.
fn image_bound(len: usize) -> usize {
    16 * (1 << 14) * len + (8 << 20)
}

#[test]
fn damaged_images_are_errors() {
    let rgb = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 90]));
    let grey = image::GrayImage::from_fn(33, 20, |x, y| image::Luma([(x * y) as u8]));
    let png = encoded(rgb.clone().into(), image::ImageFormat::Png);
    let grey_png = encoded(grey.into(), image::ImageFormat::Png);
    let jpeg = encoded(rgb.into(), image::ImageFormat::Jpeg);
    for (name, valid, header, truncation_fails) in [
        ("png", &png, 64, false),
        ("grey png", &grey_png, 64, false),
        // A cut JPEG lacks its end-of-image marker, so every truncation is refused.
        ("jpeg", &jpeg, 700, true),
    ] {
        assert!(io::image::preprocess_imagenet(valid, Path::new(name)).is_ok());
        let cases = mutate::cases(valid, header, 700, 13);
        let refused = mutate::check(name, &cases, truncation_fails, image_bound, |b| {
            io::image::preprocess_imagenet(b, Path::new(name))
        });
        assert!(
            refused > cases.len() / 3,
            "{name}: {refused} of {}",
            cases.len()
        );
    }
}

#[test]
fn damaged_pytorch_files_are_errors() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pth");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.pth");
    // The zip container (its header is the local file header) and the pre-1.6 pickle stream.
    for (name, header, seed) in [("tiny.pth", 64, 13), ("legacy.pth", 128, 14)] {
        let valid = std::fs::read(fixtures.join(name)).unwrap();
        let cases = mutate::cases(&valid, header, CASES / 3, seed);
        let refused = mutate::check(name, &cases, true, tensor_bound, |b| {
            std::fs::write(&path, b).unwrap();
            io::load_pytorch(&path)
        });
        assert!(
            refused > cases.len() / 3,
            "{name}: {refused} of {}",
            cases.len()
        );
    }
}
