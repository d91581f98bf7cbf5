//! `TensorProto` ⇄ [`Tensor`].
//!
//! Decoding checks everything a hostile file could get wrong (unknown dtype, negative or
//! overflowing dims, data whose size does not match the shape, external ranges) and remembers
//! how the data was encoded, so an untouched tensor is encoded back exactly as it came.

use std::sync::Arc;

use super::proto as pb;
use pb::tensor_proto::DataLocation;
use protobuf::{EnumOrUnknown, MessageField};

use crate::dtype::DataType;
use crate::error::IrError;
use crate::external::ExternalResolver;
use crate::metadata::{Extras, Metadata};
use crate::tensor::{expected_bytes, numel_of, Encoding, Tensor, TensorData};

use super::presence::{bit, put_bytes, put_str, take_bytes, take_str};

/// Which typed repeated field holds a dtype's values.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Field {
    Float,
    Int32,
    Int64,
    Double,
    Uint64,
    String,
}

fn field_of(dtype: DataType) -> Field {
    use DataType::*;
    match dtype {
        Float | Complex64 => Field::Float,
        Double | Complex128 => Field::Double,
        Int64 => Field::Int64,
        Uint32 | Uint64 => Field::Uint64,
        DataType::String => Field::String,
        _ => Field::Int32,
    }
}

/// Bytes one `int32_data` entry stands for: the element width, or one packed byte.
fn int32_entry_bytes(dtype: DataType) -> usize {
    match dtype.bit_width() {
        Some(b) if b >= 8 => (b / 8) as usize,
        _ => 1,
    }
}

fn is_signed_int(dtype: DataType) -> bool {
    matches!(dtype, DataType::Int8 | DataType::Int16 | DataType::Int32)
}

pub(crate) fn metadata_from(entries: &[pb::StringStringEntryProto]) -> Metadata {
    Metadata(entries.iter().map(|e| (e.key().to_string(), e.value().to_string())).collect())
}

pub(crate) fn entry(key: &str, value: &str) -> pb::StringStringEntryProto {
    let mut e = pb::StringStringEntryProto::new();
    e.key = Some(key.to_string());
    e.value = Some(value.to_string());
    e
}

pub(crate) fn metadata_to(meta: &Metadata) -> Vec<pb::StringStringEntryProto> {
    meta.0.iter().map(|(k, v)| entry(k, v)).collect()
}

