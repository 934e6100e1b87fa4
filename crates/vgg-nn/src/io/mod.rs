//! Files in and out: named f32 tensors as safetensors (weights, gradients) and NumPy `.npy`
//! (inputs, outputs), images as ImageNet-preprocessed tensors, and the one safe write path every
//! output takes. Every failure names the file and what is wrong with it; every size read from a
//! file is checked before it is allocated.

pub mod image;
mod npy;
pub mod output;
mod pytorch;
mod safetensors_file;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;

pub use npy::{load_npy, npy_bytes, parse_npy, save_npy};
pub use output::{
    check_distinct, check_output, output_directory, remove_partial_outputs, write_atomic,
    write_with, NamedPath,
};
pub use pytorch::{is_pytorch, load_pytorch};
pub use safetensors_file::{save_safetensors, save_safetensors_streamed, sniff};

/// A tensor in host memory, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// How many values are NaN or infinite.
    pub fn non_finite(&self) -> usize {
        self.data.iter().filter(|v| !v.is_finite()).count()
    }

    /// A device tensor's values, copied to the host.
    pub fn download<B: vgg_tensor::Backend>(
        backend: &B,
        t: &B::Tensor,
    ) -> vgg_tensor::Result<HostTensor> {
        use vgg_tensor::DeviceTensor;
        Ok(HostTensor {
            shape: t.shape().dims().to_vec(),
            data: backend.download(t)?,
        })
    }
}

/// Named tensors with the file's free-form metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorFile {
    /// Named tensors, in file order.
    pub tensors: Vec<(String, HostTensor)>,
    /// The file's string metadata.
    pub metadata: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
