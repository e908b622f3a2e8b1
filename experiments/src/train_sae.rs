//! The `train_sae` loop: full batches of one hook's activations (or a transcoder's input and
//! output side by side) from a store or from the model on the fly (each epoch reshuffled by
//! its own seed), checkpoints that resume to the same
//! weights, a progress bar with tokens/s, explained variance, L0 and dead latents, and the loss
//! curves as a table and a plot.

use crate::args::progress_bar;
use crate::parquet::write_parquet;
use crate::store::Origin;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::{Args, ValueEnum};
use hooklens::sae::train::{BDecInit, Sparsity, StepStats, TrainConfig, Trainer};
use hooklens::store::{ActivationStore, Batches, Source, TokenFilter};
use hooklens::{HookPoint, HookedTransformer};
use polars::prelude::*;
use std::path::Path;

/// The SAE and its optimisation (`TrainConfig`), as flags.
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct TrainArgs {
    #[arg(long, value_enum, default_value_t = Arch::Topk)]
    pub architecture: Arch,
    /// Latents; default: --expansion-factor × the hook's width.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub d_sae: Option<u64>,
    /// Latents per dimension of the hook (SAELens's expansion_factor), unless --d-sae.
    #[arg(long, default_value_t = 8)]
    pub expansion_factor: u32,
    /// Active latents per token (topk), or on average over a batch (batchtopk); default 32.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub k: Option<u32>,
    /// relu's L1 coefficient (SAELens's l1_coefficient); default 1.
    #[arg(long)]
    pub l1_coefficient: Option<f64>,
    /// jumprelu's L0 coefficient (SAELens's l0_coefficient); default 1.
    #[arg(long)]
    pub l0_coefficient: Option<f64>,
    /// jumprelu's straight-through estimator's kernel width (SAELens's jumprelu_bandwidth);
    /// default 0.05.
    #[arg(long)]
    pub jumprelu_bandwidth: Option<f64>,
    /// jumprelu's starting threshold (SAELens's jumprelu_init_threshold); default 0.01.
    #[arg(long)]
    pub jumprelu_init_threshold: Option<f64>,
    /// The L1 or L0 coefficient's linear warm-up, as a fraction of the steps (relu, jumprelu).
    #[arg(long)]
    pub penalty_warmup: Option<f64>,
    /// A transcoder's skip connection x·W_skipᵀ (with --hook-out).
    #[arg(long)]
    pub skip: bool,
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
    /// The decoder bias's start (SAELens's b_dec_init_method): the geometric median of the
    /// first batch's activations, their mean, or zeros.
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

/// What makes the latents sparse.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// The k largest of each token, with AuxK for dead latents.
    Topk,
    /// The k × batch largest of the batch, with AuxK; saved as jumprelu (SAELens's batchtopk).
    Batchtopk,
    /// A learnt threshold per latent and an L0 penalty (straight-through estimator).
    Jumprelu,
    /// ReLU with an L1 penalty weighted by the decoder norms (SAELens's standard).
    Relu,
}

impl Arch {
    fn name(&self) -> String {
        self.to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string())
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BDec {
    GeometricMedian,
    Mean,
    Zeros,
}

impl TrainArgs {
    /// The sparsity the flags ask for; flags of another architecture are refused.
    fn sparsity(&self) -> Result<Sparsity> {
        let given = |set: bool, flag: &str, used_by: &[Arch]| -> Result<()> {
            if set && !used_by.contains(&self.architecture) {
                bail!(
                    "{flag} has no effect on --architecture {}: it is for {}",
                    self.architecture.name(),
                    used_by
                        .iter()
                        .map(|a| a.name())
                        .collect::<Vec<_>>()
                        .join(" and ")
                );
            }
            Ok(())
        };
        use Arch::*;
        given(self.k.is_some(), "--k", &[Topk, Batchtopk])?;
        given(self.l1_coefficient.is_some(), "--l1-coefficient", &[Relu])?;
        given(
            self.l0_coefficient.is_some(),
            "--l0-coefficient",
            &[Jumprelu],
        )?;
        given(
            self.jumprelu_bandwidth.is_some(),
            "--jumprelu-bandwidth",
            &[Jumprelu],
        )?;
        given(
            self.jumprelu_init_threshold.is_some(),
            "--jumprelu-init-threshold",
            &[Jumprelu],
        )?;
        given(
            self.penalty_warmup.is_some(),
            "--penalty-warmup",
            &[Jumprelu, Relu],
        )?;
        let k = self.k.unwrap_or(32);
        Ok(match self.architecture {
            Topk => Sparsity::TopK { k: k as usize },
            Batchtopk => Sparsity::BatchTopK { k: k as f64 },
            Jumprelu => Sparsity::JumpRelu {
                l0_coefficient: self.l0_coefficient.unwrap_or(1.0),
                bandwidth: self.jumprelu_bandwidth.unwrap_or(0.05),
                init_threshold: self.jumprelu_init_threshold.unwrap_or(0.01),
            },
            Relu => Sparsity::Relu {
                l1_coefficient: self.l1_coefficient.unwrap_or(1.0),
            },
        })
    }

