//! Images (PNG, JPEG) as the tensors ImageNet networks expect, preprocessed as torchvision does
//! for VGG: Resize(256) (shorter side to 256, bilinear with Pillow's antialiasing),
//! CenterCrop(224), ToTensor and Normalize with ImageNet's mean and standard deviation.
//!
//! Decoding is bounded: at most `MAX_PIXELS` pixels and `MAX_DECODED_BYTES` after conversion to
//! RGB, checked against the declared size before anything is decoded. Only the 224x224 window
//! the crop keeps is resampled, so an extreme aspect ratio costs no more than a square image.
//! A JPEG without its end-of-image marker is refused as truncated (decoders fill the missing
//! part with grey and say nothing).

use std::io::Cursor;
use std::path::Path;

use image::{ImageFormat, RgbImage};

use super::{read_file, IoError};

/// ImageNet's channel means and standard deviations (torchvision's Normalize).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation (RGB), as torchvision normalises.
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Side of the centre crop the network sees.
pub const CROP: usize = 224;
/// Resize(256): the shorter side's length before the crop.
pub const SHORTER_SIDE: usize = 256;
/// The most pixels an image may have (a 16384 x 8192 image; phone photos have 12-50 million).
pub const MAX_PIXELS: u64 = 1 << 27;
/// The most bytes an image may take once decoded to 8-bit RGB.
pub const MAX_DECODED_BYTES: u64 = 3 * MAX_PIXELS;

/// The most pixels per file byte a valid image can declare (with a wide margin).
const PIXELS_PER_BYTE: u64 = 1 << 14;

/// Pillow's fixed-point precision for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The preprocessed image of a file, as a [3, 224, 224] CHW tensor's values.
pub fn load_imagenet_image(path: &Path) -> Result<Vec<f32>, IoError> {
    preprocess_imagenet(&read_file(path)?, path)
}

/// The preprocessed image of a file's bytes; `path` names it in errors.
pub fn preprocess_imagenet(bytes: &[u8], path: &Path) -> Result<Vec<f32>, IoError> {
    let img = decode_rgb(bytes, path)?;
    Ok(resize_and_crop(&img))
}

fn bad(path: &Path, what: impl Into<String>) -> IoError {
    IoError::BadImage {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// The image as 8-bit RGB, after the size checks.
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage, IoError> {
    let format = image::guess_format(bytes).ok();
    match format {
        Some(ImageFormat::Png) => {}
        Some(ImageFormat::Jpeg) => check_jpeg_complete(bytes).map_err(|what| bad(path, what))?,
        _ => {
            return Err(bad(
                path,
                "not an image in a supported format (PNG or JPEG)",
            ))
        }
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes));
    reader.set_format(format.expect("checked above"));
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| bad(path, format!("not a valid PNG or JPEG image ({e})")))?;
    let pixels = width as u64 * height as u64;
    if pixels == 0 {
        return Err(bad(path, "the image is empty"));
    }
    // No valid PNG or JPEG packs more than a few thousand pixels into a byte (deflate's limit is
    // about 1,000 bytes per byte; a 1-bit PNG has 8 pixels a byte): more is a corrupt header, or
    // a decompression bomb, refused before the decoder allocates for it.
    if pixels > PIXELS_PER_BYTE * bytes.len() as u64 {
        return Err(bad(
            path,
            format!(
                "the image declares {width}x{height} pixels, far more than its {} bytes can hold: the file is corrupt",
                bytes.len()
            ),
        ));
    }
    if pixels > MAX_PIXELS {
        return Err(bad(
            path,
            format!(
                "the image declares {width}x{height} pixels, more than the {MAX_PIXELS} allowed; shrink it first"
            ),
        ));
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes));
    reader.set_format(format.expect("checked above"));
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // Decoders may hold up to 16 bits and 4 channels per pixel before conversion.
    limits.max_alloc = Some(8 * MAX_PIXELS);
    reader.limits(limits);
    let decoded = reader
        .decode()
        .map_err(|e| bad(path, format!("not a valid PNG or JPEG image ({e})")))?;
    // RGB is 3 bytes a pixel whatever the source (grayscale triples here).
    debug_assert!(3 * pixels <= MAX_DECODED_BYTES);
    Ok(decoded.to_rgb8())
}

