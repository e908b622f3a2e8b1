//! The opening and closing every experiment binary shares: load the model, open the run folder
//! and the manifest; write tables, plots and pages into the folder, each recorded in the
//! manifest; write the manifest last (its presence marks the run complete).

use crate::args::{ModelArgs, RunArgs, SweepArgs};
use crate::manifest::Manifest;
use crate::plot::Heatmap;
use crate::progress::{sweep_in_folder, Outcome};
use crate::run::RunDir;
use crate::tables::Table;
use anyhow::{Context, Result};
use hooklens::analysis::sweep::Sweep;
use hooklens::{HookedTransformer, Tokenizer};
use polars::prelude::DataFrame;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// One run of an experiment: its manifest and run folder.
pub struct Experiment {
    pub name: &'static str,
    pub manifest: Manifest,
    run: Option<RunDir>,
}

/// What [`Experiment::start`] returns: the run, and the model and tokenizer it loaded.
pub type Started = (Experiment, HookedTransformer, Tokenizer);

impl Experiment {
    /// Opens `outputs/<name>/<run>` (checking `--run`/`--resume` before any work), loads the
    /// model and starts the manifest with the binary's parsed `args`.
    pub fn start(
        name: &'static str,
        model: &ModelArgs,
        out: &RunArgs,
        args: &impl Serialize,
    ) -> Result<Started> {
        let run = out.dir(name)?;
        let (mut exp, model, tok) = Self::load(name, model, args)?;
        exp.run = Some(run);
        Ok((exp, model, tok))
    }

    /// Loads the model and starts the manifest; the run folder comes from [`Self::sweep`]
    /// (which knows about shards and merges).
    pub fn load(name: &'static str, model: &ModelArgs, args: &impl Serialize) -> Result<Started> {
        let start = Instant::now();
        let (m, tok, source) = model.load().context("loading the model")?;
        let mut manifest = Manifest::new(name, &m, &source, args)?;
        manifest.record_time("load_model", start);
        let run = None;
        Ok((
            Self {
                name,
                manifest,
                run,
            },
            m,
            tok,
        ))
    }

    /// Runs `sweeps` with progress, resume and shards (or merges the shards), records the
    /// interventions, and makes the sweep's folder this run's.
    pub fn sweep(
        &mut self,
        out: &RunArgs,
        opts: &SweepArgs,
        args: &impl Serialize,
        sweeps: &[Sweep],
    ) -> Result<Outcome> {
        let start = Instant::now();
        if let Some(chunks) = sweeps.first().map(|s| s.chunks()).filter(|c| c.len() > 1) {
            // What bounds the memory: one chunk of prompts at a time.
            let prompts = chunks.last().map_or(0, |c| c.end);
            eprintln!(
                "note: {prompts} prompts run in {} chunks of up to {} (--tokens-per-pass {})",
                chunks.len(),
                chunks[0].len(),
                opts.tokens_per_pass
            );
            self.manifest.set("prompt_chunks", chunks.len())?;
        }
        let (dir, outcome) = sweep_in_folder(out, opts, self.name, args, sweeps)?;
        self.manifest.record_time("sweep", start);
        self.manifest.interventions = outcome.fired.clone();
        self.manifest.set("shard", opts.shards.shard)?;
        self.run = Some(dir);
        Ok(outcome)
    }

    /// Makes `dir` this run's folder (for binaries that open their own: shards, merges).
    pub fn set_run(&mut self, dir: RunDir) {
        self.run = Some(dir);
    }

    /// The run folder.
    pub fn run(&self) -> Result<&RunDir> {
        self.run
            .as_ref()
            .context("the run folder is opened by Experiment::start or Experiment::sweep")
    }

    /// Runs `f` and records its wall time under `phase`.
    pub fn time<T>(&mut self, phase: &str, f: impl FnOnce() -> hooklens::Result<T>) -> Result<T> {
        Ok(self.manifest.time(phase, f)?)
    }

    /// Writes the typed result `table` as the parquet `file`.
    pub fn table<T: Table + ?Sized>(&mut self, file: &str, table: &T) -> Result<()> {
        let run = self.run.as_ref().context("no run folder")?;
        Ok(run.write_table(&mut self.manifest, file, table)?)
    }

    /// Writes `df` as the parquet `file`, each column documented by `docs`.
    pub fn frame(&mut self, file: &str, df: &mut DataFrame, docs: &[(&str, &str)]) -> Result<()> {
        let run = self.run.as_ref().context("no run folder")?;
        Ok(run.write_frame(&mut self.manifest, file, df, docs)?)
    }

    /// The path of a new non-table `file` in the run folder, recorded with what it shows.
    pub fn file(&mut self, file: &str, what: &str) -> Result<PathBuf> {
        let path = self.run()?.file(file);
        self.manifest.add_file(file, what);
        Ok(path)
    }

    /// Writes the HTML `page` as `file`.
    pub fn page(&mut self, file: &str, what: &str, page: &str) -> Result<()> {
        let path = self.file(file, what)?;
        Ok(hooklens::atomic::atomic_write(&path, page.as_bytes())?)
    }

    /// Writes `heatmap` as the PNG `file`.
    pub fn heatmap(&mut self, file: &str, what: &str, heatmap: &Heatmap) -> Result<()> {
        let path = self.file(file, what)?;
        Ok(heatmap.write(&path)?)
    }

    /// Writes a layers × heads heatmap as `file` ([`crate::plot::write_heads`]).
    pub fn heads(
        &mut self,
        file: &str,
        what: &str,
        title: &str,
        values: &[Vec<f32>],
        diverging: bool,
    ) -> Result<()> {
        let path = self.file(file, what)?;
        Ok(crate::plot::write_heads(
            &path, title, values, diverging, None,
        )?)
    }

    /// Writes one head's attention pattern [query][key] as `file`, the tokens' `labels` on both
    /// axes (colour scale `range`, by default the data's).
    pub fn pattern(
        &mut self,
        file: &str,
        what: &str,
        title: &str,
        pattern: &[Vec<f32>],
        labels: &[String],
        range: Option<(f32, f32)>,
    ) -> Result<()> {
        let heatmap = Heatmap {
            title,
            values: pattern,
            row_labels: labels,
            col_labels: labels,
            x_desc: "key (attended-to token)",
            y_desc: "query token",
            range,
            ..Default::default()
        };
        self.heatmap(file, what, &heatmap)
    }

    /// Writes the manifest, last, and prints where the run is.
    pub fn finish(mut self) -> Result<()> {
        let bom = hooklens::text::bom_stripped();
        if !bom.is_empty() {
            // Read as text without it: the results are those of the text alone.
            self.manifest.set("bom_stripped_from", bom)?;
        }
        let run = self.run.as_ref().context("no run folder")?;
        self.manifest.peak_memory_mb = crate::store::memory().1 as f64 / (1 << 20) as f64;
        run.write_manifest(&self.manifest)?;
        writeln!(std::io::stdout().lock(), "wrote {}", run.path.display())?;
        Ok(())
    }
}