    /// The trainer's settings for inputs of width `d_in` and `tokens` training tokens, its
    /// weights drawn with `seed`.
    pub fn config(&self, d_in: usize, tokens: u64, seed: u64) -> Result<TrainConfig> {
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
        let penalty_warmup = self.penalty_warmup.unwrap_or(0.0);
        for (name, f) in [
            ("--warmup", self.warmup),
            ("--decay", self.decay),
            ("--penalty-warmup", penalty_warmup),
        ] {
            if !(0.0..=1.0).contains(&f) {
                bail!("{name} {f} must be a fraction of the steps, 0 to 1");
            }
        }
        let warmup_steps = (self.warmup * steps as f64) as usize;
        Ok(TrainConfig {
            sparsity: self.sparsity()?,
            d_sae,
            lr: self.lr.unwrap_or(2e-4 / (d_sae as f64 / 16384.0).sqrt()),
            total_steps: steps,
            warmup_steps,
            decay_steps: ((self.decay * steps as f64) as usize).min(steps - warmup_steps),
            penalty_warmup_steps: (penalty_warmup * steps as f64) as usize,
            aux_coefficient: self.aux_coefficient,
            dead_steps: self.dead_steps as usize,
            b_dec_init: match self.b_dec_init {
                BDec::GeometricMedian => BDecInit::GeometricMedian,
                BDec::Mean => BDecInit::Mean,
                BDec::Zeros => BDecInit::Zeros,
            },
            normalize: self.normalize_activations,
            skip: self.skip,
            seed,
        })
    }
}

impl TrainArgs {
    /// [`Self::planned_buffer`] for a new run, saved in `plan.json`; a resumed run reads it back,
    /// so that its batches are the ones the run started with.
    pub fn buffer_plan(
        &self,
        model: &HookedTransformer,
        cfg: &TrainConfig,
        d_in: usize,
        dir: &crate::run::RunDir,
        resume: bool,
    ) -> Result<usize> {
        let path = dir.file("plan.json");
        if resume && path.is_file() {
            let plan: serde_json::Value = crate::progress::read_json(&path)?;
            return plan["buffer_rows"]
                .as_u64()
                .map(|r| r as usize)
                .with_context(|| format!("{}: no buffer_rows", path.display()));
        }
        let rows = self.planned_buffer(model, cfg, d_in)?;
        hooklens::atomic::atomic_write(
            &path,
            serde_json::json!({ "buffer_rows": rows })
                .to_string()
                .as_bytes(),
        )?;
        Ok(rows)
    }

