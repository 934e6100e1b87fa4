//! Files in and out: named f32 tensors as safetensors (weights, gradients) and NumPy `.npy`
//! (inputs, outputs), images as ImageNet-preprocessed tensors, and the one safe write path every
//! output takes. Every failure names the file and what is wrong with it; every size read from a
//! file is checked before it is allocated.

pub mod image;
mod npy;
pub mod output;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

pub use npy::{load_npy, npy_bytes, parse_npy, save_npy};
pub use output::{check_output, remove_partial_outputs, write_atomic, write_with};

/// A tensor in host memory, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
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
    pub tensors: Vec<(String, HostTensor)>,
    pub metadata: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid safetensors file ({reason}); is it truncated or of another format?"
    )]
    BadSafetensors { path: PathBuf, reason: String },
    #[error("{path}: tensor '{name}' is {dtype}, but only F32 is supported; convert it, e.g. in PyTorch with .float()")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path} is not a valid .npy file: {reason}")]
    BadNpy { path: PathBuf, reason: String },
    #[error("{path}: the array is {descr}, but only little-endian float32 ('<f4') is supported; convert it with arr.astype(np.float32)")]
    NpyDtype { path: PathBuf, descr: String },
    #[error("{path}: Fortran-ordered arrays are not supported; save np.ascontiguousarray(arr)")]
    NpyFortran { path: PathBuf },
    #[error("{path} is {kind}: vgg reads and writes only regular files, and never through a link; give the path of a regular file")]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error("cannot write {path}: the directory {dir} does not exist")]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error("{path} is {size}, more than the {available} of memory available to read it")]
    TooLarge {
        path: PathBuf,
        size: String,
        available: String,
    },
    #[error("{path}: {what}")]
    BadImage { path: PathBuf, what: String },
}

/// A whole input file, refusing directories and files larger than the memory available.
pub fn read_file(path: &Path) -> Result<Vec<u8>, IoError> {
    let err = |source| IoError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    if meta.is_dir() {
        return Err(IoError::NotRegularFile {
            path: path.to_path_buf(),
            kind: "a directory",
        });
    }
    // A file is held twice while it is parsed (its bytes and the values).
    let size = meta.len();
    if let Some(available) = vgg_tensor::memory::host_available_bytes() {
        if size.saturating_mul(2) > available {
            return Err(IoError::TooLarge {
                path: path.to_path_buf(),
                size: vgg_tensor::memory::human_bytes(size),
                available: vgg_tensor::memory::human_bytes(available),
            });
        }
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.read_to_end(&mut bytes).map_err(err)?;
    Ok(bytes)
}

fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn f32_to_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
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
        })?;
    let metadata = safetensors::SafeTensors::read_metadata(bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().clone())
        .unwrap_or_default();
    let mut tensors = Vec::new();
    for (name, view) in parsed.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(IoError::Dtype {
                path: path.to_path_buf(),
                name,
                dtype: format!("{:?}", view.dtype()),
            });
        }
        tensors.push((
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data: f32_from_le(view.data()),
            },
        ));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(TensorFile { tensors, metadata })
}

/// Writes named F32 tensors and metadata through the safe write path; values round-trip bit for
/// bit.
pub fn save_safetensors(path: &Path, file: &TensorFile) -> Result<(), IoError> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = file
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), f32_to_le(&t.data), t.shape.clone()))
        .collect();
    let views = bytes.iter().map(|(name, data, shape)| {
        let view =
            TensorView::new(Dtype::F32, shape.clone(), data).expect("shape matches the data");
        (name.clone(), view)
    });
    let metadata = (!file.metadata.is_empty()).then(|| file.metadata.clone());
    let out = safetensors::serialize(views, metadata).map_err(|e| IoError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    write_atomic(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
