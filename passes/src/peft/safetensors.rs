//! The safetensors format, read and written without the `safetensors` crate.
//!
//! Layout: an 8-byte little-endian header length `N`, `N` bytes of JSON
//! (`{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, …}`,
//! padded with spaces), then the data section; offsets are relative to its start.
//!
//! Reading is strict, like the reference implementation and stricter where it is silent: the
//! header length is bounded ([`MAX_HEADER_BYTES`]) and must fit in the file, the header is one
//! JSON object starting with `{`, tensor names are unique, every tensor's byte range equals
//! `numel × element size` (checked arithmetic), the ranges tile the data section exactly (no
//! overlap, no gap, nothing left over), and `__metadata__` maps strings to strings. Errors name
//! the file and the tensor.
//!
//! Writing reproduces the Python library byte for byte: tensors ordered by dtype (largest
//! element type first, in the library's enum order) and then by name, compact JSON with
//! `__metadata__` first, the header padded with spaces to a multiple of 8.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use thiserror::Error;

/// The largest header accepted, as in the reference implementation (100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// An invalid or unreadable safetensors file; `origin` is the file (or `<memory>`).
#[derive(Debug, Error)]
#[error("{origin}: {reason}")]
pub struct SafetensorsError {
    pub origin: String,
    pub reason: String,
}

impl SafetensorsError {
    fn new(origin: &str, reason: impl Into<String>) -> SafetensorsError {
        SafetensorsError { origin: origin.to_string(), reason: reason.into() }
    }
}

/// Element types of the format. The declaration order is the reference implementation's
/// (it decides the order of tensors in a written file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Dtype {
    /// The name used in headers (`F32`, `BF16`, `F8_E4M3`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// The dtype of a header name; `None` for names this reader does not support.
    pub fn from_name(name: &str) -> Option<Dtype> {
        const ALL: [Dtype; 15] = [
            Dtype::Bool,
            Dtype::U8,
            Dtype::I8,
            Dtype::F8E5M2,
            Dtype::F8E4M3,
            Dtype::I16,
            Dtype::U16,
            Dtype::F16,
            Dtype::BF16,
            Dtype::I32,
            Dtype::U32,
            Dtype::F32,
            Dtype::F64,
            Dtype::I64,
            Dtype::U64,
        ];
        ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of a parsed file: where its bytes are in the data section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Byte range relative to the start of the data section.
    pub range: Range<usize>,
}

/// A parsed safetensors file held in memory.
#[derive(Clone, Debug)]
pub struct SafeTensors {
    origin: String,
    /// Free-form `__metadata__` (PEFT writes `{"format": "pt"}`).
    pub metadata: BTreeMap<String, String>,
    /// Tensors in data order.
    tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

/// A borrowed view of one tensor.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [u64],
    pub data: &'a [u8],
}

impl TensorView<'_> {
    /// The values widened to f32 (F32, F16, BF16 and F64 tensors).
    pub fn to_f32(&self) -> Result<Vec<f32>, String> {
        let d = self.data;
        Ok(match self.dtype {
            Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
            other => {
                return Err(format!("tensor `{}` is {other}, expected a float tensor (F32, F16, BF16, F64)", self.name))
            }
        })
    }
}

/// One header entry as written in the JSON (unknown fields ignored, as the reference does).
#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// The header's entries in file order, duplicates kept so they can be reported.
struct RawHeader(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawHeader, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push((k, v));
                }
                Ok(RawHeader(entries))
            }
        }
        d.deserialize_map(V)
    }
}

impl SafeTensors {
    /// Reads and validates a file.
    pub fn read(path: &Path) -> Result<SafeTensors, SafetensorsError> {
        let origin = path.display().to_string();
        let mut file =
            std::fs::File::open(path).map_err(|e| SafetensorsError::new(&origin, format!("cannot open: {e}")))?;
        let len = file.metadata().map_err(|e| SafetensorsError::new(&origin, format!("cannot stat: {e}")))?.len();
        // Check the header length against the file size before reading everything.
        let mut prefix = [0u8; 8];
        if len < 8 {
            return Err(SafetensorsError::new(
                &origin,
                format!("truncated: {len} bytes, shorter than the 8-byte header length"),
            ));
        }
        file.read_exact(&mut prefix).map_err(|e| SafetensorsError::new(&origin, format!("cannot read: {e}")))?;
        check_header_len(&origin, u64::from_le_bytes(prefix), len)?;
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        bytes.extend_from_slice(&prefix);
        file.read_to_end(&mut bytes).map_err(|e| SafetensorsError::new(&origin, format!("cannot read: {e}")))?;
        SafeTensors::parse(bytes, &origin)
    }

