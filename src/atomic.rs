//! Atomic file writes: a temporary file next to the target, renamed into place, so readers
//! never see a half-written file.

use crate::error::{Error, Result};
use std::path::Path;

/// Writes `path` by calling `write` on a temporary path next to it (a file, or a folder that
/// `write` creates), then renaming it into place.
pub fn atomic_write_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result =
        write(&tmp).and_then(|_| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = match tmp.is_dir() {
            true => std::fs::remove_dir_all(&tmp),
            false => std::fs::remove_file(&tmp),
        };
    }
    result
}

/// Writes `bytes` to `path` atomically.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::io(tmp, e))
    })
}