/// A JPEG's structure up to its first scan, then its end-of-image marker: a file cut anywhere
/// lacks the marker (entropy-coded data escapes every 0xFF, so the marker cannot occur by chance).
fn check_jpeg_complete(bytes: &[u8]) -> Result<(), String> {
    const TRUNCATED: &str =
        "the JPEG is truncated (no end-of-image marker): the file is incomplete";
    let mut at = 2; // after SOI
    loop {
        // Fill bytes (0xFF runs) may precede a marker.
        while bytes.get(at) == Some(&0xFF) && bytes.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(at), bytes.get(at + 1)) else {
            return Err(TRUNCATED.to_string());
        };
        at += 2;
        match marker {
            // Markers without a length.
            0x01 | 0xD0..=0xD7 => continue,
            0xD9 => return Err("the JPEG ends before its first scan".to_string()),
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (bytes.get(at), bytes.get(at + 1)) else {
            return Err(TRUNCATED.to_string());
        };
        let len = u16::from_be_bytes([hi, lo]) as usize;
        if len < 2 {
            return Err("the JPEG has a malformed segment length".to_string());
        }
        at += len;
        if at > bytes.len() {
            return Err(TRUNCATED.to_string());
        }
        if marker == 0xDA {
            break; // start of scan: entropy-coded data follows
        }
    }
    if bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err(TRUNCATED.to_string())
    }
}

/// Pillow's bilinear coefficients for resizing `in_size` to `out_size`, for the outputs in
/// `outputs` only: (first input, weights) of each. When shrinking, the triangle filter widens
/// with the scale (antialiasing).
fn coefficients(
    in_size: usize,
    out_size: usize,
    outputs: std::ops::Range<usize>,
) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    outputs
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

/// One separable pass along x (horizontal) or y with the given coefficients (one output each,
/// input positions counted from `offset`), rounding to 8 bits as Pillow does.
fn resample(
    img: &RgbImage,
    coeffs: &[(usize, Vec<i32>)],
    offset: usize,
    horizontal: bool,
) -> RgbImage {
    let (w, h) = if horizontal {
        (coeffs.len() as u32, img.height())
    } else {
        (img.width(), coeffs.len() as u32)
    };
    RgbImage::from_fn(w, h, |x, y| {
        let (lo, weights) = &coeffs[if horizontal { x } else { y } as usize];
        let first = lo - offset;
        let mut sums = [1i64 << (PRECISION_BITS - 1); 3];
        for (k, &wt) in weights.iter().enumerate() {
            let p = if horizontal {
                img.get_pixel((first + k) as u32, y)
            } else {
                img.get_pixel(x, (first + k) as u32)
            };
            for c in 0..3 {
                sums[c] += p[c] as i64 * wt as i64;
            }
        }
        image::Rgb(sums.map(|s| (s >> PRECISION_BITS).clamp(0, 255) as u8))
    })
}

/// torchvision's Resize(256) size: the shorter side becomes 256, the longer int(256 * long / short).
pub fn resized_size(width: usize, height: usize) -> (usize, usize) {
    resized_to(width, height, SHORTER_SIDE)
}

/// torchvision's Resize(shorter) size: the longer side becomes int(shorter * long / short).
fn resized_to(width: usize, height: usize, shorter: usize) -> (usize, usize) {
    if width <= height {
        (shorter, shorter * height / width)
    } else {
        (shorter * width / height, shorter)
    }
}

