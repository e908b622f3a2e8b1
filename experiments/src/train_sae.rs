//! The `train_sae` loop: full batches of one hook's activations from a store or from the model
//! on the fly (each epoch reshuffled by its own seed), checkpoints that resume to the same
//! weights, a progress bar with tokens/s, explained variance, L0 and dead latents, and the loss
//! curves as a table and a plot.

use crate::args::progress_bar;
use crate::parquet::write_parquet;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::{Args, ValueEnum};
use hooklens::sae::train::{BDecInit, StepStats, TopKConfig, TopKTrainer};
use hooklens::store::{Batches, Source, TokenFilter};
use polars::prelude::*;
use std::path::Path;

/// The SAE and its optimisation (`TopKConfig`), as flags.
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct TrainArgs {
    /// Latents; default: --expansion-factor × the hook's width.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub d_sae: Option<u64>,
    #[arg(long, default_value_t = 8)]
    pub expansion_factor: u32,
    /// Active latents per token.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub k: u32,
    /// Training tokens; default: one pass over the store (or the corpus).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub train_tokens: Option<u64>,
    /// Rows (tokens) per step.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Adam's learning rate; default 2e-4 / √(d_sae / 16384), sparsify's rule.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear warm-up, as a fraction of the steps.
    #[arg(long, default_value_t = 0.05)]
    pub warmup: f64,
    /// Linear decay to zero over this last fraction of the steps.
    #[arg(long, default_value_t = 0.2)]
    pub decay: f64,
    /// AuxK's weight (SAELens's aux_loss_coefficient).
    #[arg(long, default_value_t = 1.0)]
    pub aux_coefficient: f64,
    /// A latent is dead after this many steps without firing (SAELens's dead_feature_window).
    #[arg(long, default_value_t = 1000)]
    pub dead_steps: u32,
    #[arg(long, value_enum, default_value_t = BDec::GeometricMedian)]
    pub b_dec_init: BDec,
    /// Scale inputs to mean norm √d_in while training (SAELens's expected_average_only_in),
    /// folded into the saved weights.
    #[arg(long)]
    pub normalize_activations: bool,
    /// The shuffling buffer, in batches (SAELens's n_batches_in_buffer).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..))]
    pub buffer_batches: u32,
    /// Peak resident memory of the whole process (model included): 4G, 512M. The shuffling
    /// buffer is cut to fit; the measured peak is in the manifest.
    #[arg(long, default_value = "4G", value_parser = crate::store::parse_bytes)]
    pub max_memory: u64,
    /// Steps between checkpoints (`--resume` continues from the last).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub checkpoint_every: u32,
}

#[derive(ValueEnum, Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BDec {
    GeometricMedian,
    Mean,
    Zeros,
}

impl TrainArgs {
    /// The trainer's settings for inputs of width `d_in` and `tokens` training tokens, its
    /// weights drawn with `seed`.
    pub fn config(&self, d_in: usize, tokens: u64, seed: u64) -> Result<TopKConfig> {
        let d_sae = self
            .d_sae
            .map_or(self.expansion_factor as usize * d_in, |d| d as usize);
        let steps = (tokens / self.batch as u64) as usize;
        if steps == 0 {
            bail!(
                "{tokens} training tokens make no full batch of {}: lower --batch or raise --train-tokens",
                self.batch
            );
        }
        for (name, f) in [("--warmup", self.warmup), ("--decay", self.decay)] {
            if !(0.0..=1.0).contains(&f) {
                bail!("{name} {f} must be a fraction of the steps, 0 to 1");
            }
        }
        let warmup_steps = (self.warmup * steps as f64) as usize;
        Ok(TopKConfig {
            d_sae,
            k: self.k as usize,
            lr: self.lr.unwrap_or(2e-4 / (d_sae as f64 / 16384.0).sqrt()),
            total_steps: steps,
            warmup_steps,
            decay_steps: ((self.decay * steps as f64) as usize).min(steps - warmup_steps),
            aux_coefficient: self.aux_coefficient,
            dead_steps: self.dead_steps as usize,
            b_dec_init: match self.b_dec_init {
                BDec::GeometricMedian => BDecInit::GeometricMedian,
                BDec::Mean => BDecInit::Mean,
                BDec::Zeros => BDecInit::Zeros,
            },
            normalize: self.normalize_activations,
            seed,
        })
    }
}

