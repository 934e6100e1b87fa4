//! `vgg classify`: ImageNet classes of image files, preprocessed as torchvision does for VGG:
//! Resize(256) (shorter side to 256, bilinear with Pillow's antialiasing), CenterCrop(224),
//! ToTensor and Normalize with ImageNet's mean and standard deviation.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::RgbImage;
use vgg_autodiff::Tape;
use vgg_nn::RunOptions;
use vgg_tensor::{Backend, Shape};

use crate::net::{load_model, top_k, ModelFlags};

/// The 1,000 ImageNet-1k class names, in torchvision's order.
const IMAGENET_CLASSES: &str = include_str!("../../../data/imagenet-classes.txt");
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];
const CROP: usize = 224;
const SHORTER_SIDE: usize = 256;

/// Pillow's fixed-point precision for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bilinear coefficients for resizing `in_size` to `out_size`: (first input, weights) of
/// each output. When shrinking, the triangle filter widens with the scale (antialiasing).
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    (0..out_size)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5) as isize).max(0) as usize;
            let hi = ((center + support + 0.5) as usize).min(in_size);
            let raw: Vec<f64> = (lo..hi)
                .map(|i| (1.0 - ((i as f64 - center + 0.5) / filter_scale).abs()).max(0.0))
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|w| {
                    let w = w / total * (1u64 << PRECISION_BITS) as f64;
                    (if w < 0.0 { w - 0.5 } else { w + 0.5 }) as i32
                })
                .collect();
            (lo, fixed)
        })
        .collect()
}

/// One separable pass along x (horizontal) or y, rounding to 8 bits as Pillow does.
fn resample(img: &RgbImage, out_w: u32, out_h: u32, horizontal: bool) -> RgbImage {
    let coeffs = if horizontal {
        coefficients(img.width() as usize, out_w as usize)
    } else {
        coefficients(img.height() as usize, out_h as usize)
    };
    RgbImage::from_fn(out_w, out_h, |x, y| {
        let (lo, weights) = &coeffs[if horizontal { x } else { y } as usize];
        let mut sums = [1i64 << (PRECISION_BITS - 1); 3];
        for (k, &w) in weights.iter().enumerate() {
            let p = if horizontal {
                img.get_pixel((lo + k) as u32, y)
            } else {
                img.get_pixel(x, (lo + k) as u32)
            };
            for c in 0..3 {
                sums[c] += p[c] as i64 * w as i64;
            }
        }
        image::Rgb(sums.map(|s| (s >> PRECISION_BITS).clamp(0, 255) as u8))
    })
}

/// torchvision's Resize(256): the shorter side becomes 256, the longer int(256 * long / short).
fn resize_shorter_side(img: &RgbImage, target: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = if w <= h {
        (target, target * h / w)
    } else {
        (target * w / h, target)
    };
    let mut out = img.clone();
    if out_w != w {
        out = resample(&out, out_w as u32, h as u32, true);
    }
    if out_h != h {
        out = resample(&out, out_w as u32, out_h as u32, false);
    }
    out
}

/// The preprocessed image as a [3, 224, 224] CHW tensor's values.
pub fn preprocess(path: &Path) -> Result<Vec<f32>> {
    let reader = image::ImageReader::open(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if reader.format().is_none() {
        anyhow::bail!(
            "{}: not an image in a supported format (PNG or JPEG)",
            path.display()
        );
    }
    let img = reader
        .decode()
        .with_context(|| {
            format!(
                "{}: not a valid PNG or JPEG image (corrupt or truncated?)",
                path.display()
            )
        })?
        .to_rgb8();
    if img.width() == 0 || img.height() == 0 {
        anyhow::bail!("{}: the image is empty", path.display());
    }
    let img = resize_shorter_side(&img, SHORTER_SIDE);
    // CenterCrop: Python's round() of the margins, ties to even.
    let top = ((img.height() as f64 - CROP as f64) / 2.0).round_ties_even() as u32;
    let left = ((img.width() as f64 - CROP as f64) / 2.0).round_ties_even() as u32;
    let mut chw = vec![0.0f32; 3 * CROP * CROP];
    for y in 0..CROP {
        for x in 0..CROP {
            let p = img.get_pixel(left + x as u32, top + y as u32);
            for c in 0..3 {
                chw[(c * CROP + y) * CROP + x] = (p[c] as f32 / 255.0 - MEAN[c]) / STD[c];
            }
        }
    }
    Ok(chw)
}

pub fn run<B: Backend>(
    backend: &B,
    flags: &ModelFlags,
    weights: &Path,
    images: &[PathBuf],
    top: usize,
) -> Result<String> {
    let mut pixels = Vec::with_capacity(images.len() * 3 * CROP * CROP);
    for path in images {
        pixels.extend(preprocess(path)?);
    }
    let vgg = load_model(backend, flags, weights, (CROP, CROP))?;
    let x = backend.upload(&Shape::from([images.len(), 3, CROP, CROP]), &pixels)?;
    let tape = Tape::inference(backend.clone());
    let logits = vgg.forward(&tape, &tape.constant(x), RunOptions::EVAL)?;
    let probs = backend.download(&backend.softmax_rows(logits.value())?)?;
    let classes = vgg.spec().options.classes;
    let names: Vec<&str> = IMAGENET_CLASSES.lines().collect();
    let mut out = String::new();
    for (path, row) in images.iter().zip(probs.chunks(classes)) {
        out.push_str(&format!("{}:\n", path.display()));
        for (rank, (class, p)) in top_k(row, top).into_iter().enumerate() {
            // Class names only make sense for a 1000-class ImageNet network.
            let name = if classes == names.len() {
                names[class]
            } else {
                ""
            };
            out.push_str(&format!(
                "  {}. {:>6.2}%  {class:>4} {name}\n",
                rank + 1,
                100.0 * p
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_sum_to_one_and_upscaling_interpolates() {
        for (i, o) in [(300, 256), (240, 256), (10, 3), (3, 10)] {
            for (_, w) in coefficients(i, o) {
                let total: i64 = w.iter().map(|&v| v as i64).sum();
                assert!(
                    (total - (1 << PRECISION_BITS)).abs() <= w.len() as i64,
                    "{i}->{o}"
                );
            }
        }
        // A 2-pixel row doubled: the outer pixels keep their values, the inner ones blend 3:1.
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([if x == 0 { 0 } else { 200 }; 3]));
        let up = resample(&img, 4, 1, true);
        let row: Vec<u8> = (0..4).map(|x| up.get_pixel(x, 0)[0]).collect();
        assert_eq!(row, [0, 50, 150, 200]);
    }

    #[test]
    fn torchvision_sizes() {
        let img = RgbImage::new(300, 240);
        let r = resize_shorter_side(&img, 256);
        assert_eq!((r.width(), r.height()), (320, 256));
        let r = resize_shorter_side(&RgbImage::new(100, 333), 256);
        assert_eq!((r.width(), r.height()), (256, 852));
    }
}