    /// Rows of the shuffling buffer: --buffer-batches batches, fewer if --max-memory needs it
    /// (at least two). The estimate: what is resident now (with the model's packed weights to
    /// come, `store::resident_with`), the parameters with Adam's moments
    /// and gradients (5 × d_sae × d_in), a step's pre-activations and their host copy
    /// (2 × batch × d_sae), and the buffer with one chunk being poured in (2 × its rows), in f32.
    fn planned_buffer(
        &self,
        model: &HookedTransformer,
        cfg: &TrainConfig,
        d_in: usize,
    ) -> Result<usize> {
        let batch = self.batch as usize;
        let now = crate::store::resident_with(model);
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

/// The hooks a run trains on, resolved on `model`: `hook` (default: the store's first) and, for
/// a transcoder, `hook_out`.
pub fn run_hooks(
    model: &HookedTransformer,
    store: Option<&ActivationStore>,
    hook: Option<&str>,
    hook_out: Option<&str>,
) -> Result<Vec<HookPoint>> {
    let Some(hook) = hook.or(store.map(|s| &*s.spec.hooks[0].name)) else {
        bail!("--hook: which activations to train on (e.g. blocks.6.hook_resid_post)");
    };
    std::iter::once(hook)
        .chain(hook_out)
        .map(|h| Ok(model.hook_point(h)?))
        .collect()
}

/// What a run trains on: the hooks numbered `hooks` of `source` (side by side in each row,
/// `width` wide), shuffled by `seed`, with the tokens `filter` lets through. The first hook,
/// `d_in` wide, is the input; a second is a transcoder's target.
pub struct Data<'a> {
    pub source: Source<'a>,
    pub hooks: Vec<usize>,
    pub d_in: usize,
    pub width: usize,
    pub seed: u64,
    pub filter: TokenFilter,
}

impl<'a> Data<'a> {
    /// `hooks` (resolved on `model`) as `origin` holds them.
    pub fn new(
        origin: &'a Origin<'a>,
        model: &HookedTransformer,
        hooks: &[HookPoint],
        seed: u64,
        filter: TokenFilter,
    ) -> Result<Self> {
        let widths = hooks
            .iter()
            .map(|h| Ok(model.hook_shape(h)?.iter().product()))
            .collect::<Result<Vec<usize>>>()?;
        Ok(Self {
            source: origin.source(),
            hooks: origin.indices(hooks)?,
            d_in: widths[0],
            width: widths.iter().sum(),
            seed,
            filter,
        })
    }
}

/// Full batches of `data`, epoch after epoch, each shuffled by `seed + epoch`; a short last
/// batch is dropped.
struct Stream<'a> {
    data: &'a Data<'a>,
    batch: usize,
    buffer_rows: usize,
    epoch: u64,
    in_epoch: usize,
    it: Batches<'a>,
}

impl<'a> Stream<'a> {
    pub fn new(data: &'a Data<'a>, batch: usize, buffer_rows: usize) -> Result<Self> {
        Ok(Self {
            data,
            batch,
            buffer_rows,
            epoch: 0,
            in_epoch: 0,
            it: Self::epoch(data, batch, buffer_rows, data.seed)?,
        })
    }

    fn epoch(
        data: &'a Data<'a>,
        batch: usize,
        buffer_rows: usize,
        seed: u64,
    ) -> Result<Batches<'a>> {
        Ok(
            Batches::new(&data.source, &data.hooks, batch, buffer_rows, seed)?
                .filtered(data.filter.clone()),
        )
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
                    let seed = self.data.seed + self.epoch;
                    self.it = Self::epoch(self.data, self.batch, self.buffer_rows, seed)?;
                }
            }
        }
    }
}

/// A batch of rows as the trainer takes it: an SAE's input, or a transcoder's input (its
/// first `d_in` columns) and target (the rest).
fn split(rows: &Tensor, d_in: usize, transcoder: bool) -> Result<(Tensor, Option<Tensor>)> {
    Ok(match transcoder {
        true => (
            rows.narrow(1, 0, d_in)?,
            Some(rows.narrow(1, d_in, rows.dim(1)? - d_in)?),
        ),
        false => (rows.clone(), None),
    })
}

/// Trains on `data` in `dir` until `cfg`'s steps are done, from the run's checkpoint when
/// resuming; returns the trainer and every step's statistics.
pub fn fit(
    exp: &mut crate::Experiment,
    model: &HookedTransformer,
    cfg: TrainConfig,
    data: &Data,
    args: &TrainArgs,
    dir: crate::run::RunDir,
    resume: bool,
) -> Result<(Trainer, Vec<StepStats>)> {
    let batch = args.batch as usize;
    let buffer_rows = args.buffer_plan(model, &cfg, data.width, &dir, resume)?;
    let checkpoint = dir.file("checkpoint.safetensors");
    let losses = dir.file("losses.parquet");
    let (mut trainer, mut history) = start(
        cfg,
        data,
        batch,
        (&checkpoint, &losses),
        resume,
        model.device(),
    )?;
    exp.set_run(dir);
    let clock = std::time::Instant::now();
    let mut stream = Stream::new(data, batch, buffer_rows)?;
    let every = args.checkpoint_every as usize;
    train(
        &mut trainer,
        &mut stream,
        &mut history,
        &checkpoint,
        &losses,
        every,
    )
    .context("training")?;
    exp.manifest.record_time("train", clock);
    exp.manifest.set("buffer_rows", buffer_rows)?;
    Ok((trainer, history))
}