/// Why a file could not be read or written.
pub enum IoError {
    // The OS error is part of the message, not a source, so it is printed once.
    #[error("cannot read {path}: {error}")]
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    #[error("cannot write {path}: {error}")]
    /// The file could not be written.
    Write {
        /// The file.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file ({reason}){}", what_it_is.as_deref().map_or_else(|| "; is it truncated or of another format?".to_string(), |k| format!(": it appears to be {k}")))]
    /// The file is not valid safetensors.
    BadSafetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// What the file's first bytes say it is, where they are recognisable.
        what_it_is: Option<String>,
    },
    #[error("{path} is not a valid PyTorch file ({reason}); is it truncated, or not a torch.save of a state_dict?")]
    /// The file looks like a `torch.save` file but cannot be read as a state_dict of tensors.
    BadPytorch {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    #[error("{path} holds a Python object of type {python_type} (at '{at}'), which Python would run code to rebuild; a weight file holds only tensors and plain values, so it is refused unread. Save only the state_dict")]
    /// A `torch.save` file holds an object other than tensors and plain containers.
    PickledObject {
        /// The file.
        path: PathBuf,
        /// Where in the file's dictionaries it sits.
        at: String,
        /// Its Python type.
        python_type: String,
    },
    #[error("{path}: tensor '{name}' is {dtype}, but only F32 (and integers that F32 holds exactly, up to 2^24) is supported; convert it, e.g. in PyTorch with .float()")]
    /// A tensor is neither float32 nor integers that float32 holds exactly.
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The tensor's dtype.
        dtype: String,
    },
    #[error("{path} is not a valid .npy file: {reason}")]
    /// The file is not a valid `.npy` array.
    BadNpy {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    #[error("{path}: the array is {descr}, but only little-endian float32 ('<f4') is supported; convert it with arr.astype(np.float32)")]
    /// The array's dtype is not little-endian float32.
    NpyDtype {
        /// The file.
        path: PathBuf,
        /// The dtype the header declares.
        descr: String,
    },
    #[error("{path}: Fortran-ordered arrays are not supported; save np.ascontiguousarray(arr)")]
    /// The array is stored in Fortran order.
    NpyFortran {
        /// The file.
        path: PathBuf,
    },
    #[error("{path} is {kind}: vgg reads and writes only regular files, and never through a link; give the path of a regular file")]
    /// The path is a link, a directory or a device, not a regular file.
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is, in words.
        kind: &'static str,
    },
    #[error("cannot write into {path}: it is {kind}, not a directory; give a directory (created if missing)")]
    /// An output directory that is something else (a file, a link, a device).
    NotADirectory {
        /// The path.
        path: PathBuf,
        /// What it is, in words.
        kind: &'static str,
    },
    #[error("cannot write {path}: the directory {dir} does not exist")]
    /// The output's directory does not exist.
    NoDirectory {
        /// The output.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    #[error("{path} is {size}, more than the {available} of memory available to read it")]
    /// The file is larger than the memory available to read it.
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size, formatted.
        size: String,
        /// The memory available, formatted.
        available: String,
    },
    #[error("{}", same_file_message(output, other, *other_is_input, path))]
    /// An output is the same file as another output or as an input.
    SameFile {
        /// The output, as the command names it.
        output: String,
        /// The other output or the input, as the command names it.
        other: String,
        /// Whether `other` is an input.
        other_is_input: bool,
        /// The output's path.
        path: PathBuf,
    },
    #[error("{path}: {what}")]
    /// An image could not be decoded or is out of bounds.
    BadImage {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
}

fn same_file_message(output: &str, other: &str, other_is_input: bool, path: &Path) -> String {
    if other_is_input {
        format!(
            "{output} {} is the file {other} reads: writing it would destroy the input; give {output} another path",
            path.display()
        )
    } else {
        format!(
            "{output} and {other} both name {}: one would overwrite the other; give each its own path",
            path.display()
        )
    }
}

/// A whole input file. Only regular files are read (through links, which inputs may be): a
/// directory, device, pipe or socket is refused before a byte is read, and a pipe is opened
/// without waiting for a writer. The bytes read are bounded by the memory this process may use
/// (`memory::host_budget_bytes`, which `--max-memory` lowers), whatever the file claims or grows to.
pub fn read_file(path: &Path) -> Result<Vec<u8>, IoError> {
    let err = |error| IoError::Read {
        path: path.to_path_buf(),
        error,
    };
    let (file, size) = open_regular(path)?;
    // A file is held twice while it is parsed (its bytes and the values).
    let limit = vgg_tensor::memory::host_budget_bytes().map_or(u64::MAX, |a| a / 2);
    let too_large = |size: u64| IoError::TooLarge {
        path: path.to_path_buf(),
        size: vgg_tensor::memory::human_bytes(size),
        available: vgg_tensor::memory::human_bytes(limit.saturating_mul(2)),
    };
    if size > limit {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // One byte more than allowed tells a file that grew past the limit from one that fits.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Opens `path` for reading if it is a regular file (a link to one included), with its size.
fn open_regular(path: &Path) -> Result<(std::fs::File, u64), IoError> {
    let err = |error| IoError::Read {
        path: path.to_path_buf(),
        error,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a FIFO for reading would otherwise block until something writes to it.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(IoError::NotRegularFile {
            path: path.to_path_buf(),
            kind: kind_in_words(kind),
        });
    }
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // Back to blocking reads, as a regular file expects; failing that is harmless for one.
        // SAFETY: fcntl on a descriptor this function owns, with flags it read from it.
        unsafe {
            let fd = file.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
    }
    Ok((file, meta.len()))
}

/// What a file that is not a regular file is, in words.
pub(crate) fn kind_in_words(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
    }
    if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// How a file stores a tensor's values, for [`stored_values`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Little-endian float32.
    F32,
    /// Little-endian int64 (PyTorch's counters, BatchNorm's `num_batches_tracked`).
    I64,
    /// Little-endian int32.
    I32,
}

/// A tensor's values as float32: float32 as stored, integers only when every one is held
/// exactly (|v| <= 2^24), so nothing is silently rounded. None otherwise.
pub(crate) fn stored_values(bytes: &[u8], stored: Stored) -> Option<Vec<f32>> {
    const EXACT: i64 = 1 << 24;
    let exact = |v: i64| (-EXACT..=EXACT).contains(&v).then_some(v as f32);
    match stored {
        Stored::F32 => Some(f32_from_le(bytes)),
        Stored::I64 => bytes
            .chunks_exact(8)
            .map(|b| exact(i64::from_le_bytes(b.try_into().expect("8 bytes"))))
            .collect(),
        Stored::I32 => bytes
            .chunks_exact(4)
            .map(|b| exact(i32::from_le_bytes(b.try_into().expect("4 bytes")).into()))
            .collect(),
    }
}

pub(crate) fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

pub(crate) fn f32_to_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Named tensors from a weight file of either format, told apart by its first bytes: safetensors,
/// or PyTorch's `torch.save` (`.pth`, as torchvision ships its weights).
pub fn load_tensors(path: &Path) -> Result<TensorFile, IoError> {
    let (mut file, _) = open_regular(path)?;
    let mut head = Vec::with_capacity(16);
    (&mut file)
        .take(16)
        .read_to_end(&mut head)
        .map_err(|error| IoError::Read {
            path: path.to_path_buf(),
            error,
        })?;
    // A safetensors header (8 bytes of length, then JSON) can begin with a pickle's 0x80.
    let safetensors_header = head.get(8) == Some(&b'{');
    if !safetensors_header && is_pytorch(&head) {
        load_pytorch(path)
    } else {
        load_safetensors(path)
    }
}

/// Reads every tensor of a safetensors file, refusing any that is not F32.
pub fn load_safetensors(path: &Path) -> Result<TensorFile, IoError> {
    parse_safetensors(&read_file(path)?, path)
}

/// Parses the bytes of a safetensors file; `path` names it in errors.
pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<TensorFile, IoError> {
    let parsed =
        safetensors::SafeTensors::deserialize(bytes).map_err(|e| IoError::BadSafetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
            what_it_is: sniff(bytes).map(str::to_string),
        })?;
    let metadata = safetensors::SafeTensors::read_metadata(bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().clone())
        .unwrap_or_default();
    let mut tensors = Vec::new();
    for (name, view) in parsed.tensors() {
        let stored = match view.dtype() {
            Dtype::F32 => Some(Stored::F32),
            Dtype::I64 => Some(Stored::I64),
            Dtype::I32 => Some(Stored::I32),
            _ => None,
        };
        let Some(data) = stored.and_then(|s| stored_values(view.data(), s)) else {
            return Err(IoError::Dtype {
                path: path.to_path_buf(),
                name,
                dtype: format!("{:?}", view.dtype()),
            });
        };
        tensors.push((
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        ));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(TensorFile { tensors, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vgg-nn-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn safetensors_round_trip_bit_exactly() {
        let path = tmp("round.safetensors");
        let weird = [f32::MIN_POSITIVE, -0.0, 1.0e-45, f32::MAX, 0.1, -3.5];
        let file = TensorFile {
            tensors: vec![
                (
                    "a.weight".into(),
                    HostTensor {
                        shape: vec![2, 3],
                        data: weird.to_vec(),
                    },
                ),
                (
                    "b".into(),
                    HostTensor {
                        shape: vec![1],
                        data: vec![7.0],
                    },
                ),
            ],
            metadata: HashMap::from([("model".to_string(), "vgg11".to_string())]),
        };
        save_safetensors(&path, &file).unwrap();
        let back = load_safetensors(&path).unwrap();
        assert_eq!(back.metadata["model"], "vgg11");
        for ((n1, t1), (n2, t2)) in file.tensors.iter().zip(&back.tensors) {
            assert_eq!((n1, &t1.shape), (n2, &t2.shape));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&t1.data), bits(&t2.data));
        }
    }

    #[test]
    fn truncated_and_foreign_files_are_named_errors() {
        let path = tmp("t.safetensors");
        let file = TensorFile {
            tensors: vec![(
                "w".into(),
                HostTensor {
                    shape: vec![4],
                    data: vec![1.0; 4],
                },
            )],
            metadata: HashMap::new(),
        };
        save_safetensors(&path, &file).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let e = load_safetensors(&path).unwrap_err().to_string();
        assert!(
            e.contains("t.safetensors") && e.contains("truncated"),
            "{e}"
        );
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(
            load_safetensors(&path),
            Err(IoError::BadSafetensors { .. })
        ));
        let e = load_safetensors(&tmp("missing.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read") && e.contains("missing.safetensors"),
            "{e}"
        );
    }

    #[test]
    fn other_dtypes_are_refused() {
        let path = tmp("f16.safetensors");
        let data = [0u8; 4];
        let view = TensorView::new(Dtype::F16, vec![2], &data).unwrap();
        std::fs::write(&path, safetensors::serialize([("w", view)], None).unwrap()).unwrap();
        let e = load_safetensors(&path).unwrap_err().to_string();
        assert!(e.contains("F16") && e.contains("only F32"), "{e}");
    }

    #[test]
    fn integers_load_only_where_f32_holds_them_exactly() {
        let write = |name: &str, values: &[i64]| {
            let path = tmp(name);
            let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let view = TensorView::new(Dtype::I64, vec![values.len()], &data).unwrap();
            std::fs::write(&path, safetensors::serialize([("n", view)], None).unwrap()).unwrap();
            load_safetensors(&path)
        };
        let file = write("i64.safetensors", &[7, -3, 1 << 24]).unwrap();
        assert_eq!(file.tensors[0].1.data, [7.0, -3.0, 16_777_216.0]);
        let e = write("i64-big.safetensors", &[(1 << 24) + 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("I64") && e.contains("2^24"), "{e}");
        assert_eq!(
            stored_values(&5i32.to_le_bytes(), Stored::I32),
            Some(vec![5.0])
        );
    }
}