impl TrainArgs {
    /// [`Self::planned_buffer`] for a new run, saved in `plan.json`; a resumed run reads it back,
    /// so that its batches are the ones the run started with.
    pub fn buffer_plan(
        &self,
        cfg: &TopKConfig,
        d_in: usize,
        dir: &crate::run::RunDir,
        resume: bool,
    ) -> Result<usize> {
        let path = dir.file("plan.json");
        if resume && path.is_file() {
            let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
            return plan["buffer_rows"]
                .as_u64()
                .map(|r| r as usize)
                .with_context(|| format!("{}: no buffer_rows", path.display()));
        }
        let rows = self.planned_buffer(cfg, d_in)?;
        hooklens::atomic::atomic_write(
            &path,
            serde_json::json!({ "buffer_rows": rows })
                .to_string()
                .as_bytes(),
        )?;
        Ok(rows)
    }

    /// Rows of the shuffling buffer: --buffer-batches batches, fewer if --max-memory needs it
    /// (at least two). The estimate: what is resident now, the parameters with Adam's moments
    /// and gradients (5 × d_sae × d_in), a step's pre-activations and their host copy
    /// (2 × batch × d_sae), and the buffer with one chunk being poured in (2 × its rows), in f32.
    fn planned_buffer(&self, cfg: &TopKConfig, d_in: usize) -> Result<usize> {
        let batch = self.batch as usize;
        let (now, _) = crate::store::memory();
        let fixed = now as usize + 4 * (5 * cfg.d_sae * d_in + 2 * batch * cfg.d_sae);
        let per_row = 2 * 4 * d_in;
        let fit = (self.max_memory as usize).saturating_sub(fixed) / per_row;
        let rows = (self.buffer_batches as usize * batch).min(fit);
        if rows < 2 * batch {
            bail!(
                "--max-memory {} MB does not fit training: about {} MB are needed for the SAE, a step and a buffer of two batches; raise it, or lower --batch or --d-sae",
                self.max_memory >> 20,
                (fixed + 2 * batch * per_row) >> 20
            );
        }
        Ok(rows)
    }
}

/// Full batches of hook number `hook` of `source`, epoch after epoch, each shuffled by
/// `seed + epoch`; a short last batch is dropped.
pub struct Stream<'a> {
    source: &'a Source<'a>,
    hook: usize,
    batch: usize,
    buffer_rows: usize,
    seed: u64,
    filter: TokenFilter,
    epoch: u64,
    in_epoch: usize,
    it: Batches<'a>,
}

impl<'a> Stream<'a> {
    pub fn new(
        source: &'a Source<'a>,
        hook: usize,
        batch: usize,
        buffer_rows: usize,
        seed: u64,
        filter: TokenFilter,
    ) -> Result<Self> {
        let it = Batches::new(source, hook, batch, buffer_rows, seed)?.filtered(filter.clone());
        Ok(Self {
            source,
            hook,
            batch,
            buffer_rows,
            seed,
            filter,
            epoch: 0,
            in_epoch: 0,
            it,
        })
    }

    pub fn next_batch(&mut self) -> Result<Tensor> {
        loop {
            match self.it.next() {
                Some(b) => {
                    let b = b?;
                    if b.dim(0)? == self.batch {
                        self.in_epoch += 1;
                        return Ok(b);
                    }
                }
                None if self.in_epoch == 0 => {
                    bail!(
                        "the data holds less than one batch of {} tokens: lower --batch",
                        self.batch
                    )
                }
                None => {
                    self.epoch += 1;
                    self.in_epoch = 0;
                    let seed = self.seed + self.epoch;
                    self.it =
                        Batches::new(self.source, self.hook, self.batch, self.buffer_rows, seed)?
                            .filtered(self.filter.clone());
                }
            }
        }
    }
}

