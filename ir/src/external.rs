//! External data on the read side: resolving a tensor's `location` safely and mapping its bytes.
//!
//! A model file is untrusted input, and `location` is a path it chooses. It must resolve — after
//! canonicalisation, symlinks followed — to a regular file inside the model's own folder, and
//! `offset`/`length` must describe a range of that file exactly as long as the tensor needs.
//! Every refusal names the tensor and the file.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

use memmap2::Mmap;

use crate::error::IrError;

/// An external data file opened for reading.
pub struct ExternalFile {
    /// Canonical path.
    path: PathBuf,
    file: File,
    len: u64,
    map: OnceLock<Result<Mmap, String>>,
}

impl fmt::Debug for ExternalFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

impl ExternalFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn map(&self) -> Result<&Mmap, IrError> {
        let map = self.map.get_or_init(|| {
            // SAFETY: the file is opened read-only and mapped read-only; like every reader of
            // mmapped model weights (onnxruntime, tract), we rely on nobody truncating the
            // file while the model is loaded.
            unsafe { Mmap::map(&self.file) }.map_err(|e| e.to_string())
        });
        map.as_ref().map_err(|e| IrError::Io { path: self.path.clone(), source: std::io::Error::other(e.clone()) })
    }
}

/// A checked byte range of an external data file.
#[derive(Clone)]
pub struct ExternalSlice {
    file: Arc<ExternalFile>,
    offset: u64,
    len: u64,
}

impl fmt::Debug for ExternalSlice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}+{}", self.file.path.display(), self.offset, self.len)
    }
}

