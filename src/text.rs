//! Text files as users write them: a leading byte-order mark (which Windows editors write) is
//! dropped rather than read as text or tokens, and every file it was dropped from is listed,
//! so that a run's manifest can say so.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const BOM: &[u8] = b"\xEF\xBB\xBF";

static BOM_STRIPPED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The bytes of `path`, without a leading UTF-8 byte-order mark.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.starts_with(BOM) {
        bytes.drain(..BOM.len());
        if let Ok(mut list) = BOM_STRIPPED.lock() {
            if !list.iter().any(|p| p == path) {
                list.push(path.to_path_buf());
            }
        }
    }
    Ok(bytes)
}

/// The text of `path` (UTF-8), without a leading byte-order mark.
pub fn read_text(path: &Path) -> Result<String> {
    String::from_utf8(read_bytes(path)?).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        Error::Invalid(format!(
            "{} line {line} is not UTF-8 text (byte {at}); save it as UTF-8",
            path.display()
        ))
    })
}

/// The files read so far whose leading byte-order mark was dropped.
pub fn bom_stripped() -> Vec<PathBuf> {
    BOM_STRIPPED.lock().map(|l| l.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_bom_is_dropped_and_noted() {
        let dir = tempfile::tempdir().unwrap();
        let (with, without) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
        std::fs::write(&with, b"\xEF\xBB\xBFhello\n").unwrap();
        std::fs::write(&without, b"hello\n").unwrap();
        assert_eq!(read_text(&with).unwrap(), "hello\n");
        assert_eq!(read_text(&without).unwrap(), "hello\n");
        assert!(bom_stripped().contains(&with));
        assert!(!bom_stripped().contains(&without));
        std::fs::write(&without, b"ok\n\xff\n").unwrap();
        let e = read_text(&without).unwrap_err().to_string();
        assert!(e.contains("line 2 is not UTF-8"), "{e}");
    }
}