/// The window CenterCrop(crop) keeps of a `size` side: Python's round() of the margin, ties to even.
fn crop_window(size: usize, crop: usize) -> std::ops::Range<usize> {
    let start = ((size as f64 - crop as f64) / 2.0).round_ties_even() as usize;
    start..start + crop
}

/// Resize(256), CenterCrop(224), ToTensor and Normalize: the [3, 224, 224] CHW values.
fn resize_and_crop(img: &RgbImage) -> Vec<f32> {
    normalized_chw(&resize_and_centre_crop(img, SHORTER_SIDE, CROP), MEAN, STD)
}

/// torchvision's Resize(shorter) then CenterCrop(crop) (`crop` at most `shorter`), with Pillow's
/// antialiased bilinear filter in fixed point, as Pillow computes it for 8-bit images.
pub fn resize_and_centre_crop(img: &RgbImage, shorter: usize, crop: usize) -> RgbImage {
    let crop = crop.min(shorter);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = resized_to(w, h, shorter);
    let (cols, rows) = (crop_window(out_w, crop), crop_window(out_h, crop));
    // Pillow resizes each axis only when its size changes. Only the crop's outputs are computed,
    // and the horizontal pass only on the input rows the vertical pass reads, as Pillow does.
    let row_coeffs = (out_h != h).then(|| coefficients(h, out_h, rows.clone()));
    let band = match &row_coeffs {
        Some(c) => {
            let first = c.iter().map(|(lo, _)| *lo).min().unwrap_or(0);
            let end = c.iter().map(|(lo, w)| lo + w.len()).max().unwrap_or(first);
            first..end
        }
        None => rows,
    };
    let band_img =
        image::imageops::crop_imm(img, 0, band.start as u32, w as u32, band.len() as u32)
            .to_image();
    let img = if out_w != w {
        resample(&band_img, &coefficients(w, out_w, cols), 0, true)
    } else {
        image::imageops::crop_imm(
            &band_img,
            cols.start as u32,
            0,
            crop as u32,
            band.len() as u32,
        )
        .to_image()
    };
    match &row_coeffs {
        Some(c) => resample(&img, c, band.start, false),
        None => img,
    }
}

