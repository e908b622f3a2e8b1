//! Run folders `outputs/<experiment>/<run>/` with a `manifest.json`, never overwritten silently.
//!
//! The folder appears with the run's first file, so a run that fails before producing anything
//! leaves nothing behind; one that fails later has no `manifest.json` (written last), which
//! marks it incomplete.

use crate::manifest::Manifest;
use crate::parquet::write_parquet;
use crate::tables::Table;
use hooklens::error::{Error, Result};
use polars::prelude::DataFrame;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// One run's output folder, held by this process alone while it exists (see [`RunLock`]).
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
    pub experiment: String,
    _lock: std::sync::Arc<RunLock>,
}

/// One writer per run folder: the file `.<run>.lock` beside the folder holds the pid of the
/// process writing it (beside it, so that a run that fails before writing anything leaves
/// nothing). A second process is refused while that pid is alive; a lock whose process is
/// gone (killed) is stale, taken over with a note. Dropping the lock removes it, and the
/// folders made only to hold it.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    made: Vec<PathBuf>,
    owned: bool,
}

impl RunLock {
    fn take(run: &Path) -> Result<Self> {
        let name = run.file_name().and_then(|n| n.to_str()).unwrap_or("run");
        let parent = run.parent().unwrap_or(Path::new("."));
        let path = parent.join(format!(".{name}.lock"));
        let made: Vec<PathBuf> = parent
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        // Owned only once taken: until then dropping it must leave another's lock alone.
        let lock = Self {
            path,
            made,
            owned: false,
        };
        for _ in 0..2 {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock.path);
            match file {
                Ok(mut f) => {
                    use std::io::Write;
                    let mut lock = lock;
                    lock.owned = true;
                    write!(f, "{}", std::process::id()).map_err(|e| Error::io(&lock.path, e))?;
                    return Ok(lock);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let held = std::fs::read_to_string(&lock.path).unwrap_or_default();
                    match held.trim().parse::<u32>() {
                        Ok(pid) if Path::new(&format!("/proc/{pid}")).exists() => {
                            return Err(Error::Invalid(format!(
                                "{} is being written by process {pid} (its lock is {}); wait for \
                                 it to finish, or pass --run NAME for another run; if no such \
                                 process is this run's, delete the lock",
                                run.display(),
                                lock.path.display()
                            )))
                        }
                        _ => {
                            eprintln!(
                                "note: {}: a stale lock (process {} is gone); taking it over",
                                lock.path.display(),
                                held.trim()
                            );
                            let _ = std::fs::remove_file(&lock.path);
                        }
                    }
                }
                Err(e) => return Err(Error::io(&lock.path, e)),
            }
        }
        Err(Error::Invalid(format!(
            "{}: could not take the lock; another process is starting this run",
            lock.path.display()
        )))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_file(&self.path);
        }
        for dir in &self.made {
            // Fails, as it should, where the run wrote something.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl RunDir {
    /// The folder `base/experiment/run` (run defaults to a UTC timestamp). The run name must be
    /// one plain path component. An existing folder is an error unless `resume` is set, and
    /// `resume` needs an existing folder, so an earlier run is never overwritten by accident.
    pub fn create(base: &Path, experiment: &str, run: Option<&str>, resume: bool) -> Result<Self> {
        let run = run.map_or_else(timestamp, str::to_string);
        let plain = !run.is_empty()
            && run != "."
            && run != ".."
            && !run.contains(['/', '\\'])
            && !run.starts_with('.');
        if !plain {
            return Err(Error::Invalid(format!(
                "--run {run:?} must be a plain folder name (no `/`, `\\`, or leading `.`); runs are written under {}",
                base.join(experiment).display()
            )));
        }
        let path = base.join(experiment).join(&run);
        let complete = path.join("manifest.json").is_file();
        match (path.exists(), resume) {
            (true, false) if complete => Err(Error::Invalid(format!(
                "{} already exists; pass --resume to continue it or --run NAME for a new run",
                path.display()
            ))),
            (true, false) => Err(Error::Invalid(format!(
                "{} exists but is incomplete (no manifest.json: an earlier run stopped); pass --resume to continue it, delete it, or pass --run NAME for a new run",
                path.display()
            ))),
            (false, true) => Err(Error::Invalid(format!(
                "--resume: there is no run {} to continue; leave out --resume to start it",
                path.display()
            ))),
            _ => Ok(Self {
                _lock: std::sync::Arc::new(RunLock::take(&path)?),
                path,
                experiment: experiment.into(),
            }),
        }
    }

    /// Path of `file` inside the run folder.
    pub fn file(&self, file: &str) -> PathBuf {
        self.path.join(file)
    }

    /// Writes the typed result `table` as `file` (parquet) and records its schema and column
    /// docs in the manifest.
    pub fn write_table<T: Table + ?Sized>(
        &self,
        manifest: &mut Manifest,
        file: &str,
        table: &T,
    ) -> Result<()> {
        self.write_frame(manifest, file, &mut table.frame()?, T::COLUMNS)
    }

    /// Writes `df` as `file` (parquet) and records its schema, with `docs` for each column.
    pub fn write_frame(
        &self,
        manifest: &mut Manifest,
        file: &str,
        df: &mut DataFrame,
        docs: &[(&str, &str)],
    ) -> Result<()> {
        manifest.add_table(file, df, docs)?;
        write_parquet(df, &self.file(file))
    }

    /// Writes `manifest.json`, last: its presence marks the run complete.
    pub fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        let text = serde_json::to_string_pretty(manifest)
            .map_err(|e| Error::Invalid(format!("serialising the manifest: {e}")))?;
        hooklens::atomic::atomic_write(&self.file("manifest.json"), text.as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_are_one_component_and_folders_appear_lazily() {
        let base = tempfile::tempdir().unwrap();
        for bad in ["../../x", "a/b", "..", ".hidden", ""] {
            let e = RunDir::create(base.path(), "exp", Some(bad), false).unwrap_err();
            assert!(e.to_string().contains("plain folder name"), "{bad}: {e}");
        }
        let run = RunDir::create(base.path(), "exp", Some("r1"), false).unwrap();
        assert!(!run.path.exists(), "nothing written yet, no folder");
        let e = RunDir::create(base.path(), "exp", Some("r1"), true).unwrap_err();
        assert!(e.to_string().contains("no run"), "{e}");
        hooklens::atomic::atomic_write(&run.file("a.txt"), b"x").unwrap();
        let e = RunDir::create(base.path(), "exp", Some("r1"), false).unwrap_err();
        assert!(e.to_string().contains("incomplete"), "{e}");
        // One writer: refused while `run` holds the folder, taken once it is dropped.
        let e = RunDir::create(base.path(), "exp", Some("r1"), true).unwrap_err();
        assert!(e.to_string().contains("being written by process"), "{e}");
        drop(run);
        assert!(RunDir::create(base.path(), "exp", Some("r1"), true).is_ok());
    }
}
