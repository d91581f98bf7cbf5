//! `.npy` files (numpy's array format) ⇄ host tensors: what `adaptc run` reads inputs from and
//! writes outputs to, and what the reference outputs of the fixtures are stored in.
//!
//! Little-endian, C-order arrays of numeric and bool types; anything else is refused with a
//! reason, never guessed.

use std::path::Path;

use adaptc_ir::DataType;

use crate::error::{Result, RuntimeError};
use crate::tensor::{storage_from_le_bytes, Tensor};

fn err(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Tensor { name: path.display().to_string(), reason: reason.into() }
}

/// numpy's `descr` for an element type.
fn descr(dtype: DataType) -> Option<&'static str> {
    Some(match dtype {
        DataType::Float => "<f4",
        DataType::Double => "<f8",
        DataType::Float16 => "<f2",
        DataType::Int8 => "|i1",
        DataType::Int16 => "<i2",
        DataType::Int32 => "<i4",
        DataType::Int64 => "<i8",
        DataType::Uint8 => "|u1",
        DataType::Uint16 => "<u2",
        DataType::Uint32 => "<u4",
        DataType::Uint64 => "<u8",
        DataType::Bool => "|b1",
        _ => return None,
    })
}

fn dtype_of(descr: &str) -> Option<DataType> {
    let d = descr.trim_start_matches(['<', '|', '=']);
    Some(match d {
        "f4" => DataType::Float,
        "f8" => DataType::Double,
        "f2" => DataType::Float16,
        "i1" => DataType::Int8,
        "i2" => DataType::Int16,
        "i4" => DataType::Int32,
        "i8" => DataType::Int64,
        "u1" => DataType::Uint8,
        "u2" => DataType::Uint16,
        "u4" => DataType::Uint32,
        "u8" => DataType::Uint64,
        "b1" => DataType::Bool,
        _ => return None,
    })
}

/// Parses `.npy` bytes; `path` is only used in messages.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Tensor> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err(path, "not a .npy file (bad magic)"));
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(err(path, format!("unsupported .npy version {v}"))),
    };
    let end =
        start.checked_add(header_len).filter(|&e| e <= bytes.len()).ok_or_else(|| err(path, "truncated header"))?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| err(path, "header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))?;
        let rest = &header[at + key.len() + 2..];
        Some(rest.trim_start().strip_prefix(':')?.trim_start())
    };
    let descr_text = field("descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next())
        .ok_or_else(|| err(path, "header has no descr"))?;
    if descr_text.starts_with('>') {
        return Err(err(path, format!("big-endian arrays ({descr_text}) are not supported")));
    }
    let dtype = dtype_of(descr_text).ok_or_else(|| err(path, format!("element type {descr_text} is not supported")))?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(err(path, "Fortran-order arrays are not supported"));
    }
    let shape_text = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| err(path, "header has no shape"))?;
    let mut shape = Vec::new();
    for part in shape_text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        shape.push(part.parse::<usize>().map_err(|_| err(path, format!("bad dimension `{part}` in shape")))?);
    }
    let numel = crate::tensor::numel(&shape).ok_or_else(|| err(path, format!("shape {shape:?} overflows")))?;
    let width = dtype.storage_bytes(1).unwrap_or(1) as usize;
    let data = &bytes[end..];
    if numel.checked_mul(width) != Some(data.len()) {
        return Err(err(
            path,
            format!(
                "shape {shape:?} of {dtype} needs {} bytes of data, the file has {}",
                numel.saturating_mul(width),
                data.len()
            ),
        ));
    }
    let storage = storage_from_le_bytes(dtype, data).ok_or_else(|| err(path, "bad data"))?;
    Tensor::new(shape, storage).map_err(|e| err(path, e.to_string()))
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    decode(&bytes, path)
}

/// Encodes a tensor as `.npy` (version 1.0).
pub fn encode(t: &Tensor) -> Result<Vec<u8>> {
    let d = descr(t.dtype()).ok_or_else(|| RuntimeError::Tensor {
        name: String::new(),
        reason: format!("{} tensors cannot be written as .npy", t.dtype()),
    })?;
    let shape = match t.shape() {
        [] => String::new(),
        [n] => format!("{n},"),
        s => s.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
    };
    let mut header = format!("{{'descr': '{d}', 'fortran_order': False, 'shape': ({shape}), }}");
    // Pad so that the data starts on a 64-byte boundary, ending in a newline.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.byte_size());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&t.to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hostile_headers() {
        let t = Tensor::from_vec(vec![2, 3], vec![1i64, 2, 3, 4, 5, 6]).unwrap();
        let bytes = encode(&t).unwrap();
        assert_eq!((10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64, 0);
        assert_eq!(decode(&bytes, Path::new("x.npy")).unwrap(), t);
        let s = Tensor::scalar(2.5f32);
        assert_eq!(decode(&encode(&s).unwrap(), Path::new("s.npy")).unwrap(), s);
        assert!(decode(b"\x93NUMPY\x01\x00\xff\xff", Path::new("bad.npy")).is_err());
        assert!(decode(&bytes[..bytes.len() - 1], Path::new("short.npy")).is_err());
        assert!(decode(b"garbage", Path::new("g.npy")).is_err());
    }
}
