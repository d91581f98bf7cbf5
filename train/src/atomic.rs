//! Replacing a file atomically: write a temporary file beside it, sync, rename over it.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::error::{Result, TrainError};

/// Writes `path` through `write` on a temporary file in the same folder, which is synced,
/// made readable like an ordinary file (`0644` on Unix; temporary files start as `0600`) and
/// renamed over `path`. A reader sees the old file or the new one, never half of it.
pub(crate) fn replace_file(path: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| TrainError::io(dir, e))?;
    let io = |e| TrainError::io(path, e);
    write(tmp.as_file_mut()).map_err(io)?;
    tmp.as_file_mut().flush().map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    }
    tmp.persist(path).map_err(|e| TrainError::io(path, e.error))?;
    Ok(())
}
