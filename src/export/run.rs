//! Run folders `outputs/<experiment>/<run>/` with a `manifest.json`, never overwritten silently.

use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// One run's output folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
    pub experiment: String,
}

impl RunDir {
    /// Creates `base/experiment/run` (run defaults to a UTC timestamp). An existing folder is an
    /// error unless `resume` is set, so that an earlier run is never overwritten by accident.
    pub fn create(base: &Path, experiment: &str, run: Option<&str>, resume: bool) -> Result<Self> {
        let run = run.map_or_else(timestamp, str::to_string);
        let path = base.join(experiment).join(&run);
        if path.exists() && !resume {
            return Err(Error::Invalid(format!(
                "{} already exists; pass --resume to continue it or --run NAME for a new run",
                path.display()
            )));
        }
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            path,
            experiment: experiment.into(),
        })
    }

    /// Path of `file` inside the run folder.
    pub fn file(&self, file: &str) -> PathBuf {
        self.path.join(file)
    }

    /// Writes `manifest.json`: the experiment, its parameters, the files it wrote and the
    /// columns of each table, so a notebook can find everything from the folder alone.
    pub fn write_manifest(&self, params: Value, files: Value) -> Result<()> {
        let m = json!({
            "experiment": self.experiment,
            "created_utc": timestamp(),
            "hooklens_version": env!("CARGO_PKG_VERSION"),
            "params": params,
            "files": files,
        });
        super::atomic_write(
            &self.file("manifest.json"),
            serde_json::to_string_pretty(&m).expect("json").as_bytes(),
        )
    }
}

/// The current UTC time as `YYYYMMDD-HHMMSS`.
pub fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
