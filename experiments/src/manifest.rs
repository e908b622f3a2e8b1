//! A run's typed `manifest.json`: what produced the numbers (model, weights checksum,
//! processing, dtype, device, seed, arguments, hooklens version and commit), the interventions
//! applied, how long each phase took, and each table's schema read from the table itself.

use hooklens::config::ModelConfig;
use hooklens::error::{Error, Result};
use hooklens::intervention::Fired;
use hooklens::loading::{ModelSource, Processing};
use hooklens::model::HookedTransformer;
use polars::prelude::DataFrame;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::time::Instant;

/// Everything a reader needs to trust and reproduce a run folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub experiment: String,
    pub created_utc: String,
    pub hooklens_version: String,
    /// The git commit hooklens was built from (empty outside a git checkout).
    pub git_commit: String,
    pub model: ModelRecord,
    pub seed: Option<u64>,
    /// The binary's arguments as parsed (defaults filled in).
    pub args: serde_json::Value,
    /// Values the run derived from its arguments (defaults that depend on the model, say).
    pub settings: BTreeMap<String, serde_json::Value>,
    /// Time spent in each phase, in the order run.
    pub timings: Vec<Timing>,
    /// The process's peak resident memory (Linux's VmHWM) when the manifest was written, in MB.
    #[serde(default)]
    pub peak_memory_mb: f64,
    /// Every intervention applied, with how often it fired.
    pub interventions: Vec<Fired>,
    /// Each parquet table: its columns (name, dtype as polars prints it, meaning) and rows.
    pub tables: BTreeMap<String, TableSchema>,
    /// Every other file (plots, pages) with what it shows.
    pub files: BTreeMap<String, String>,
}

/// The model a run used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRecord {
    /// What `--model` named (a Hub id, path, alias, or the embedded model's name).
    pub name: String,
    /// The weight files read, with their sha256.
    pub weights: Vec<WeightsFile>,
    pub processing: Processing,
    pub dtype: String,
    pub device: String,
    pub config: ModelConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timing {
    pub phase: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeightsFile {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSchema {
    pub rows: usize,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub dtype: String,
    pub doc: String,
}

impl Manifest {
    /// A manifest for `experiment` on `model` (loaded from `source`), with the binary's parsed
    /// `args`.
    pub fn new(
        experiment: &str,
        model: &HookedTransformer,
        source: &ModelSource,
        args: &impl Serialize,
    ) -> Result<Self> {
        let mut settings = BTreeMap::new();
        if model.allow_nonfinite {
            // Marks tables that may hold NaN or Inf (written under --allow-nonfinite).
            settings.insert("allow_nonfinite".into(), true.into());
        }
        Ok(Self {
            experiment: experiment.into(),
            created_utc: crate::run::timestamp(),
            hooklens_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: env!("HOOKLENS_GIT_COMMIT").into(),
            model: ModelRecord::of(model, source)?,
            seed: None,
            args: serde_json::to_value(args)
                .map_err(|e| Error::Invalid(format!("recording the arguments: {e}")))?,
            settings,
            timings: vec![],
            peak_memory_mb: 0.0,
            interventions: vec![],
            tables: BTreeMap::new(),
            files: BTreeMap::new(),
        })
    }

    /// Runs `f` and records its wall time under `phase`.
    pub fn time<T>(&mut self, phase: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let out = f()?;
        self.record_time(phase, start);
        Ok(out)
    }

    /// Records the time from `start` to now under `phase`.
    pub fn record_time(&mut self, phase: &str, start: Instant) {
        self.timings.push(Timing {
            phase: phase.into(),
            seconds: start.elapsed().as_secs_f64(),
        });
    }

    /// Records a value the run derived from its arguments.
    pub fn set(&mut self, name: &str, value: impl Serialize) -> Result<()> {
        let v = serde_json::to_value(value)
            .map_err(|e| Error::Invalid(format!("recording setting {name}: {e}")))?;
        self.settings.insert(name.into(), v);
        Ok(())
    }

    /// Records table `file`'s schema from `df` itself, with one line of meaning per column.
    /// Every column needs a doc and every doc a column, so the two cannot drift apart.
    pub fn add_table(&mut self, file: &str, df: &DataFrame, docs: &[(&str, &str)]) -> Result<()> {
        if !self.settings.contains_key("allow_nonfinite") {
            check_finite(file, df)?;
        }
        let columns = schema_of(df)
            .into_iter()
            .map(|(name, dtype)| {
                let doc = docs.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                    Error::Invalid(format!("{file}: column `{name}` has no documentation"))
                })?;
                Ok(Column {
                    name,
                    dtype,
                    doc: doc.1.into(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some((n, _)) = docs
            .iter()
            .find(|(n, _)| !columns.iter().any(|c| c.name == *n))
        {
            return Err(Error::Invalid(format!(
                "{file}: documented column `{n}` is not in the table"
            )));
        }
        self.tables.insert(
            file.into(),
            TableSchema {
                rows: df.height(),
                columns,
            },
        );
        Ok(())
    }

    /// Records a non-table file and what it shows.
    pub fn add_file(&mut self, file: &str, what: &str) {
        self.files.insert(file.into(), what.into());
    }
}

/// (column name, dtype) of each column of `df`, in order, dtypes as polars prints them.
pub fn schema_of(df: &DataFrame) -> Vec<(String, String)> {
    df.columns()
        .iter()
        .map(|c| (c.name().to_string(), c.dtype().to_string()))
        .collect()
}

impl ModelRecord {
    /// The record of `model`, loaded from `source`, hashing its weight files.
    pub fn of(model: &HookedTransformer, source: &ModelSource) -> Result<Self> {
        let weights = match source.embedded {
            Some(bytes) => vec![WeightsFile {
                path: "(embedded in the hooklens binary)".into(),
                sha256: hex(&Sha256::digest(bytes)),
                bytes: bytes.len() as u64,
            }],
            None => source
                .files
                .iter()
                .map(|f| hash_file(f))
                .collect::<Result<_>>()?,
        };
        Ok(Self {
            name: source.name.clone(),
            weights,
            processing: source.processing,
            dtype: format!("{:?}", model.dtype()).to_lowercase(),
            device: match model.device() {
                candle_core::Device::Cpu => "cpu".into(),
                d => format!("{:?}", d.location()).to_lowercase(),
            },
            config: model.cfg.clone(),
        })
    }
}

pub fn hash_file(path: &std::path::Path) -> Result<WeightsFile> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(WeightsFile {
        path: path.display().to_string(),
        sha256: hex(&h.finalize()),
        bytes,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An error naming the first float column and row of `df` (the table `file`) holding NaN or
/// Inf: a table of them would be written as if it were a result.
fn check_finite(file: &str, df: &DataFrame) -> Result<()> {
    use polars::prelude::DataType;
    let polars = |e: polars::error::PolarsError| Error::Invalid(format!("{file}: {e}"));
    for col in df.columns() {
        if !matches!(col.dtype(), DataType::Float32 | DataType::Float64) {
            continue;
        }
        let values = col.cast(&DataType::Float64).map_err(polars)?;
        let row = values
            .f64()
            .map_err(polars)?
            .iter()
            .position(|v| v.is_some_and(|v| !v.is_finite()));
        if let Some(row) = row {
            return Err(Error::NonFinite {
                what: format!("the table {file}, column `{}`, row {row}", col.name()),
                first: None,
                hint: hooklens::finite::ALLOW.into(),
            });
        }
    }
    Ok(())
}
