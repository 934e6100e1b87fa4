//! Named f32 tensors on disk: safetensors (weights, gradients) and NumPy `.npy` (inputs, outputs).
//! Every failure names the file and what is wrong with it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

/// A tensor in host memory, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
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
}

fn read(path: &Path) -> Result<Vec<u8>, IoError> {
    std::fs::read(path).map_err(|source| IoError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes through a temporary file and a rename, so a failed write never leaves half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let err = |source| IoError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
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
    let bytes = read(path)?;
    let parsed =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| IoError::BadSafetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let metadata = safetensors::SafeTensors::read_metadata(&bytes)
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

/// Writes named F32 tensors and metadata; values round-trip bit for bit.
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
    write_atomically(path, &out)
}

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a little-endian float32, C-ordered `.npy` array.
pub fn load_npy(path: &Path) -> Result<HostTensor, IoError> {
    let bytes = read(path)?;
    let bad = |reason: &str| IoError::BadNpy {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.len() < 10 || &bytes[..6] != NPY_MAGIC {
        return Err(bad("it does not start with the NumPy magic string"));
    }
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(&format!("unknown format version {v}"))),
    };
    let header = bytes
        .get(header_start..header_start + header_len)
        .ok_or_else(|| bad("the header is truncated"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("the header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next())
        .ok_or_else(|| bad("the header has no 'descr'"))?;
    if descr != "<f4" {
        return Err(IoError::NpyDtype {
            path: path.to_path_buf(),
            descr: descr.to_string(),
        });
    }
    let fortran = field("fortran_order").ok_or_else(|| bad("the header has no 'fortran_order'"))?;
    if fortran.starts_with("True") {
        return Err(IoError::NpyFortran {
            path: path.to_path_buf(),
        });
    }
    let shape_text = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| bad("the header has no 'shape'"))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad("the shape is not a tuple of integers"))
        })
        .collect::<Result<_, _>>()?;
    let elements = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("the shape is too large"))?;
    let data = &bytes[header_start + header_len..];
    if data.len() != elements * 4 {
        return Err(bad(&format!(
            "shape {shape:?} needs {} bytes of data, the file has {}: is it truncated?",
            elements * 4,
            data.len()
        )));
    }
    Ok(HostTensor {
        shape,
        data: f32_from_le(data),
    })
}

/// Writes a little-endian float32 C-ordered `.npy` (format 1.0).
pub fn save_npy(path: &Path, t: &HostTensor) -> Result<(), IoError> {
    let shape = match t.shape.len() {
        1 => format!("({},)", t.shape[0]),
        _ => format!(
            "({})",
            t.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.data.len() * 4);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&f32_to_le(&t.data));
    write_atomically(path, &out)
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

    #[test]
    fn npy_round_trip_and_refusals() {
        let path = tmp("x.npy");
        let t = HostTensor {
            shape: vec![2, 3, 1, 2],
            data: (0..12).map(|i| i as f32 * 0.5).collect(),
        };
        save_npy(&path, &t).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            (10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64,
            0
        );
        assert_eq!(load_npy(&path).unwrap(), t);
        let one = HostTensor {
            shape: vec![3],
            data: vec![1.0, 2.0, 3.0],
        };
        save_npy(&path, &one).unwrap();
        assert_eq!(load_npy(&path).unwrap(), one);

        let replaced = |from: &[u8], to: &[u8]| {
            let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
            let mut b = bytes.clone();
            b[at..at + to.len()].copy_from_slice(to);
            b
        };
        std::fs::write(&path, replaced(b"<f4", b"<f8")).unwrap();
        assert!(load_npy(&path).unwrap_err().to_string().contains("'<f4'"));
        std::fs::write(&path, replaced(b"False", b"True ")).unwrap();
        assert!(matches!(load_npy(&path), Err(IoError::NpyFortran { .. })));
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        assert!(load_npy(&path)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        std::fs::write(&path, b"not numpy at all").unwrap();
        assert!(load_npy(&path).unwrap_err().to_string().contains("magic"));
    }
}
