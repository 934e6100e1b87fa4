//! Labelled image sets in memory: scikit-learn's `digits` (shipped in `data/digits`) and the
//! CIFAR-10 binary format.

use std::path::{Path, PathBuf};

use vgg_nn::io;

#[derive(Debug, thiserror::Error)]
/// Why a dataset could not be loaded.
pub enum DataError {
    #[error("{dir} does not hold the {dataset} files: missing {missing}; {hint}")]
    /// Files the dataset needs are not in the directory.
    Missing {
        /// The dataset's name.
        dataset: &'static str,
        /// The directory searched.
        dir: PathBuf,
        /// The files not found.
        missing: String,
        /// Where to get them.
        hint: &'static str,
    },
    #[error(transparent)]
    /// A file could not be read.
    Io(#[from] io::IoError),
    #[error("{path}: {problem}")]
    /// A file is not what the dataset's format says.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    #[error("a test fraction of {test_fraction} of {images} images leaves no training or no test images: choose a fraction that keeps at least one of each")]
    /// The split leaves the training or the test set empty.
    EmptySplit {
        /// Images in the dataset.
        images: usize,
        /// The fraction held out for testing.
        test_fraction: f64,
    },
}

/// Images (NCHW, f32) and their class labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Images, NCHW f32, one after another.
    pub images: Vec<f32>,
    /// The class of each image.
    pub labels: Vec<usize>,
    /// Channels per image.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of classes (labels are below it).
    pub classes: usize,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The images at `indices`, in that order, and their labels.
    pub fn gather(&self, indices: &[usize]) -> (Vec<f32>, Vec<usize>) {
        let n = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            images.extend_from_slice(&self.images[i * n..(i + 1) * n]);
        }
        (images, indices.iter().map(|&i| self.labels[i]).collect())
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let (images, labels) = self.gather(indices);
        Dataset {
            images,
            labels,
            ..*self
        }
    }

    /// A seeded split into (train, test), `test_fraction` of the images going to test. Refused
    /// when either side would be empty.
    pub fn split(&self, test_fraction: f64, seed: u64) -> Result<(Dataset, Dataset), DataError> {
        let test = ((self.len() as f64) * test_fraction).round();
        if !(test >= 1.0 && test < self.len() as f64) {
            return Err(DataError::EmptySplit {
                images: self.len(),
                test_fraction,
            });
        }
        let test = test as usize;
        let order = permutation(self.len(), seed);
        Ok((self.subset(&order[test..]), self.subset(&order[..test])))
    }
}

/// A seeded permutation of 0..n (Fisher-Yates on the counter-based generator).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (vgg_tensor::random::bits(seed, i as u64) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

fn require(
    dataset: &'static str,
    dir: &Path,
    files: &[&str],
    hint: &'static str,
) -> Result<(), DataError> {
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(DataError::Missing {
        dataset,
        dir: dir.to_path_buf(),
        missing: missing.join(", "),
        hint,
    })
}

/// Side of the images VGG sees: the 8x8 digits are enlarged 4x (each pixel a 4x4 block), as VGG's
/// five pools need at least 32x32.
pub const DIGITS_SIZE: usize = 32;

const DIGITS_FILES: [&str; 2] = ["digits-images.npy", "digits-labels.npy"];

/// The digits files, carried in the binary so that `vgg train` works from any directory.
const SHIPPED_IMAGES: &[u8] = include_bytes!("../../../data/digits/digits-images.npy");
const SHIPPED_LABELS: &[u8] = include_bytes!("../../../data/digits/digits-labels.npy");

/// The 1,797 digits shipped in `data/digits` (and carried in the binary), grey levels 0..16
/// mapped to [-1, 1] and enlarged to 32x32.
pub fn shipped_digits() -> Result<Dataset, DataError> {
    let dir = Path::new("data/digits");
    let images = io::parse_npy(SHIPPED_IMAGES, &dir.join(DIGITS_FILES[0]))?;
    let labels = io::parse_npy(SHIPPED_LABELS, &dir.join(DIGITS_FILES[1]))?;
    digits_from(dir, images, labels)
}

/// The digits from the two `.npy` files in `dir`, as `shipped_digits` gives them.
pub fn load_digits(dir: &Path) -> Result<Dataset, DataError> {
    require(
        "digits",
        dir,
        &DIGITS_FILES,
        "the repository ships them in data/digits (made by scripts/convert_digits.py), and vgg carries them: no directory is needed",
    )?;
    let images = io::load_npy(&dir.join(DIGITS_FILES[0]))?;
    let labels = io::load_npy(&dir.join(DIGITS_FILES[1]))?;
    digits_from(dir, images, labels)
}

fn digits_from(
    dir: &Path,
    images: io::HostTensor,
    labels: io::HostTensor,
) -> Result<Dataset, DataError> {
    const FILES: [&str; 2] = DIGITS_FILES;
    let corrupt = |problem: String| DataError::Corrupt {
        path: dir.join(FILES[0]),
        problem,
    };
    let [n, 1, 8, 8] = images.shape[..] else {
        return Err(corrupt(format!(
            "expected [N, 1, 8, 8] images, found {:?}",
            images.shape
        )));
    };
    if labels.shape != [n]
        || labels
            .data
            .iter()
            .any(|&l| !(0.0..10.0).contains(&l) || l.fract() != 0.0)
    {
        return Err(corrupt(format!(
            "expected {n} labels in 0..9 in {}",
            FILES[1]
        )));
    }
    let scale = DIGITS_SIZE / 8;
    let mut big = Vec::with_capacity(n * DIGITS_SIZE * DIGITS_SIZE);
    for img in images.data.chunks_exact(64) {
        for y in 0..DIGITS_SIZE {
            for x in 0..DIGITS_SIZE {
                big.push(img[(y / scale) * 8 + x / scale] / 8.0 - 1.0);
            }
        }
    }
    Ok(Dataset {
        images: big,
        labels: labels.data.iter().map(|&l| l as usize).collect(),
        channels: 1,
        height: DIGITS_SIZE,
        width: DIGITS_SIZE,
        classes: 10,
    })
}

