//! NumPy's `.npy` format for little-endian float32, C-ordered arrays. The header is parsed as the
//! Python dict literal it is, with exactly the keys NumPy writes and accepts (descr,
//! fortran_order, shape), so no key can be mistaken for another.

use std::path::Path;

use super::{f32_from_le, f32_to_le, output, read_file, HostTensor, IoError};

const MAGIC: &[u8] = b"\x93NUMPY";

/// A value of the header dict.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// A recursive-descent reader of the header's Python literal: `{'key': value, ...}` where a value
/// is a string, True/False or a tuple of non-negative integers.
struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_space(&mut self) {
        while self.text.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.text.get(self.at).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        match self.peek() {
            Some(got) if got == c => {
                self.at += 1;
                Ok(())
            }
            Some(got) => Err(format!(
                "expected '{}' at byte {} of the header, found '{}'",
                c as char, self.at, got as char
            )),
            None => Err(format!("expected '{}', the header ended", c as char)),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => {
                return Err(format!(
                    "expected a string at byte {} of the header",
                    self.at
                ))
            }
        };
        self.at += 1;
        let start = self.at;
        while let Some(&c) = self.text.get(self.at) {
            if c == b'\\' {
                return Err("escapes in header strings are not supported".to_string());
            }
            if c == quote {
                let s = std::str::from_utf8(&self.text[start..self.at])
                    .map_err(|_| "a header string is not text".to_string())?;
                self.at += 1;
                return Ok(s.to_string());
            }
            self.at += 1;
        }
        Err("a string in the header is not closed".to_string())
    }

    fn word(&mut self) -> &[u8] {
        self.skip_space();
        let start = self.at;
        while self
            .text
            .get(self.at)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            self.at += 1;
        }
        &self.text[start..self.at]
    }

    fn tuple(&mut self) -> Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.peek() == Some(b')') {
                self.at += 1;
                return Ok(dims);
            }
            let word = self.word();
            let dim = std::str::from_utf8(word)
                .ok()
                .and_then(|w| w.parse::<usize>().ok())
                .ok_or_else(|| "the shape is not a tuple of non-negative integers".to_string())?;
            dims.push(dim);
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b')') => {}
                _ => return Err("the shape is not a tuple of non-negative integers".to_string()),
            }
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(Value::Str(self.string()?)),
            Some(b'(') => Ok(Value::Tuple(self.tuple()?)),
            _ => match self.word() {
                b"True" => Ok(Value::Bool(true)),
                b"False" => Ok(Value::Bool(false)),
                other => Err(format!(
                    "unexpected value '{}' in the header",
                    String::from_utf8_lossy(other)
                )),
            },
        }
    }

    /// The dict's (key, value) pairs in order; trailing whitespace (NumPy's padding) is allowed.
    fn dict(&mut self) -> Result<Vec<(String, Value)>, String> {
        self.expect(b'{')?;
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.at += 1;
                break;
            }
            let key = self.string()?;
            self.expect(b':')?;
            items.push((key, self.value()?));
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {}
                _ => return Err("the header dict is malformed".to_string()),
            }
        }
        if self.peek().is_some() {
            return Err("the header has text after its dict".to_string());
        }
        Ok(items)
    }
}

/// (descr, fortran_order, shape) of a header, refusing missing, repeated or unknown keys.
fn parse_header(text: &[u8]) -> Result<(String, bool, Vec<usize>), String> {
    let items = Parser { text, at: 0 }.dict()?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (key, value) in items {
        let slot_taken = match (key.as_str(), value) {
            ("descr", Value::Str(s)) => descr.replace(s).is_some(),
            ("fortran_order", Value::Bool(b)) => fortran.replace(b).is_some(),
            ("shape", Value::Tuple(t)) => shape.replace(t).is_some(),
            ("descr" | "fortran_order" | "shape", v) => {
                return Err(format!("'{key}' has the wrong kind of value ({v:?})"))
            }
            _ => {
                return Err(format!(
                    "unexpected key '{key}' (NumPy headers hold exactly 'descr', 'fortran_order' and 'shape')"
                ))
            }
        };
        if slot_taken {
            return Err(format!("the key '{key}' appears twice"));
        }
    }
    match (descr, fortran, shape) {
        (Some(d), Some(f), Some(s)) => Ok((d, f, s)),
        (None, ..) => Err("the header has no 'descr'".to_string()),
        (_, None, _) => Err("the header has no 'fortran_order'".to_string()),
        _ => Err("the header has no 'shape'".to_string()),
    }
}

/// Reads a little-endian float32, C-ordered `.npy` array.
pub fn load_npy(path: &Path) -> Result<HostTensor, IoError> {
    parse_npy(&read_file(path)?, path)
}

