//! Parquet tables (polars), written atomically.

use hooklens::error::{Error, Result};
use polars::prelude::{DataFrame, ParquetReader, ParquetWriter, SerReader};
use std::path::Path;

/// Writes `df` to `path` as parquet (zstd), through a temporary file.
pub fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<()> {
    hooklens::atomic::atomic_write_with(path, |tmp| {
        let f = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        ParquetWriter::new(f)
            .finish(df)
            .map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))?;
        Ok(())
    })
}

/// Reads a parquet file back (used by tests and resumable sweeps).
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    ParquetReader::new(f)
        .finish()
        .map_err(|e| Error::CorruptFile {
            path: path.into(),
            reason: e.to_string(),
        })
}