/// Decodes a tensor. `resolver` is `None` where external data is not allowed.
pub(crate) fn decode_tensor(
    mut proto: pb::TensorProto,
    resolver: Option<&mut ExternalResolver>,
) -> Result<Tensor, IrError> {
    let mut extras = Extras::from_special(&proto.special_fields);
    let name = take_str(proto.name.take(), &mut extras, bit::NAME);
    let doc_string = take_str(proto.doc_string.take(), &mut extras, bit::DOC_STRING);
    let label = if name.is_empty() { "<unnamed>".to_string() } else { name.clone() };
    let dtype = DataType::from_code(proto.data_type())
        .ok_or_else(|| IrError::tensor(&label, format!("has unknown data type code {}", proto.data_type())))?;
    let mut dims = Vec::with_capacity(proto.dims.len());
    for &d in &proto.dims {
        if d < 0 {
            return Err(IrError::tensor(&label, format!("has a negative dimension in shape {:?}", proto.dims)));
        }
        dims.push(d as u64);
    }
    let numel = numel_of(&dims).ok_or_else(|| {
        IrError::tensor(&label, format!("shape {:?} has more elements than fit in 64 bits", proto.dims))
    })?;
    let expected = expected_bytes(&label, dtype, &dims)?;

    let location = proto.data_location.map(|l| l.value());
    if location == Some(DataLocation::DEFAULT as i32) {
        extras.explicit |= bit::DATA_LOCATION;
    }
    let external = location == Some(DataLocation::EXTERNAL as i32);
    if !matches!(location, None | Some(0) | Some(1)) {
        return Err(IrError::tensor(&label, format!("has unknown data_location {}", location.unwrap_or(0))));
    }
    let raw = take_bytes(proto.raw_data.take(), &mut extras, bit::RAW_DATA);
    let has_typed = !(proto.float_data.is_empty()
        && proto.int32_data.is_empty()
        && proto.int64_data.is_empty()
        && proto.double_data.is_empty()
        && proto.uint64_data.is_empty()
        && proto.string_data.is_empty());
    let has_raw = !raw.is_empty();

    let (data, encoding) = if external {
        if has_raw || has_typed {
            return Err(IrError::tensor(&label, "is marked EXTERNAL but also carries inline data"));
        }
        if dtype == DataType::String {
            return Err(IrError::tensor(&label, "is a STRING tensor, which cannot use external data"));
        }
        let resolver =
            resolver.ok_or_else(|| IrError::tensor(&label, "uses external data where the format does not allow it"))?;
        let mut location = None;
        let (mut offset, mut length) = (None, None);
        let mut extra = Vec::new();
        for e in &proto.external_data {
            match e.key() {
                "location" => location = Some(e.value()),
                "offset" => offset = Some(e.value()),
                "length" => length = Some(e.value()),
                key => extra.push((key.to_string(), e.value().to_string())),
            }
        }
        let location = location.ok_or_else(|| IrError::ExternalData {
            tensor: label.clone(),
            file: String::new(),
            reason: "has no `location` entry".into(),
        })?;
        let slice = resolver.resolve(&label, location, offset, length, expected)?;
        (TensorData::External(slice), Encoding::External { extra })
    } else if !proto.external_data.is_empty() {
        return Err(IrError::tensor(&label, "has external_data entries but data_location is not EXTERNAL"));
    } else if has_raw {
        if has_typed {
            return Err(IrError::tensor(&label, "has both raw_data and typed data fields"));
        }
        if dtype == DataType::String {
            return Err(IrError::tensor(&label, "is a STRING tensor but stores raw_data"));
        }
        if raw.len() as u64 != expected {
            return Err(IrError::tensor(
                &label,
                format!(
                    "raw_data has {} bytes but {numel} {dtype} elements of shape {:?} need {expected}",
                    raw.len(),
                    proto.dims
                ),
            ));
        }
        (TensorData::Bytes(Arc::new(raw)), Encoding::Raw)
    } else if dtype == DataType::String {
        if proto.string_data.len() as u64 != numel {
            return Err(IrError::tensor(
                &label,
                format!("has {} strings for {numel} elements", proto.string_data.len()),
            ));
        }
        (TensorData::Strings(Arc::new(std::mem::take(&mut proto.string_data))), Encoding::Typed)
    } else {
        decode_typed(&label, &mut proto, dtype, numel, expected)?
    };

    let mut tensor = Tensor::with_data(name, dtype, dims, data);
    tensor.doc_string = doc_string;
    tensor.metadata = metadata_from(&proto.metadata_props);
    tensor.encoding = encoding;
    tensor.segment = proto.segment.as_ref().map(|s| (s.begin(), s.end()));
    tensor.extras = extras;
    Ok(tensor)
}