/// ToTensor and Normalize: an image's [3, H, W] CHW values, (v / 255 - mean) / std per channel.
pub fn normalized_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut chw = vec![0.0f32; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        let (x, y) = (x as usize, y as usize);
        for c in 0..3 {
            chw[(c * h + y) * w + x] = (p[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    chw
}

/// `normalized_chw` undone: [3, H, W] values back to 8-bit RGB (rounded, clamped), to draw on
/// the picture the network was given.
pub fn rgb_from_normalized_chw(
    values: &[f32],
    (height, width): (usize, usize),
    mean: [f32; 3],
    std: [f32; 3],
) -> RgbImage {
    assert_eq!(values.len(), 3 * height * width);
    RgbImage::from_fn(width as u32, height as u32, |x, y| {
        let at = |c: usize| {
            let v = values[(c * height + y as usize) * width + x as usize] * std[c] + mean[c];
            (v * 255.0).round().clamp(0.0, 255.0) as u8
        };
        image::Rgb([at(0), at(1), at(2)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalising_and_back_gives_the_same_pixels() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 50, y as u8 * 120, 255]));
        let chw = normalized_chw(&img, MEAN, STD);
        assert_eq!(rgb_from_normalized_chw(&chw, (3, 5), MEAN, STD), img);
    }

    fn encode(img: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 3 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    #[test]
    fn coefficients_sum_to_one_and_upscaling_interpolates() {
        for (i, o) in [(300, 256), (240, 256), (10, 3), (3, 10)] {
            for (_, w) in coefficients(i, o, 0..o) {
                let total: i64 = w.iter().map(|&v| v as i64).sum();
                assert!(
                    (total - (1 << PRECISION_BITS)).abs() <= w.len() as i64,
                    "{i}->{o}"
                );
            }
        }
        // A 2-pixel row doubled: the outer pixels keep their values, the inner ones blend 3:1.
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([if x == 0 { 0 } else { 200 }; 3]));
        let up = resample(&img, &coefficients(2, 4, 0..4), 0, true);
        let row: Vec<u8> = (0..4).map(|x| up.get_pixel(x, 0)[0]).collect();
        assert_eq!(row, [0, 50, 150, 200]);
        // A window of the outputs equals that window of the whole resize.
        let part = resample(&img, &coefficients(2, 4, 1..3), 0, true);
        assert_eq!(
            (part.get_pixel(0, 0)[0], part.get_pixel(1, 0)[0]),
            (50, 150)
        );
    }

    #[test]
    fn torchvision_sizes() {
        assert_eq!(resized_size(300, 240), (320, 256));
        assert_eq!(resized_size(100, 333), (256, 852));
        assert_eq!(crop_window(320, CROP), 48..272);
        assert_eq!(crop_window(256, CROP), 16..240);
    }

    /// The crop-only resize against the whole resize followed by the crop.
    #[test]
    fn resampling_only_the_crop_changes_nothing() {
        for (w, h) in [(300, 240), (240, 300), (256, 700), (1000, 256), (224, 224)] {
            let img = gradient(w, h);
            let (out_w, out_h) = resized_size(w as usize, h as usize);
            let mut full = img.clone();
            if out_w != w as usize {
                full = resample(&full, &coefficients(w as usize, out_w, 0..out_w), 0, true);
            }
            if out_h != h as usize {
                full = resample(&full, &coefficients(h as usize, out_h, 0..out_h), 0, false);
            }
            let (cols, rows) = (crop_window(out_w, CROP), crop_window(out_h, CROP));
            let got = resize_and_crop(&img);
            for y in 0..CROP {
                for x in 0..CROP {
                    let p = full.get_pixel((cols.start + x) as u32, (rows.start + y) as u32);
                    let want = (p[1] as f32 / 255.0 - MEAN[1]) / STD[1];
                    assert_eq!(got[(CROP + y) * CROP + x], want, "{w}x{h} at {x},{y}");
                }
            }
        }
    }

    #[test]
    fn extreme_aspect_ratios_are_cheap() {
        // 1 x 100000 declared in a tiny PNG: the whole resize would be 256 x 25,600,000 pixels.
        let img = image::DynamicImage::ImageLuma8(image::GrayImage::new(1, 100_000));
        let png = encode(&img, ImageFormat::Png);
        assert!(png.len() < 100_000, "{}", png.len());
        let t = preprocess_imagenet(&png, Path::new("tall.png")).unwrap();
        assert_eq!(t.len(), 3 * CROP * CROP);
    }

    #[test]
    fn oversized_and_truncated_images_are_named_errors() {
        let png = encode(
            &image::DynamicImage::ImageRgb8(gradient(40, 30)),
            ImageFormat::Png,
        );
        // Patch the IHDR's declared size to 65536 x 65536 (4 billion pixels).
        let mut huge = png.clone();
        huge[16..24].copy_from_slice(&[0, 1, 0, 0, 0, 1, 0, 0]);
        let e = preprocess_imagenet(&huge, Path::new("huge.png"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("more than the") || e.contains("not a valid"),
            "{e}"
        );

        let jpeg = encode(
            &image::DynamicImage::ImageRgb8(gradient(64, 48)),
            ImageFormat::Jpeg,
        );
        assert!(preprocess_imagenet(&jpeg, Path::new("ok.jpg")).is_ok());
        let e = preprocess_imagenet(&jpeg[..jpeg.len() / 2], Path::new("cut.jpg"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut.jpg") && e.contains("truncated"), "{e}");
        let e = preprocess_imagenet(&png[..png.len() / 2], Path::new("cut.png"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut.png"), "{e}");
        let e = preprocess_imagenet(b"GIF89a......", Path::new("x.gif"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PNG or JPEG"), "{e}");
    }
}