    /// Validates the bytes of a whole file; `origin` names it in errors.
    pub fn parse(bytes: Vec<u8>, origin: &str) -> Result<SafeTensors, SafetensorsError> {
        let err = |reason: String| SafetensorsError::new(origin, reason);
        if bytes.len() < 8 {
            return Err(err(format!("truncated: {} bytes, shorter than the 8-byte header length", bytes.len())));
        }
        let n = u64::from_le_bytes(bytes[..8].try_into().map_err(|_| err("unreadable header length".into()))?);
        check_header_len(origin, n, bytes.len() as u64)?;
        let data_start = 8 + n as usize;
        let header = &bytes[8..data_start];
        if header.first() != Some(&b'{') {
            return Err(err("the header does not start with `{`".into()));
        }
        let text = std::str::from_utf8(header).map_err(|e| err(format!("the header is not UTF-8: {e}")))?;
        let raw: RawHeader =
            serde_json::from_str(text).map_err(|e| err(format!("the header is not valid JSON: {e}")))?;

        let data_len = bytes.len() - data_start;
        let mut metadata = BTreeMap::new();
        let mut seen_metadata = false;
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(raw.0.len());
        let mut names = std::collections::HashSet::new();
        for (name, value) in raw.0 {
            if name == "__metadata__" {
                if seen_metadata {
                    return Err(err("`__metadata__` appears twice in the header".into()));
                }
                seen_metadata = true;
                metadata = serde_json::from_value::<BTreeMap<String, String>>(value)
                    .map_err(|e| err(format!("`__metadata__` must map strings to strings: {e}")))?;
                continue;
            }
            if !names.insert(name.clone()) {
                return Err(err(format!("tensor `{name}` appears twice in the header")));
            }
            let t_err = |reason: String| err(format!("tensor `{name}`: {reason}"));
            let entry: RawEntry = serde_json::from_value(value)
                .map_err(|e| t_err(format!("bad header entry (expected dtype, shape, data_offsets): {e}")))?;
            let dtype =
                Dtype::from_name(&entry.dtype).ok_or_else(|| t_err(format!("unsupported dtype `{}`", entry.dtype)))?;
            let (begin, end) = entry.data_offsets;
            if begin > end {
                return Err(t_err(format!("data_offsets [{begin}, {end}] run backwards")));
            }
            if end > data_len as u64 {
                return Err(t_err(format!(
                    "data_offsets [{begin}, {end}] are out of bounds: the data section has {data_len} bytes"
                )));
            }
            let numel = entry
                .shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| t_err(format!("shape {:?} overflows", entry.shape)))?;
            let size =
                numel.checked_mul(dtype.size()).ok_or_else(|| t_err(format!("shape {:?} overflows", entry.shape)))?;
            if size != end - begin {
                return Err(t_err(format!(
                    "shape {:?} of {dtype} needs {size} bytes, but data_offsets [{begin}, {end}] hold {}",
                    entry.shape,
                    end - begin
                )));
            }
            tensors.push(TensorInfo { name, dtype, shape: entry.shape, range: begin as usize..end as usize });
        }

        // The ranges must tile the data section: sorted by offset, each starts where the last
        // ended, and the last ends at the end of the file.
        tensors.sort_by_key(|t| (t.range.start, t.range.end));
        let mut at = 0usize;
        let mut prev: Option<&str> = None;
        for t in &tensors {
            if t.range.start < at {
                return Err(err(format!(
                    "tensor `{}` (data_offsets [{}, {}]) overlaps tensor `{}`, which ends at {at}",
                    t.name,
                    t.range.start,
                    t.range.end,
                    prev.unwrap_or("?")
                )));
            }
            if t.range.start > at {
                return Err(err(format!(
                    "tensor `{}` starts at {}, leaving bytes {at}..{} of the data section unused",
                    t.name, t.range.start, t.range.start
                )));
            }
            at = t.range.end;
            prev = Some(&t.name);
        }
        if at != data_len {
            return Err(err(format!(
                "the data section has {data_len} bytes but the tensors cover only {at} ({} trailing bytes)",
                data_len - at
            )));
        }
        Ok(SafeTensors { origin: origin.to_string(), metadata, tensors, bytes, data_start })
    }

    /// Where the file came from (for error messages).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Tensors in data order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Tensor names in data order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|t| t.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        let t = self.tensors.iter().find(|t| t.name == name)?;
        let s = self.data_start;
        Some(TensorView {
            name: &t.name,
            dtype: t.dtype,
            shape: &t.shape,
            data: &self.bytes[s + t.range.start..s + t.range.end],
        })
    }
}