/// Decodes the typed field matching `dtype` into raw bytes. When re-encoding those bytes
/// would not reproduce the field exactly (a non-canonical writer), the field is kept verbatim.
fn decode_typed(
    label: &str,
    proto: &mut pb::TensorProto,
    dtype: DataType,
    numel: u64,
    expected: u64,
) -> Result<(TensorData, Encoding), IrError> {
    let field = field_of(dtype);
    let others_set = match field {
        Field::Float => {
            !proto.int32_data.is_empty()
                || !proto.int64_data.is_empty()
                || !proto.double_data.is_empty()
                || !proto.uint64_data.is_empty()
        }
        Field::Int32 => {
            !proto.float_data.is_empty()
                || !proto.int64_data.is_empty()
                || !proto.double_data.is_empty()
                || !proto.uint64_data.is_empty()
        }
        Field::Int64 => {
            !proto.float_data.is_empty()
                || !proto.int32_data.is_empty()
                || !proto.double_data.is_empty()
                || !proto.uint64_data.is_empty()
        }
        Field::Double => {
            !proto.float_data.is_empty()
                || !proto.int32_data.is_empty()
                || !proto.int64_data.is_empty()
                || !proto.uint64_data.is_empty()
        }
        Field::Uint64 => {
            !proto.float_data.is_empty()
                || !proto.int32_data.is_empty()
                || !proto.int64_data.is_empty()
                || !proto.double_data.is_empty()
        }
        Field::String => false,
    } || !proto.string_data.is_empty();
    if others_set {
        return Err(IrError::tensor(label, format!("stores its {dtype} data in a field that does not match the type")));
    }
    let mut bytes = Vec::with_capacity(expected.min(1 << 30) as usize);
    let count = match field {
        Field::Float => {
            bytes.extend(proto.float_data.iter().flat_map(|v| v.to_le_bytes()));
            proto.float_data.len()
        }
        Field::Double => {
            bytes.extend(proto.double_data.iter().flat_map(|v| v.to_le_bytes()));
            proto.double_data.len()
        }
        Field::Int64 => {
            bytes.extend(proto.int64_data.iter().flat_map(|v| v.to_le_bytes()));
            proto.int64_data.len()
        }
        Field::Uint64 => {
            let width = if dtype == DataType::Uint32 { 4 } else { 8 };
            bytes.extend(proto.uint64_data.iter().flat_map(|v| v.to_le_bytes().into_iter().take(width)));
            proto.uint64_data.len()
        }
        Field::Int32 => {
            let width = int32_entry_bytes(dtype);
            bytes.extend(proto.int32_data.iter().flat_map(|v| v.to_le_bytes().into_iter().take(width)));
            proto.int32_data.len()
        }
        Field::String => unreachable!("strings are decoded by the caller"),
    };
    if bytes.len() as u64 != expected {
        if numel > 0 && count == 0 {
            return Err(IrError::tensor(label, format!("has {numel} elements but no data")));
        }
        return Err(IrError::tensor(
            label,
            format!("has {count} typed values, which do not fill its {numel} {dtype} elements ({expected} bytes)"),
        ));
    }
    let mut canonical = pb::TensorProto::new();
    encode_typed(&mut canonical, dtype, &bytes);
    let exact = canonical.float_data == proto.float_data
        && canonical.int32_data == proto.int32_data
        && canonical.int64_data == proto.int64_data
        && canonical.double_data.iter().map(|d| d.to_bits()).eq(proto.double_data.iter().map(|d| d.to_bits()))
        && canonical.uint64_data == proto.uint64_data;
    // f32 NaN payloads compare unequal with ==; compare bits for the float field.
    let exact = exact
        || (field == Field::Float
            && canonical.float_data.iter().map(|f| f.to_bits()).eq(proto.float_data.iter().map(|f| f.to_bits())));
    let encoding = if exact { Encoding::Typed } else { Encoding::Verbatim(Box::new(typed_fields_of(proto))) };
    Ok((TensorData::Bytes(Arc::new(bytes)), encoding))
}

/// Only the typed data fields of `proto`.
fn typed_fields_of(proto: &mut pb::TensorProto) -> pb::TensorProto {
    let mut p = pb::TensorProto::new();
    p.float_data = std::mem::take(&mut proto.float_data);
    p.int32_data = std::mem::take(&mut proto.int32_data);
    p.int64_data = std::mem::take(&mut proto.int64_data);
    p.double_data = std::mem::take(&mut proto.double_data);
    p.uint64_data = std::mem::take(&mut proto.uint64_data);
    p
}

