//! ONNX files in and out: the only module that touches protobuf.
//!
//! Loading maps the file, parses it with protobuf's nesting limit, and decodes it into the IR;
//! external tensors are opened and range-checked but their bytes are not read. Saving writes
//! the model (and its external data file, when it has one) to temporary files in the output's
//! folder and renames them into place, so a failure never leaves a partial output.
//!
//! [`proto`] holds the raw ONNX messages generated from ONNX 1.22's `onnx.proto` (proto2, so
//! field presence is kept); it is public for tests and tools that need an independent view of
//! a file, and nothing else in adaptc should use it.

mod decode;
mod encode;
pub(crate) mod presence;
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod proto;
mod tensor_codec;
mod writer;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use self::proto as pb;
use protobuf::{CodedInputStream, Message};

use crate::error::IrError;
use crate::external::ExternalResolver;
use crate::model::Model;
use crate::progress::{NoProgress, Progress};

pub use writer::{ExternalMode, SaveOptions, SaveReport};

/// Protobuf caps a message at 2 GiB; larger inputs are refused before parsing.
pub const MAX_PROTO_BYTES: u64 = (2u64 << 30) - 1;

/// Maximum nesting of protobuf messages (a subgraph costs about four levels).
pub const MAX_NESTING: u32 = 100;

/// Loads a model file; external data is resolved relative to the file's folder.
pub fn load(path: &Path) -> Result<Model, IrError> {
    load_with(path, &NoProgress)
}

/// [`load`] with a progress reporter (bytes of the model file).
pub fn load_with(path: &Path, progress: &dyn Progress) -> Result<Model, IrError> {
    let file = File::open(path).map_err(|e| IrError::io(path, e))?;
    let meta = file.metadata().map_err(|e| IrError::io(path, e))?;
    if !meta.is_file() {
        return Err(IrError::Decode { path: path.into(), reason: "not a regular file".into() });
    }
    if meta.len() > MAX_PROTO_BYTES {
        return Err(IrError::Limit {
            path: path.into(),
            reason: format!(
                "the file is {} bytes, over protobuf's 2 GiB limit (large models keep weights in external data)",
                meta.len()
            ),
        });
    }
    progress.begin("loading", meta.len());
    // Reading (not mapping) keeps the file's pages out of our RSS once parsed.
    let bytes = std::fs::read(path).map_err(|e| IrError::io(path, e))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let resolver = ExternalResolver::new(&dir)?;
    let model = decode_with(&bytes, Some(resolver)).map_err(|e| match e {
        IrError::Decode { reason, .. } => IrError::Decode { path: path.into(), reason },
        IrError::Limit { reason, .. } => IrError::Limit { path: path.into(), reason },
        other => other,
    })?;
    progress.advance(meta.len());
    progress.finish();
    Ok(model)
}

/// Decodes a model from bytes. External data is refused (there is no folder to resolve it in).
pub fn decode(bytes: &[u8]) -> Result<Model, IrError> {
    decode_with(bytes, None)
}

fn decode_with(bytes: &[u8], resolver: Option<ExternalResolver>) -> Result<Model, IrError> {
    let proto = parse_model(bytes)?;
    decode::Decoder::new(resolver).model(proto)
}

/// Decodes one serialized `TensorProto` (the `input_0.pb` files of ONNX's test data sets),
/// with the same checks as an initializer. External data is refused.
pub fn decode_tensor(bytes: &[u8]) -> Result<crate::tensor::Tensor, IrError> {
    let mut input = CodedInputStream::from_bytes(bytes);
    input.set_recursion_limit(MAX_NESTING);
    let mut proto = pb::TensorProto::new();
    proto
        .merge_from(&mut input)
        .and_then(|()| input.check_eof())
        .map_err(|e| IrError::Decode { path: Default::default(), reason: e.to_string() })?;
    tensor_codec::decode_tensor(proto, None)
}

/// Parses a `ModelProto` with the nesting limit.
fn parse_model(bytes: &[u8]) -> Result<pb::ModelProto, IrError> {
    if bytes.is_empty() {
        return Err(IrError::Decode { path: Default::default(), reason: "the file is empty".into() });
    }
    let mut input = CodedInputStream::from_bytes(bytes);
    input.set_recursion_limit(MAX_NESTING);
    let mut proto = pb::ModelProto::new();
    proto
        .merge_from(&mut input)
        .and_then(|()| input.check_eof())
        .map_err(|e| IrError::Decode { path: Default::default(), reason: e.to_string() })?;
    if proto.graph.is_none() {
        return Err(IrError::Decode { path: Default::default(), reason: "the model has no graph".into() });
    }
    Ok(proto)
}

/// Encodes a model into one in-memory protobuf, all tensors inline (external ones are read).
pub fn encode(model: &Model) -> Result<Vec<u8>, IrError> {
    let proto = encode::encode_model(model, &mut |_| Ok(tensor_codec::Placement::Inline))?;
    let size = proto.compute_size();
    if size > MAX_PROTO_BYTES {
        return Err(IrError::Write {
            path: Default::default(),
            reason: format!(
                "the model is {size} bytes inline, over protobuf's 2 GiB limit; save it with external data"
            ),
        });
    }
    proto.write_to_bytes().map_err(|e| IrError::Write { path: Default::default(), reason: e.to_string() })
}

/// Saves a model to `path` (and `path.data` when external data is used): see [`SaveOptions`].
pub fn save(model: &Model, path: &Path, options: &SaveOptions) -> Result<SaveReport, IrError> {
    writer::save(model, path, options)
}

/// Writes a protobuf message to a file through a buffer.
fn write_proto(proto: &pb::ModelProto, file: &mut File, path: &Path) -> Result<(), IrError> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    proto.write_to_writer(&mut out).map_err(|e| IrError::Write { path: path.into(), reason: e.to_string() })?;
    out.flush().map_err(|e| IrError::io(path, e))
}