fn check_header_len(origin: &str, n: u64, file_len: u64) -> Result<(), SafetensorsError> {
    if n > MAX_HEADER_BYTES {
        return Err(SafetensorsError::new(
            origin,
            format!("header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes"),
        ));
    }
    if n > file_len - 8 {
        return Err(SafetensorsError::new(
            origin,
            format!("truncated: the header claims {n} bytes but only {} follow the length", file_len - 8),
        ));
    }
    if n < 2 {
        return Err(SafetensorsError::new(origin, format!("header length {n} is too short for a JSON object")));
    }
    Ok(())
}

/// A tensor to write.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Little-endian element bytes.
    pub data: Vec<u8>,
}

impl OwnedTensor {
    /// An F32 tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<u64>, values: &[f32]) -> OwnedTensor {
        OwnedTensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Serialises `tensors` as the Python library does (`safetensors.torch.save`): dtype order,
/// then name order; `metadata` becomes `__metadata__` (omitted when `None`).
pub fn serialize(
    tensors: &[OwnedTensor],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>, SafetensorsError> {
    let origin = "<serialize>";
    let mut order: Vec<&OwnedTensor> = tensors.iter().collect();
    order.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
    for w in order.windows(2) {
        if w[0].name == w[1].name {
            return Err(SafetensorsError::new(origin, format!("tensor `{}` given twice", w[0].name)));
        }
    }
    let mut header = String::from("{");
    let mut first = true;
    if let Some(m) = metadata {
        header += "\"__metadata__\":";
        header += &serde_json::to_string(m).map_err(|e| SafetensorsError::new(origin, e.to_string()))?;
        first = false;
    }
    let mut offset = 0u64;
    for t in &order {
        if t.name == "__metadata__" {
            return Err(SafetensorsError::new(origin, "a tensor cannot be called `__metadata__`"));
        }
        let numel = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let want = numel.and_then(|n| n.checked_mul(t.dtype.size()));
        if want != Some(t.data.len() as u64) {
            return Err(SafetensorsError::new(
                origin,
                format!("tensor `{}`: {} bytes of data for shape {:?} of {}", t.name, t.data.len(), t.shape, t.dtype),
            ));
        }
        let end = offset + t.data.len() as u64;
        if !first {
            header.push(',');
        }
        first = false;
        let name = serde_json::to_string(&t.name).map_err(|e| SafetensorsError::new(origin, e.to_string()))?;
        let shape = t.shape.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        header +=
            &format!("{name}:{{\"dtype\":\"{}\",\"shape\":[{shape}],\"data_offsets\":[{offset},{end}]}}", t.dtype);
        offset = end;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset as usize);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for t in &order {
        out.extend_from_slice(&t.data);
    }
    Ok(out)
}

/// `__metadata__` as PEFT writes it: `{"format": "pt"}`.
pub fn pt_metadata() -> BTreeMap<String, String> {
    [("format".to_string(), "pt".to_string())].into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_names_round_trip() {
        for name in [
            "BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64",
            "U64",
        ] {
            assert_eq!(Dtype::from_name(name).unwrap().name(), name);
        }
        assert_eq!(Dtype::from_name("F4"), None);
    }

    #[test]
    fn serialize_orders_like_the_python_library() {
        // Same tensors as `safetensors.torch.save({...}, metadata={"format": "pt"})`.
        let t = |name: &str, dtype, n: u64| OwnedTensor {
            name: name.into(),
            dtype,
            shape: vec![n],
            data: vec![0; (n * Dtype::size(dtype)) as usize],
        };
        let bytes = serialize(
            &[
                t("b", Dtype::F16, 3),
                t("a", Dtype::BF16, 1),
                t("c", Dtype::F32, 2),
                t("i", Dtype::I64, 2),
                t("e", Dtype::F32, 0),
            ],
            Some(&pt_metadata()),
        )
        .unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        assert_eq!(
            header.trim_end(),
            r#"{"__metadata__":{"format":"pt"},"i":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"c":{"dtype":"F32","shape":[2],"data_offsets":[16,24]},"e":{"dtype":"F32","shape":[0],"data_offsets":[24,24]},"a":{"dtype":"BF16","shape":[1],"data_offsets":[24,26]},"b":{"dtype":"F16","shape":[3],"data_offsets":[26,32]}}"#
        );
    }
}