const CIFAR_RECORD: usize = 1 + 3 * 32 * 32;
/// Per-channel mean and standard deviation of the CIFAR-10 training images.
pub(crate) const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub(crate) const CIFAR_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

fn load_cifar_file(path: &Path) -> Result<Dataset, DataError> {
    parse_cifar_batch(&io::read_file(path)?, path)
}

/// One file of CIFAR-10's binary version (records of a label byte and 3,072 pixel bytes);
/// `path` names it in errors.
pub fn parse_cifar_batch(bytes: &[u8], path: &Path) -> Result<Dataset, DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR_RECORD) {
        return Err(DataError::Corrupt {
            path: path.to_path_buf(),
            problem: format!(
                "{} bytes is not a whole number of {CIFAR_RECORD}-byte records",
                bytes.len()
            ),
        });
    }
    let mut images = Vec::with_capacity(bytes.len() / CIFAR_RECORD * 3072);
    let mut labels = Vec::new();
    for record in bytes.chunks_exact(CIFAR_RECORD) {
        if record[0] > 9 {
            return Err(DataError::Corrupt {
                path: path.to_path_buf(),
                problem: format!("label {} is not a CIFAR-10 class (0..9)", record[0]),
            });
        }
        labels.push(record[0] as usize);
        for (c, plane) in record[1..].chunks_exact(1024).enumerate() {
            images.extend(
                plane
                    .iter()
                    .map(|&v| (v as f32 / 255.0 - CIFAR_MEAN[c]) / CIFAR_STD[c]),
            );
        }
    }
    Ok(Dataset {
        images,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        classes: 10,
    })
}

/// CIFAR-10's binary version (`cifar-10-batches-bin`): (train, test), normalised per channel.
pub fn load_cifar10(dir: &Path) -> Result<(Dataset, Dataset), DataError> {
    let train_files = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
    ];
    let mut all: Vec<&str> = train_files.to_vec();
    all.push("test_batch.bin");
    require(
        "CIFAR-10 (binary version)",
        dir,
        &all,
        "the directory to give is cifar-10-batches-bin, from the binary version's archive",
    )?;
    let mut train = load_cifar_file(&dir.join(train_files[0]))?;
    for f in &train_files[1..] {
        let more = load_cifar_file(&dir.join(f))?;
        train.images.extend(more.images);
        train.labels.extend(more.labels);
    }
    Ok((train, load_cifar_file(&dir.join("test_batch.bin"))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vgg-train-data-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn cifar_format_on_a_tiny_synthetic_set() {
        let dir = tmp("cifar");
        let record = |label: u8, value: u8| {
            let mut r = vec![label];
            r.extend(std::iter::repeat_n(value, 3072));
            r
        };
        for (i, f) in [
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "test_batch.bin",
        ]
        .iter()
        .enumerate()
        {
            let mut bytes = record(i as u8, 255);
            bytes.extend(record(9, 0));
            std::fs::write(dir.join(f), bytes).unwrap();
        }
        let (train, test) = load_cifar10(&dir).unwrap();
        assert_eq!((train.len(), test.len()), (10, 2));
        assert_eq!(train.labels[..4], [0, 9, 1, 9]);
        assert_eq!(test.labels, [5, 9]);
        let first_red = train.images[0];
        assert!((first_red - (1.0 - 0.4914) / 0.2470).abs() < 1e-5);

        std::fs::write(dir.join("test_batch.bin"), [1u8; 100]).unwrap();
        let e = load_cifar10(&dir).unwrap_err().to_string();
        assert!(
            e.contains("test_batch.bin") && e.contains("3073-byte records"),
            "{e}"
        );
        std::fs::write(dir.join("test_batch.bin"), record(12, 0)).unwrap();
        assert!(load_cifar10(&dir)
            .unwrap_err()
            .to_string()
            .contains("label 12"));
        std::fs::remove_file(dir.join("data_batch_3.bin")).unwrap();
        let e = load_cifar10(&dir).unwrap_err().to_string();
        assert!(
            e.contains("missing data_batch_3.bin") && e.contains("cifar-10-batches-bin"),
            "{e}"
        );
    }

    #[test]
    fn the_shipped_digits_are_the_files_in_the_repository() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/digits");
        assert_eq!(shipped_digits().unwrap(), load_digits(&dir).unwrap());
        assert_eq!(shipped_digits().unwrap().len(), 1797);
    }

    #[test]
    fn a_directory_without_digits_is_named() {
        let e = load_digits(&tmp("empty")).unwrap_err().to_string();
        assert!(
            e.contains("digits-images.npy, digits-labels.npy") && e.contains("data/digits"),
            "{e}"
        );
    }

    #[test]
    fn permutations_are_seeded_and_complete() {
        let p = permutation(100, 3);
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(p, permutation(100, 3));
        assert_ne!(p, permutation(100, 4));
    }
}
