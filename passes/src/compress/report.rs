//! Writing a pass's JSON report so that a reader never sees half a file: the text goes to a
//! temporary file next to the target, which is then renamed into place.

use std::path::Path;

use serde::Serialize;

use crate::pass::PassError;

/// Writes `report` as pretty JSON to `path` (via `path.json.tmp` and a rename).
pub fn write_json<T: Serialize>(pass: &str, path: &Path, report: &T) -> Result<(), PassError> {
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| PassError::failed(pass, format!("cannot serialize the report: {e}")))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n")
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| PassError::failed(pass, format!("cannot write the report {}: {e}", path.display())))
}
