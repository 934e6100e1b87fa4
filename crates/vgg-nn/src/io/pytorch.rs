//! PyTorch's own weight files (`torch.save` of a state_dict: `.pth`/`.pt`, as torchvision ships
//! them), read without Python. The reader (burn's `pytorch-reader`) interprets the pickle as data:
//! it builds tensors and plain containers and refuses any other Python callable, so a hostile file
//! cannot run code. Sizes the pickle declares are checked against the memory this process may use
//! before any tensor is read.

use std::path::Path;

use pytorch_reader::{DType, PickleValue, PytorchReader};

use super::{open_regular, stored_values, HostTensor, IoError, Stored, TensorFile};

/// Whether `bytes` (a file's first bytes) look like a `torch.save` file: a zip archive (PyTorch
/// 1.6 and later) or a bare pickle (older files).
pub fn is_pytorch(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80)
}

/// Every tensor of a `torch.save` state_dict, refusing any that is not float32. A checkpoint that
/// nests its state_dict (under `state_dict`, `model` or `model_state_dict`) or was saved from
/// `DataParallel` (`module.` in front of every name) gives the plain names.
pub fn load_pytorch(path: &Path) -> Result<TensorFile, IoError> {
    let bad = |reason: String| IoError::BadPytorch {
        path: path.to_path_buf(),
        reason,
    };
    // Refuses devices, pipes and directories before the reader opens the path.
    let (_, size) = open_regular(path)?;
    let limit = vgg_tensor::memory::host_budget_bytes().unwrap_or(u64::MAX);
    let too_large = |size: String| IoError::TooLarge {
        path: path.to_path_buf(),
        size,
        available: vgg_tensor::memory::human_bytes(limit),
    };
    // Old (tar) containers are read whole at open.
    if size > limit {
        return Err(too_large(vgg_tensor::memory::human_bytes(size)));
    }
    // The reader skips objects it does not interpret; a weight file has no reason to hold any.
    let tree = PytorchReader::read_pickle_data(path, None).map_err(|e| bad(e.to_string()))?;
    if let Some((at, python_type)) = foreign_object(&tree, String::new()) {
        return Err(IoError::PickledObject {
            path: path.to_path_buf(),
            at,
            python_type,
        });
    }
    let reader = PytorchReader::new(path).map_err(|e| bad(e.to_string()))?;
    let declared: u64 = reader
        .tensors()
        .values()
        .map(|t| t.byte_len() as u64)
        .fold(0u64, u64::saturating_add);
    if declared > limit {
        return Err(too_large(format!(
            "{} of tensors ({} on disk)",
            vgg_tensor::memory::human_bytes(declared),
            vgg_tensor::memory::human_bytes(size)
        )));
    }
    let mut named: Vec<_> = reader.into_tensors().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let prefix = common_wrapper(named.iter().map(|(n, _)| n.as_str()));
    let mut tensors = Vec::with_capacity(named.len());
    for (name, tensor) in named {
        let name = name[prefix.len()..].to_string();
        let dtype_error = |name: String| IoError::Dtype {
            path: path.to_path_buf(),
            name,
            dtype: format!("{:?}", tensor.dtype()),
        };
        let stored = match tensor.dtype() {
            DType::F32 => Stored::F32,
            DType::I64 => Stored::I64,
            DType::I32 => Stored::I32,
            _ => return Err(dtype_error(name)),
        };
        let bytes = tensor.read().map_err(|e| bad(e.to_string()))?;
        if bytes.len() != tensor.byte_len() {
            return Err(bad(format!(
                "tensor '{name}' holds {} bytes, not the {} its shape needs",
                bytes.len(),
                tensor.byte_len()
            )));
        }
        // The reader gives native-endian bytes; every target we build for is little-endian.
        let Some(data) = stored_values(&bytes, stored) else {
            return Err(dtype_error(name));
        };
        tensors.push((
            name,
            HostTensor {
                shape: tensor.shape().to_vec(),
                data,
            },
        ));
    }
    if tensors.is_empty() {
        return Err(bad("it holds no tensors".into()));
    }
    Ok(TensorFile {
        tensors,
        metadata: Default::default(),
    })
}

/// The first value (its key path, its Python type) that is neither a tensor nor plain data.
fn foreign_object(value: &PickleValue, at: String) -> Option<(String, String)> {
    match value {
        PickleValue::Unsupported(t) if t != "torch.Tensor" => Some((at, t.clone())),
        PickleValue::List(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| foreign_object(v, format!("{at}[{i}]"))),
        PickleValue::Dict(entries) => {
            let mut keys: Vec<_> = entries.keys().collect();
            keys.sort();
            keys.into_iter().find_map(|k| {
                let inner = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                foreign_object(&entries[k], inner)
            })
        }
        _ => None,
    }
}

/// The prefix every name shares that only wraps a state_dict: a checkpoint's key (`state_dict.`,
/// `model.`, `model_state_dict.`) and `DataParallel`'s `module.`, in that order; empty if none.
fn common_wrapper<'a>(names: impl Iterator<Item = &'a str> + Clone) -> String {
    let mut prefix = String::new();
    let shared = |p: &str| {
        let mut any = false;
        for n in names.clone() {
            if !n.starts_with(p) {
                return false;
            }
            any = true;
        }
        any
    };
    for key in ["state_dict.", "model_state_dict.", "model."] {
        if shared(key) {
            prefix = key.to_string();
            break;
        }
    }
    let wrapped = format!("{prefix}module.");
    if shared(&wrapped) {
        prefix = wrapped;
    }
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrappers_are_recognised_only_when_every_name_has_them() {
        let names = ["state_dict.module.features.0.weight", "state_dict.module.x"];
        assert_eq!(common_wrapper(names.iter().copied()), "state_dict.module.");
        let names = ["model.features.0.weight", "other"];
        assert_eq!(common_wrapper(names.iter().copied()), "");
        let names = ["features.0.weight", "classifier.0.bias"];
        assert_eq!(common_wrapper(names.iter().copied()), "");
        let names = ["module.features.0.weight"];
        assert_eq!(common_wrapper(names.iter().copied()), "module.");
    }

    #[test]
    fn the_magic_bytes_of_torch_files() {
        assert!(is_pytorch(b"PK\x03\x04rest"));
        assert!(is_pytorch(b"\x80\x02}q"));
        assert!(!is_pytorch(b"\x93NUMPY"));
        assert!(!is_pytorch(b""));
    }
}
