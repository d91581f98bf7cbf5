//! Saving: the model file and, when needed, one external data file beside it.
//!
//! External data goes to `<output file name>.data` in the output's folder, with a relative
//! location, so nothing is ever written outside that folder. Tensors that came from external
//! data are copied file-to-file; the model and the data file are written to temporary files
//! and renamed into place only when both are complete.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use protobuf::Message;
use tempfile::NamedTempFile;

use crate::attr::AttrValue;
use crate::error::IrError;
use crate::graph::Graph;
use crate::model::Model;
use crate::progress::{NoProgress, Progress};
use crate::tensor::{Encoding, Tensor, TensorData};

use super::encode::encode_model;
use super::tensor_codec::Placement;
use super::{write_proto, MAX_PROTO_BYTES};

/// Whether tensors go to an external data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExternalMode {
    /// External when the input model used external data or the weights exceed 2 GiB.
    #[default]
    Auto,
    /// Every tensor of at least `threshold` bytes goes external.
    Always,
    /// Everything inline (fails above protobuf's 2 GiB limit).
    Never,
}

/// Options of [`super::save`].
pub struct SaveOptions<'a> {
    pub external: ExternalMode,
    /// Smallest tensor (in bytes) moved to external data.
    pub threshold: u64,
    pub progress: &'a dyn Progress,
}

impl Default for SaveOptions<'_> {
    fn default() -> Self {
        SaveOptions { external: ExternalMode::Auto, threshold: 1024, progress: &NoProgress }
    }
}

/// What a save wrote.
#[derive(Clone, Debug, Default)]
pub struct SaveReport {
    pub model_bytes: u64,
    /// The external data file, when one was written.
    pub data_path: Option<PathBuf>,
    pub data_bytes: u64,
    /// Tensors copied file-to-file from the input's external data.
    pub tensors_copied: usize,
    /// Tensors written from memory or computed.
    pub tensors_written: usize,
}

/// Weights above this go external even when the input was inline (protobuf's limit, with room
/// for the graph itself).
const INLINE_LIMIT: u64 = MAX_PROTO_BYTES - (64 << 20);

/// Alignment of external tensors: page-aligned when large, so readers can map them directly.
fn alignment(len: u64) -> u64 {
    if len >= 1 << 20 {
        4096
    } else {
        64
    }
}

pub(super) fn save(model: &Model, path: &Path, options: &SaveOptions) -> Result<SaveReport, IrError> {
    let fail = |reason: String| IrError::Write { path: path.to_path_buf(), reason };
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .ok_or_else(|| fail("the output path must end in a file name".into()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(fail(format!("the folder {} does not exist", dir.display())));
    }
    if path.is_dir() {
        return Err(fail("it is a folder".into()));
    }

    let total = total_tensor_bytes(&model.graph);
    let use_external = match options.external {
        ExternalMode::Always => true,
        ExternalMode::Never => false,
        ExternalMode::Auto => model.had_external_data || total > INLINE_LIMIT,
    };
    // Move every large tensor out, not just the ones that were external or new.
    let move_all = options.external == ExternalMode::Always || total > INLINE_LIMIT;

    let data_name = format!("{file_name}.data");
    let data_path = dir.join(&data_name);
    let mut data_file = if use_external {
        if data_path.exists() && !data_path.is_file() {
            return Err(fail(format!("{} exists and is not a regular file", data_path.display())));
        }
        Some(NamedTempFile::new_in(&dir).map_err(|e| fail(format!("cannot create a temporary file: {e}")))?)
    } else {
        None
    };

    let progress = options.progress;
    progress.begin("writing", total);
    let mut report = SaveReport::default();
    let mut offset = 0u64;
    let proto = {
        let mut place = |t: &Tensor| -> Result<Placement, IrError> {
            let len = t.byte_len();
            let Some(tmp) = data_file.as_mut() else {
                progress.advance(len);
                return Ok(Placement::Inline);
            };
            let external = t.dtype() != crate::DataType::String
                && (t.is_external() || (len >= options.threshold && (move_all || t.encoding == Encoding::Fresh)));
            if !external {
                progress.advance(len);
                return Ok(Placement::Inline);
            }
            let file = tmp.as_file_mut();
            let aligned = offset.next_multiple_of(alignment(len));
            if aligned > offset {
                let pad = vec![0u8; (aligned - offset) as usize];
                file.write_all(&pad).map_err(|e| IrError::io(&data_path, e))?;
            }
            match t.data() {
                TensorData::External(slice) => {
                    slice.copy_to(file)?;
                    report.tensors_copied += 1;
                }
                _ => {
                    file.write_all(&t.bytes()?).map_err(|e| IrError::io(&data_path, e))?;
                    report.tensors_written += 1;
                }
            }
            offset = aligned + len;
            progress.advance(len);
            Ok(Placement::External { location: data_name.clone(), offset: aligned, length: len })
        };
        encode_model(model, &mut place)?
    };
    let size = proto.compute_size();
    if size > MAX_PROTO_BYTES {
        return Err(fail(format!(
            "the model would be {size} bytes, over protobuf's 2 GiB limit; save with external data"
        )));
    }
    let mut model_tmp =
        NamedTempFile::new_in(&dir).map_err(|e| fail(format!("cannot create a temporary file: {e}")))?;
    write_proto(&proto, model_tmp.as_file_mut(), path)?;
    report.model_bytes = size;

    if let Some(tmp) = data_file {
        set_readable(tmp.as_file(), &data_path)?;
        tmp.persist(&data_path).map_err(|e| IrError::io(&data_path, e.error))?;
        report.data_path = Some(data_path);
        report.data_bytes = offset;
    }
    set_readable(model_tmp.as_file(), path)?;
    model_tmp.persist(path).map_err(|e| IrError::io(path, e.error))?;
    progress.finish();
    Ok(report)
}

/// Temporary files are created private (0600); outputs get ordinary permissions.
fn set_readable(file: &File, path: &Path) -> Result<(), IrError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(|e| IrError::io(path, e))?;
    }
    let _ = (file, path);
    Ok(())
}

/// Bytes of every tensor in the graph, its subgraphs and its attributes.
fn total_tensor_bytes(graph: &Graph) -> u64 {
    let mut total: u64 = graph.initializers().map(Tensor::byte_len).sum();
    for (_, node) in graph.nodes() {
        for attr in node.attrs() {
            total += match &attr.value {
                AttrValue::Tensor(t) => t.byte_len(),
                AttrValue::Tensors(ts) => ts.iter().map(Tensor::byte_len).sum(),
                _ => 0,
            };
            total += attr.graphs().iter().map(total_tensor_bytes).sum::<u64>();
        }
    }
    total
}