impl ExternalSlice {
    pub fn file(&self) -> &ExternalFile {
        &self.file
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, through the file's memory map (no copy).
    pub fn bytes(&self) -> Result<&[u8], IrError> {
        if self.len == 0 {
            return Ok(&[]);
        }
        let map = self.file.map()?;
        // The range was checked against the file length when the slice was made.
        let start = self.offset as usize;
        map.get(start..start + self.len as usize).ok_or_else(|| IrError::Io {
            path: self.file.path.clone(),
            source: std::io::Error::other("file shrank after it was opened"),
        })
    }

    /// Copies the range into `out` file-to-file (the kernel's copy_file_range where it can),
    /// without mapping or buffering the bytes in this process.
    pub fn copy_to(&self, out: &mut File) -> Result<(), IrError> {
        let io = |e| IrError::io(self.file.path.clone(), e);
        let mut src = self.file.file.try_clone().map_err(io)?;
        src.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        let copied = std::io::copy(&mut std::io::Read::take(&mut src, self.len), out).map_err(io)?;
        if copied != self.len {
            return Err(io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shrank after it was opened")));
        }
        Ok(())
    }

    /// Writes the bytes to any writer (used when the output is not a plain file).
    pub fn write_to(&self, out: &mut dyn Write) -> Result<(), IrError> {
        out.write_all(self.bytes()?).map_err(|e| IrError::io(self.file.path.clone(), e))
    }
}

/// Resolves `location` entries relative to one model folder, opening each file once.
pub(crate) struct ExternalResolver {
    base: PathBuf,
    files: HashMap<PathBuf, Arc<ExternalFile>>,
}

impl ExternalResolver {
    /// `model_dir` is the folder of the model file being loaded.
    pub(crate) fn new(model_dir: &Path) -> Result<ExternalResolver, IrError> {
        let base = model_dir.canonicalize().map_err(|e| IrError::io(model_dir, e))?;
        Ok(ExternalResolver { base, files: HashMap::new() })
    }

    /// Checks and opens the external data of `tensor`: `location`, optional `offset`/`length`
    /// strings, and the byte count the tensor's dtype and shape require.
    pub(crate) fn resolve(
        &mut self,
        tensor: &str,
        location: &str,
        offset: Option<&str>,
        length: Option<&str>,
        expected: u64,
    ) -> Result<ExternalSlice, IrError> {
        let fail =
            |reason: String| IrError::ExternalData { tensor: tensor.to_string(), file: location.to_string(), reason };
        let file = self.open(location).map_err(fail)?;
        let offset = parse_u64(offset, "offset").map_err(fail)?.unwrap_or(0);
        let length = parse_u64(length, "length").map_err(fail)?;
        let len = length.unwrap_or(expected);
        if len != expected {
            return Err(fail(format!("length is {len} bytes but the tensor's dtype and shape need {expected}")));
        }
        let end = offset.checked_add(len).ok_or_else(|| fail(format!("offset {offset} + length {len} overflows")))?;
        if end > file.len {
            return Err(fail(format!("range {offset}..{end} runs past the end of the file ({} bytes)", file.len)));
        }
        if end > usize::MAX as u64 {
            return Err(fail("range does not fit in this machine's address space".into()));
        }
        Ok(ExternalSlice { file, offset, len })
    }

    fn open(&mut self, location: &str) -> Result<Arc<ExternalFile>, String> {
        if location.is_empty() {
            return Err("empty `location`".into());
        }
        if location.contains('\0') {
            return Err("`location` contains a NUL byte".into());
        }
        let rel = Path::new(location);
        if rel.components().any(|c| matches!(c, Component::RootDir | Component::Prefix(_))) {
            return Err("absolute paths are refused: `location` must be relative to the model's folder".into());
        }
        let joined = self.base.join(rel);
        let canonical = joined.canonicalize().map_err(|e| format!("cannot open: {e}"))?;
        if !canonical.starts_with(&self.base) {
            return Err(format!(
                "resolves to {}, outside the model's folder {}",
                canonical.display(),
                self.base.display()
            ));
        }
        if let Some(f) = self.files.get(&canonical) {
            return Ok(f.clone());
        }
        let meta = std::fs::metadata(&canonical).map_err(|e| format!("cannot stat: {e}"))?;
        if !meta.is_file() {
            return Err("is not a regular file".into());
        }
        let file = File::open(&canonical).map_err(|e| format!("cannot open: {e}"))?;
        // Check again on the open handle: the path could have been swapped since `metadata`.
        let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
        if !meta.is_file() {
            return Err("is not a regular file".into());
        }
        let ext = Arc::new(ExternalFile { path: canonical.clone(), file, len: meta.len(), map: OnceLock::new() });
        self.files.insert(canonical, ext.clone());
        Ok(ext)
    }
}

/// Parses an optional decimal `offset`/`length` value strictly (digits only).
fn parse_u64(value: Option<&str>, key: &str) -> Result<Option<u64>, String> {
    match value {
        None => Ok(None),
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            v.parse().map(Some).map_err(|_| format!("`{key}` {v} is too large"))
        }
        Some(v) => Err(format!("`{key}` must be a non-negative decimal integer, got {v:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_strict() {
        assert_eq!(parse_u64(Some("12"), "offset"), Ok(Some(12)));
        assert!(parse_u64(Some("-1"), "offset").is_err());
        assert!(parse_u64(Some("1e3"), "offset").is_err());
        assert!(parse_u64(Some("99999999999999999999999"), "offset").is_err());
        assert!(parse_u64(Some(""), "offset").is_err());
    }

    #[test]
    fn escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("m");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(dir.path().join("secret.bin"), [0u8; 16]).unwrap();
        std::fs::write(inner.join("w.bin"), [0u8; 16]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.bin"), inner.join("link.bin")).unwrap();
        let mut r = ExternalResolver::new(&inner).unwrap();
        assert!(r.resolve("t", "w.bin", None, None, 16).is_ok());
        for (loc, why) in [
            ("../secret.bin", "outside"),
            ("/etc/passwd", "absolute"),
            ("link.bin", "outside"),
            ("missing.bin", "cannot open"),
            (".", "regular file"),
        ] {
            let err = r.resolve("t", loc, None, None, 16).unwrap_err().to_string();
            assert!(err.contains(why), "{loc}: {err}");
            assert!(err.contains("`t`"), "{err}");
        }
        let err = r.resolve("t", "w.bin", Some("8"), None, 16).unwrap_err().to_string();
        assert!(err.contains("past the end"), "{err}");
        let err = r.resolve("t", "w.bin", Some("18446744073709551615"), Some("16"), 16).unwrap_err().to_string();
        assert!(err.contains("overflows"), "{err}");
    }
}
