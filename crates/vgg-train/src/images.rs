//! A picture from a file, prepared as the network's training data was: what lets a network
//! trained here on the digits or CIFAR-10 be pointed at a PNG or JPEG of one's own. The data set
//! comes from the weights' metadata (`train.dataset`); weights without one are taken to be
//! ImageNet's (torchvision's preprocessing).

use std::path::Path;

use vgg_nn::io::image::{
    self, decode_rgb, normalized_chw, resize_and_centre_crop, rgb_from_normalized_chw,
};
use vgg_nn::io::read_file;

use crate::data::{DataError, CIFAR_MEAN, CIFAR_STD, DIGITS_SIZE};

/// CIFAR-10's classes, in its label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// How an image file becomes the network's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preprocessing {
    /// torchvision's ImageNet preprocessing for a `side` x `side` input: the shorter side to
    /// `side` x 256 / 224 (256 for 224), a centre crop, ImageNet's mean and deviation.
    ImageNet {
        /// The network's input side.
        side: usize,
    },
    /// As the digits were made: grey levels on an 8x8 grid (ink bright, so a picture that is
    /// mostly light, dark strokes on paper, is inverted), enlarged 4x to 32x32, in [-1, 1].
    Digits,
    /// The whole picture to 32x32 (shorter side, centre crop), CIFAR-10's mean and deviation.
    Cifar10,
}

/// An image prepared for the network, and what was done to it beyond the rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// CHW values.
    pub values: Vec<f32>,
    /// Whether a digit picture's levels were inverted (dark strokes on a light ground).
    pub inverted: bool,
}

impl Preprocessing {
    /// The preprocessing of weights trained on `dataset` (as `train.dataset` names it), for a
    /// network whose input side is `side`; ImageNet's where no data set is recorded.
    pub fn for_dataset(dataset: Option<&str>, side: usize) -> Preprocessing {
        match dataset {
            Some("digits") => Preprocessing::Digits,
            Some("cifar10") => Preprocessing::Cifar10,
            _ => Preprocessing::ImageNet { side },
        }
    }

    /// Channels, height and width of a prepared image.
    pub fn shape(self) -> [usize; 3] {
        match self {
            Preprocessing::ImageNet { side } => [3, side, side],
            Preprocessing::Digits => [1, DIGITS_SIZE, DIGITS_SIZE],
            Preprocessing::Cifar10 => [3, 32, 32],
        }
    }

    /// In words, for the output.
    pub fn describe(self) -> String {
        match self {
            Preprocessing::ImageNet { side } => format!(
                "ImageNet's (shorter side {}, centre crop {side}, ImageNet mean/std)",
                imagenet_shorter_side(side)
            ),
            Preprocessing::Digits => {
                "the digits' (grey levels on 8x8, ink bright, enlarged to 32x32)".into()
            }
            Preprocessing::Cifar10 => {
                "CIFAR-10's (shorter side 32, centre crop 32, CIFAR-10 mean/std)".into()
            }
        }
    }

    /// The name of `class` among `classes`, where the data set names its classes.
    pub fn class_name(self, class: usize, classes: usize) -> Option<&'static str> {
        match self {
            Preprocessing::ImageNet { .. } => vgg_model::imagenet::class_name(class, classes),
            Preprocessing::Digits => {
                const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
                (classes == 10)
                    .then(|| DIGITS.get(class).copied())
                    .flatten()
            }
            Preprocessing::Cifar10 => (classes == 10)
                .then(|| CIFAR10_CLASSES.get(class).copied())
                .flatten(),
        }
    }

    /// The image in `path`, prepared.
    pub fn load(self, path: &Path) -> Result<Prepared, DataError> {
        self.prepare(&read_file(path)?, path)
    }

    /// An image file's bytes, prepared; `path` names it in errors.
    pub fn prepare(self, bytes: &[u8], path: &Path) -> Result<Prepared, DataError> {
        let rgb = decode_rgb(bytes, path)?;
        Ok(match self {
            Preprocessing::ImageNet { side } => Prepared {
                values: normalized_chw(
                    &resize_and_centre_crop(&rgb, imagenet_shorter_side(side), side),
                    image::MEAN,
                    image::STD,
                ),
                inverted: false,
            },
            Preprocessing::Cifar10 => Prepared {
                values: normalized_chw(
                    &resize_and_centre_crop(&rgb, 32, 32),
                    CIFAR_MEAN,
                    CIFAR_STD,
                ),
                inverted: false,
            },
            Preprocessing::Digits => {
                let small = resize_and_centre_crop(&rgb, 8, 8);
                let grey: Vec<f32> = small
                    .pixels()
                    .map(|p| (p[0] as f32 + p[1] as f32 + p[2] as f32) / (3.0 * 255.0))
                    .collect();
                // The digits are bright ink on a dark ground; paper is the other way round.
                let inverted = grey.iter().sum::<f32>() / grey.len() as f32 > 0.5;
                let ink: Vec<f32> = grey
                    .iter()
                    .map(|&g| if inverted { 1.0 - g } else { g })
                    .collect();
                let scale = DIGITS_SIZE / 8;
                let mut values = Vec::with_capacity(DIGITS_SIZE * DIGITS_SIZE);
                for y in 0..DIGITS_SIZE {
                    for x in 0..DIGITS_SIZE {
                        // The data set's levels 0..16, mapped as `level / 8 - 1`.
                        values.push(2.0 * ink[(y / scale) * 8 + x / scale] - 1.0);
                    }
                }
                Prepared { values, inverted }
            }
        })
    }

    /// A prepared image (CHW values of `shape()`) as the network saw it, in 8-bit RGB: the
    /// normalisation undone, the resizing and cropping kept; the digits in grey. To draw on.
    pub fn picture(self, values: &[f32]) -> ::image::RgbImage {
        let [_, h, w] = self.shape();
        match self {
            Preprocessing::ImageNet { .. } => {
                rgb_from_normalized_chw(values, (h, w), image::MEAN, image::STD)
            }
            Preprocessing::Cifar10 => {
                rgb_from_normalized_chw(values, (h, w), CIFAR_MEAN, CIFAR_STD)
            }
            Preprocessing::Digits => ::image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let v = values[y as usize * w + x as usize];
                let g = ((v + 1.0) / 2.0 * 255.0).round().clamp(0.0, 255.0) as u8;
                ::image::Rgb([g, g, g])
            }),
        }
    }
}