/// Parses the bytes of a `.npy` file; `path` names it in errors.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<HostTensor, IoError> {
    let bad = |reason: String| IoError::BadNpy {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(
            "it does not start with the NumPy magic string".to_string()
        ));
    }
    let (header_len, header_start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        2 | 3 => return Err(bad("the header is truncated".to_string())),
        v => return Err(bad(format!("unknown format version {v}"))),
    };
    let header = header_start
        .checked_add(header_len)
        .and_then(|end| bytes.get(header_start..end))
        .ok_or_else(|| bad("the header is truncated".to_string()))?;
    let (descr, fortran, shape) = parse_header(header).map_err(bad)?;
    if descr != "<f4" {
        return Err(IoError::NpyDtype {
            path: path.to_path_buf(),
            descr,
        });
    }
    if fortran {
        return Err(IoError::NpyFortran {
            path: path.to_path_buf(),
        });
    }
    let data = &bytes[header_start + header_len..];
    let needed = shape
        .iter()
        .try_fold(4usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} is too large to address")))?;
    if data.len() != needed {
        return Err(bad(format!(
            "shape {shape:?} needs {needed} bytes of data, the file has {}: is it truncated?",
            data.len()
        )));
    }
    Ok(HostTensor {
        shape,
        data: f32_from_le(data),
    })
}

/// The bytes of a little-endian float32 C-ordered `.npy` (format 1.0, or 2.0 for headers that
/// do not fit 1.0's 16-bit length).
pub fn npy_bytes(t: &HostTensor) -> Vec<u8> {
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
    let version: u8 = if header.len() + 11 > u16::MAX as usize {
        2
    } else {
        1
    };
    let prefix = if version == 1 { 10 } else { 12 };
    // Magic, version, length, header and '\n' make a multiple of 64.
    let unpadded = prefix + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(prefix + header.len() + t.data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&f32_to_le(&t.data));
    out
}

/// Writes a little-endian float32 C-ordered `.npy` through the safe write path.
pub fn save_npy(path: &Path, t: &HostTensor) -> Result<(), IoError> {
    output::write_atomic(path, &npy_bytes(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn parse(bytes: &[u8]) -> Result<HostTensor, IoError> {
        parse_npy(bytes, Path::new("x.npy"))
    }

    #[test]
    fn headers_parse_as_python_dicts() {
        let ok = |h: &str| parse(&file(h, &[0; 8])).unwrap().shape;
        assert_eq!(
            ok("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n"),
            [2]
        );
        assert_eq!(
            ok("{\"shape\":(1,2),\"descr\":\"<f4\",\"fortran_order\":False}   "),
            [1, 2]
        );
        let scalar = parse(&file(
            "{'descr': '<f4', 'fortran_order': False, 'shape': ()}",
            &[0; 4],
        ))
        .unwrap();
        assert_eq!((scalar.shape.len(), scalar.data.len()), (0, 1));
    }

    #[test]
    fn a_dtype_named_in_another_key_is_not_mistaken_for_descr() {
        // The old substring search read this <f8 file as float32.
        let h = "{'note': '<f4', 'descr': '<f8', 'fortran_order': False, 'shape': (1,)}";
        let e = parse(&file(h, &[0; 8])).unwrap_err().to_string();
        assert!(e.contains("unexpected key 'note'"), "{e}");
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'x': '<f4'}";
        assert!(parse(&file(h, &[0; 8])).is_err());
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (1,)}";
        assert!(matches!(
            parse(&file(h, &[0; 8])),
            Err(IoError::NpyDtype { .. })
        ));
    }

    #[test]
    fn malformed_headers_are_named() {
        for (h, needle) in [
            (
                "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}",
                "twice",
            ),
            ("{'descr': '<f4', 'fortran_order': False}", "no 'shape'"),
            (
                "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}",
                "unexpected value",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
                "non-negative",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x",
                "after its dict",
            ),
            ("{'descr': '<f4", "not closed"),
            ("['descr']", "expected '{'"),
        ] {
            let e = parse(&file(h, &[0; 4])).unwrap_err().to_string();
            assert!(e.contains(needle), "{h}: {e}");
        }
    }

    #[test]
    fn sizes_that_overflow_are_refused() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4)}";
        let e = parse(&file(h, &[])).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        // Wrapped to zero elements, the old check accepted an empty data section.
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904,)}";
        assert!(parse(&file(h, &[])).is_err());
    }

    #[test]
    fn round_trip_including_a_long_header() {
        let t = HostTensor {
            shape: vec![3, 1],
            data: vec![1.0, -0.0, f32::MIN_POSITIVE],
        };
        assert_eq!(parse(&npy_bytes(&t)).unwrap(), t);
        // 30,000 dimensions of 1 need a header longer than 1.0's 16-bit length.
        let wide = HostTensor {
            shape: vec![1; 30_000],
            data: vec![2.5],
        };
        let bytes = npy_bytes(&wide);
        assert_eq!(bytes[6], 2);
        assert_eq!(parse(&bytes).unwrap(), wide);
    }
}
