//! Writing safetensors files tensor by tensor, through the safe write path. The `safetensors`
//! crate reads them (and checks them), but serialises only into one buffer or a path of its own,
//! so writing a 528 MB VGG-16 held a second whole copy; here the header is written first and each
//! tensor's bytes are fetched and written in turn, so a file costs one tensor of memory to write.
//! The layout is the format's: an 8-byte little-endian header length, the JSON header (padded
//! with spaces to a multiple of 8), then the tensors' bytes at the offsets the header gives.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::{f32_to_le, output, IoError, TensorFile};

/// What a file that is not safetensors appears to be, from its first bytes.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    const KINDS: [(&[u8], &str); 8] = [
        (b"\x89PNG", "a PNG image; weights are .safetensors files"),
        (
            b"\xff\xd8\xff",
            "a JPEG image; weights are .safetensors files",
        ),
        (
            b"\x93NUMPY",
            "a NumPy .npy array: data for the network's input, not weights",
        ),
        (
            b"PK\x03\x04",
            "a zip archive, such as PyTorch's .pt/.pth, which load as weights but not here",
        ),
        (
            b"\x80",
            "a Python pickle, such as an old PyTorch .pt, which load as weights but not here",
        ),
        (
            b"\x89HDF",
            "an HDF5 file (Keras): export the weights to safetensors",
        ),
        (b"\x1f\x8b", "a gzip archive: unpack it first"),
        (b"{", "a JSON text"),
    ];
    KINDS
        .iter()
        .find(|(magic, _)| bytes.starts_with(magic))
        .map(|(_, kind)| *kind)
}

/// Writes named F32 tensors and metadata through the safe write path; values round-trip bit for
/// bit.
pub fn save_safetensors(path: &Path, file: &TensorFile) -> Result<(), IoError> {
    let names: Vec<(String, Vec<usize>)> = file
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shape.clone()))
        .collect();
    save_safetensors_streamed(path, &file.metadata, &names, |i| {
        Ok::<_, std::convert::Infallible>(file.tensors[i].1.data.clone())
    })
}

/// Writes the tensors `tensors` (name, shape) with `metadata`, fetching tensor i's values from
/// `fetch(i)` only when it is written: one tensor is in memory at a time.
pub fn save_safetensors_streamed<E: std::fmt::Display>(
    path: &Path,
    metadata: &HashMap<String, String>,
    tensors: &[(String, Vec<usize>)],
    mut fetch: impl FnMut(usize) -> Result<Vec<f32>, E>,
) -> Result<(), IoError> {
    let header = header(metadata, tensors).map_err(|e| IoError::Write {
        path: path.to_path_buf(),
        error: std::io::Error::other(e),
    })?;
    output::write_with(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for (i, (name, shape)) in tensors.iter().enumerate() {
            let values = fetch(i).map_err(|e| std::io::Error::other(format!("{name}: {e}")))?;
            if values.len() != shape.iter().product::<usize>() {
                return Err(std::io::Error::other(format!(
                    "{name}: {} values for shape {shape:?}",
                    values.len()
                )));
            }
            w.write_all(&f32_to_le(&values))?;
        }
        Ok(())
    })
}

/// The JSON header, padded with spaces to a multiple of 8 bytes.
fn header(
    metadata: &HashMap<String, String>,
    tensors: &[(String, Vec<usize>)],
) -> Result<Vec<u8>, String> {
    let mut map = Map::new();
    if !metadata.is_empty() {
        let mut keys: Vec<&String> = metadata.keys().collect();
        keys.sort();
        let meta: Map<String, Value> = keys
            .into_iter()
            .map(|k| (k.clone(), Value::String(metadata[k].clone())))
            .collect();
        map.insert("__metadata__".into(), Value::Object(meta));
    }
    let mut offset = 0usize;
    for (name, shape) in tensors {
        if name == "__metadata__" || map.contains_key(name) {
            return Err(format!("the tensor name '{name}' is reserved or repeated"));
        }
        let bytes = shape
            .iter()
            .try_fold(4usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("{name}: shape {shape:?} is too large"))?;
        let end = offset
            .checked_add(bytes)
            .ok_or_else(|| "the tensors are too large for one file".to_string())?;
        map.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::to_vec(&Value::Object(map)).map_err(|e| e.to_string())?;
    text.resize(text.len().next_multiple_of(8), b' ');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::super::{parse_safetensors, HostTensor};
    use super::*;

    #[test]
    fn streamed_files_are_what_the_safetensors_crate_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        let tensors = vec![
            ("b.weight".to_string(), vec![2, 3]),
            ("a".to_string(), vec![1]),
            ("empty".to_string(), vec![0, 4]),
        ];
        let meta = HashMap::from([("vgg.model".to_string(), "vgg11".to_string())]);
        let mut asked = Vec::new();
        save_safetensors_streamed(&path, &meta, &tensors, |i| {
            asked.push(i);
            Ok::<_, String>(vec![i as f32 + 0.5; tensors[i].1.iter().product()])
        })
        .unwrap();
        assert_eq!(asked, [0, 1, 2]);
        let bytes = std::fs::read(&path).unwrap();
        let back = parse_safetensors(&bytes, &path).unwrap();
        assert_eq!(back.metadata["vgg.model"], "vgg11");
        let find = |n: &str| back.tensors.iter().find(|(m, _)| m == n).unwrap().1.clone();
        assert_eq!(
            find("b.weight"),
            HostTensor {
                shape: vec![2, 3],
                data: vec![0.5; 6]
            }
        );
        assert_eq!(find("a").data, [1.5]);
        assert_eq!(find("empty").shape, [0, 4]);
        // The header is padded to 8 bytes, as the crate writes it.
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(len % 8, 0);
    }

    #[test]
    fn a_failed_fetch_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        let tensors = vec![("a".to_string(), vec![2])];
        let e = save_safetensors_streamed(&path, &HashMap::new(), &tensors, |_| {
            Err::<Vec<f32>, _>("the device is gone")
        })
        .unwrap_err();
        assert!(e.to_string().contains("the device is gone"), "{e}");
        assert!(!path.exists());
        let e = save_safetensors_streamed(&path, &HashMap::new(), &tensors, |_| {
            Ok::<_, String>(vec![1.0; 3])
        })
        .unwrap_err();
        assert!(e.to_string().contains("3 values"), "{e}");
    }

    #[test]
    fn other_formats_are_recognised() {
        assert!(sniff(b"\x89PNG\r\n").unwrap().contains("PNG"));
        assert!(sniff(b"PK\x03\x04...").unwrap().contains(".pth"));
        assert_eq!(sniff(b"\x08\x00\x00\x00"), None);
    }
}