/// torchvision's Resize for a `side` crop: 256 for 224, in proportion for other sides.
fn imagenet_shorter_side(side: usize) -> usize {
    (side * image::SHORTER_SIDE).div_ceil(image::CROP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::image as image_crate;

    fn png(img: image_crate::RgbImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image_crate::DynamicImage::ImageRgb8(img)
            .write_to(&mut out, image_crate::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    /// A 64x64 picture of a vertical bar, columns 20..44: ink `ink`, ground `ground`.
    fn bar(ink: u8, ground: u8) -> Vec<u8> {
        png(image_crate::RgbImage::from_fn(64, 64, |x, _| {
            let v = if (20..44).contains(&x) { ink } else { ground };
            image_crate::Rgb([v, v, v])
        }))
    }

    #[test]
    fn a_digit_on_paper_is_inverted_to_the_data_sets_bright_ink() {
        let path = Path::new("bar.png");
        let light = Preprocessing::Digits.prepare(&bar(0, 255), path).unwrap();
        let dark = Preprocessing::Digits.prepare(&bar(255, 0), path).unwrap();
        assert!(light.inverted && !dark.inverted);
        // Both give bright ink (1.0) in the bar's columns and a dark ground (-1.0) elsewhere,
        // in 4x4 blocks of the 8x8 grid (grid columns 3 and 4 see only the bar through the
        // resampling filter, 0 and 7 only the ground).
        assert_eq!(light.values.len(), 32 * 32);
        // Within one 8-bit level (the blurred edge rounds either way).
        for (l, d) in light.values.iter().zip(&dark.values) {
            assert!((l - d).abs() <= 2.0 / 255.0 + 1e-6, "{l} vs {d}");
        }
        let at = |x: usize, y: usize| light.values[y * 32 + x];
        assert_eq!(at(0, 0), -1.0);
        assert_eq!(at(13, 5), 1.0);
        assert_eq!(at(17, 30), 1.0);
        assert_eq!(at(30, 31), -1.0);
    }

    #[test]
    fn cifar_pictures_are_normalised_with_cifars_statistics() {
        let grey = png(image_crate::RgbImage::from_pixel(
            50,
            40,
            image_crate::Rgb([128; 3]),
        ));
        let p = Preprocessing::Cifar10
            .prepare(&grey, Path::new("g.png"))
            .unwrap();
        assert_eq!(p.values.len(), 3 * 32 * 32);
        let want = (128.0 / 255.0 - CIFAR_MEAN[1]) / CIFAR_STD[1];
        assert!((p.values[1024 + 5] - want).abs() < 1e-6);
        assert_eq!(Preprocessing::Cifar10.class_name(3, 10), Some("cat"));
        assert_eq!(Preprocessing::Digits.class_name(7, 10), Some("7"));
        assert_eq!(Preprocessing::Digits.class_name(7, 12), None);
    }

    #[test]
    fn imagenet_at_224_is_torchvisions_rule() {
        let img = png(image_crate::RgbImage::from_fn(300, 240, |x, y| {
            image_crate::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        }));
        let path = Path::new("i.png");
        let ours = Preprocessing::for_dataset(None, 224)
            .prepare(&img, path)
            .unwrap();
        assert_eq!(ours.values, image::preprocess_imagenet(&img, path).unwrap());
        assert_eq!(imagenet_shorter_side(224), 256);
        assert_eq!(imagenet_shorter_side(32), 37);
    }
}