/// The trainer of a run and the steps it has logged: read back from `checkpoint` and `losses`
/// when resuming, else new, its normalisation and `b_dec` from `data`'s first batch.
fn start(
    cfg: TrainConfig,
    data: &Data,
    batch: usize,
    (checkpoint, losses): (&Path, &Path),
    resume: bool,
    device: &candle_core::Device,
) -> Result<(Trainer, Vec<StepStats>)> {
    if resume && checkpoint.is_file() {
        let t = Trainer::load_checkpoint(cfg, checkpoint, device)?;
        let h = read_losses(losses, t.step)?;
        return Ok((t, h));
    }
    let first = Stream::new(data, batch, 2 * batch)?
        .next_batch()?
        .to_device(device)?;
    let (x, y) = split(&first, data.d_in, data.hooks.len() > 1)?;
    let t = Trainer::new(cfg, &x, y.as_ref(), candle_core::DType::F32)?;
    Ok((t, vec![]))
}

/// Trains until the configured steps are done: resumes from `checkpoint` when `history` (the
/// steps already logged) is not empty, skipping the batches those steps used; writes the
/// checkpoint and `losses` every `every` steps.
fn train(
    trainer: &mut Trainer,
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
        let rows = stream.next_batch()?.to_device(trainer.device())?;
        let (x, y) = split(&rows, trainer.params.w_enc.dim(1)?, trainer.transcoder)?;
        let s = trainer.step(&x, y.as_ref())?;
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

/// Records the trained SAE in the manifest and writes it as a SAELens folder, with the loss
/// curves as `losses.parquet` and a plot.
pub fn write_results(
    exp: &mut crate::Experiment,
    trainer: &Trainer,
    history: &[StepStats],
    hooks: &[HookPoint],
    batch: u64,
    resume: bool,
) -> Result<()> {
    exp.manifest.set("steps", trainer.step)?;
    exp.manifest.set("input_scale", trainer.scale)?;
    exp.manifest.set("target_scale", trainer.scale_out)?;
    exp.manifest
        .set("architecture_trained", trainer.cfg.sparsity.name())?;
    let sae_dir = exp.file("sae", "The SAE as a SAELens folder")?;
    if resume && sae_dir.is_dir() {
        // Written by this run before it was stopped: the same weights, written again.
        std::fs::remove_dir_all(&sae_dir)?;
    }
    trainer
        .to_sae(hooks[0], hooks.get(1).copied())?
        .save(&sae_dir, &exp.manifest.model.name)?;
    exp.frame(
        "losses.parquet",
        &mut losses_frame(history, batch)?,
        LOSS_COLUMNS,
    )?;
    let what = match trainer.transcoder {
        true => "transcoder",
        false => "SAE",
    };
    crate::report::training_curves(exp, history, batch, what)
}

/// The columns of `losses.parquet`.
pub const LOSS_COLUMNS: &[(&str, &str)] = &[
    ("step", "the step, from 0"),
    ("tokens", "training tokens seen after this step"),
    ("mse", "mean over the batch's tokens of the squared reconstruction error ‖ŷ − y‖² (y = x for an SAE, the output hook's activation for a transcoder), in the activation's units"),
    ("aux_loss", "AuxK (dead latents reconstructing the residual), as weighted in the loss (topk, batchtopk)"),
    ("sparsity_loss", "the L1 (relu) or L0 (jumprelu) penalty, as weighted in the loss"),
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
        "sparsity_loss" => col(|s| s.penalty),
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
    let (steps, mse, aux, penalty, ev, l0, dead, lr) = (
        f("step")?,
        f("mse")?,
        f("aux_loss")?,
        f("sparsity_loss")?,
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
            penalty: penalty[i],
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