/// Writes `bytes` (raw layout) into the typed field for `dtype`.
fn encode_typed(proto: &mut pb::TensorProto, dtype: DataType, bytes: &[u8]) {
    match field_of(dtype) {
        Field::Float => {
            proto.float_data = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        Field::Double => {
            proto.double_data =
                bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
        }
        Field::Int64 => {
            proto.int64_data =
                bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
        }
        Field::Uint64 => {
            let width = if dtype == DataType::Uint32 { 4 } else { 8 };
            proto.uint64_data = bytes
                .chunks_exact(width)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b[..width].copy_from_slice(c);
                    u64::from_le_bytes(b)
                })
                .collect()
        }
        Field::Int32 => {
            let width = int32_entry_bytes(dtype);
            let signed = is_signed_int(dtype);
            proto.int32_data = bytes
                .chunks_exact(width)
                .map(|c| match (width, signed) {
                    (1, true) => c[0] as i8 as i32,
                    (1, false) => c[0] as i32,
                    (2, true) => i16::from_le_bytes([c[0], c[1]]) as i32,
                    (2, false) => u16::from_le_bytes([c[0], c[1]]) as i32,
                    _ => i32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                })
                .collect()
        }
        Field::String => {}
    }
}

/// Where the encoder puts a tensor's bytes.
pub(crate) enum Placement {
    /// Inline, in the form the tensor came in (or raw_data when fresh).
    Inline,
    /// External at `location`, `offset`, `length` (already written by the caller).
    External { location: String, offset: u64, length: u64 },
}

/// Encodes a tensor. For [`Placement::Inline`] the bytes are materialised (lazy tensors run).
pub(crate) fn encode_tensor(tensor: &Tensor, placement: Placement) -> Result<pb::TensorProto, IrError> {
    let mut proto = pb::TensorProto::new();
    proto.dims = tensor.dims().iter().map(|&d| d as i64).collect();
    proto.data_type = Some(tensor.dtype().code());
    proto.name = put_str(&tensor.name, &tensor.extras, bit::NAME);
    proto.doc_string = put_str(&tensor.doc_string, &tensor.extras, bit::DOC_STRING);
    if tensor.extras.explicit & bit::DATA_LOCATION != 0 {
        proto.data_location = Some(EnumOrUnknown::new(DataLocation::DEFAULT));
    }
    // `raw_data: ""` present on an empty tensor.
    proto.raw_data = put_bytes(&[], &tensor.extras, bit::RAW_DATA);
    proto.metadata_props = metadata_to(&tensor.metadata);
    if let Some((begin, end)) = tensor.segment {
        let mut seg = pb::tensor_proto::Segment::new();
        seg.begin = Some(begin);
        seg.end = Some(end);
        proto.segment = MessageField::some(seg);
    }
    proto.special_fields = tensor.extras.to_special();
    match placement {
        Placement::External { location, offset, length } => {
            proto.raw_data = None;
            proto.external_data.push(entry("location", &location));
            proto.external_data.push(entry("offset", &offset.to_string()));
            proto.external_data.push(entry("length", &length.to_string()));
            if let Encoding::External { extra } = &tensor.encoding {
                for (k, v) in extra {
                    proto.external_data.push(entry(k, v));
                }
            }
            proto.data_location = Some(EnumOrUnknown::new(DataLocation::EXTERNAL));
        }
        Placement::Inline => match (&tensor.encoding, tensor.data()) {
            (_, TensorData::Strings(s)) => proto.string_data = s.as_ref().clone(),
            (Encoding::Verbatim(fields), _) => {
                proto.float_data = fields.float_data.clone();
                proto.int32_data = fields.int32_data.clone();
                proto.int64_data = fields.int64_data.clone();
                proto.double_data = fields.double_data.clone();
                proto.uint64_data = fields.uint64_data.clone();
            }
            (Encoding::Typed, _) => encode_typed(&mut proto, tensor.dtype(), &tensor.bytes()?),
            (Encoding::Raw | Encoding::Fresh | Encoding::External { .. }, _) => {
                proto.raw_data = Some(tensor.bytes()?.into_owned())
            }
        },
    }
    Ok(proto)
}