/// Trains until the configured steps are done: resumes from `checkpoint` when `history` (the
/// steps already logged) is not empty, skipping the batches those steps used; writes the
/// checkpoint and `losses` every `every` steps.
pub fn train(
    trainer: &mut TopKTrainer,
    stream: &mut Stream,
    history: &mut Vec<StepStats>,
    checkpoint: &Path,
    losses: &Path,
    every: usize,
) -> Result<()> {
    let batch = stream.batch as u64;
    for _ in 0..trainer.step {
        stream.next_batch()?;
    }
    let total = trainer.cfg.total_steps;
    let bar = progress_bar(total as u64 * batch, "training", "tokens")?;
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{msg} {bar:30} {human_pos}/{human_len} tokens, {per_sec} [{elapsed}<{eta}]",
    )?);
    bar.set_position(trainer.step as u64 * batch);
    while trainer.step < total {
        let x = stream.next_batch()?.to_device(trainer.device())?;
        let s = trainer.step(&x)?;
        history.push(s);
        bar.inc(batch);
        if s.step % 10 == 0 {
            bar.set_message(format!(
                "EV {:.3} L0 {:.1} dead {}",
                s.explained_variance, s.l0, s.dead
            ));
        }
        if trainer.step.is_multiple_of(every) || trainer.step == total {
            write_parquet(&mut losses_frame(history, batch)?, losses)?;
            trainer
                .save_checkpoint(checkpoint)
                .with_context(|| format!("writing {}", checkpoint.display()))?;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// The columns of `losses.parquet`.
pub const LOSS_COLUMNS: &[(&str, &str)] = &[
    ("step", "the step, from 0"),
    ("tokens", "training tokens seen after this step"),
    ("mse", "mean over the batch's tokens of the squared reconstruction error ‖x̂ − x‖², in the activation's units"),
    ("aux_loss", "AuxK (dead latents reconstructing the residual), as weighted in the loss"),
    ("explained_variance", "1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² over the batch"),
    ("l0", "mean active latents per token"),
    ("dead", "latents that had not fired for --dead-steps steps"),
    ("lr", "the learning rate used"),
];

/// The logged steps as a frame with [`LOSS_COLUMNS`].
pub fn losses_frame(history: &[StepStats], batch: u64) -> Result<DataFrame> {
    let col = |f: fn(&StepStats) -> f64| history.iter().map(f).collect::<Vec<f64>>();
    Ok(df!(
        "step" => history.iter().map(|s| s.step as u64).collect::<Vec<_>>(),
        "tokens" => history.iter().map(|s| (s.step as u64 + 1) * batch).collect::<Vec<_>>(),
        "mse" => col(|s| s.mse),
        "aux_loss" => col(|s| s.aux),
        "explained_variance" => col(|s| s.explained_variance),
        "l0" => col(|s| s.l0),
        "dead" => history.iter().map(|s| s.dead as u64).collect::<Vec<_>>(),
        "lr" => col(|s| s.lr),
    )?)
}

/// The steps a resumed run had logged, up to (not including) `step`, from its `losses.parquet`.
pub fn read_losses(path: &Path, step: usize) -> Result<Vec<StepStats>> {
    let df = crate::parquet::read_parquet(path)
        .with_context(|| format!("{}: a checkpoint without its losses table", path.display()))?;
    let f = |name: &str| -> Result<Vec<f64>> {
        Ok(df
            .column(name)?
            .cast(&DataType::Float64)?
            .f64()?
            .into_no_null_iter()
            .collect())
    };
    let (steps, mse, aux, ev, l0, dead, lr) = (
        f("step")?,
        f("mse")?,
        f("aux_loss")?,
        f("explained_variance")?,
        f("l0")?,
        f("dead")?,
        f("lr")?,
    );
    let rows: Vec<StepStats> = (0..df.height())
        .map(|i| StepStats {
            step: steps[i] as usize,
            mse: mse[i],
            aux: aux[i],
            explained_variance: ev[i],
            l0: l0[i],
            dead: dead[i] as usize,
            lr: lr[i],
        })
        .take_while(|s| s.step < step)
        .collect();
    if rows.len() != step {
        bail!(
            "{}: {} steps logged but the checkpoint is at step {step}; start a new run",
            path.display(),
            rows.len()
        );
    }
    Ok(rows)
}
