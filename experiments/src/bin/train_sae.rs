//! Trains an SAE (TopK, BatchTopK, JumpReLU or ReLU) on one hook's activations, or a transcoder
//! from one hook to another (--hook-out), read from an activation store (from `capture`) or
//! computed from the model over a corpus on the fly. Writes under `outputs/train_sae/<run>/`:
//!
//! - `sae/`: the SAE as a SAELens folder (`cfg.json`, `sae_weights.safetensors`), which
//!   SAELens's `SAE.load_from_disk` and `sae --sae` read;
//! - `losses.parquet` (one row per step: MSE, AuxK, explained variance, L0, dead latents, learning
//!   rate) and `losses.png`;
//! - `checkpoint.safetensors` every --checkpoint-every steps: `--resume` continues to the same
//!   weights; `manifest.json`, `args.json`.

use anyhow::{Context, Result};
use clap::Parser;
use hooklens::sae::train::Trainer;
use hooklens::store::{ActivationStore, Capture, Source};
use lab::args::{ModelArgs, RunArgs};
use lab::store::CorpusArgs;
use lab::train_sae::{losses_frame, read_losses, split, train, Stream, TrainArgs, LOSS_COLUMNS};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Parser, Serialize)]
#[command(
    about = "Train a sparse autoencoder (topk, batchtopk, jumprelu, relu) or a transcoder on a model's activations (store or on the fly), saved as a SAELens folder",
    after_help = "Examples: capture --model smollm2 --corpus FILE --tokens 2000000 --hooks blocks.6.hook_resid_post --run r6, then\n  train_sae --store outputs/capture/r6 --k 32 --expansion-factor 8 --run l6\nand measure it: sae --sae outputs/train_sae/l6/sae --store outputs/capture/r6\nA transcoder of layer 6's MLP, from a store holding both hooks:\n  train_sae --store S --hook blocks.6.ln2.hook_normalized --hook-out blocks.6.hook_mlp_out --architecture batchtopk\n--seed also seeds the SAE's weights and the batch shuffling."
)]
struct Args {
    /// An activation store (a `capture` run). Without it, activations come from the model over
    /// --corpus as training goes.
    #[arg(long)]
    store: Option<PathBuf>,
    /// The hook to train on; default: the store's first.
    #[arg(long)]
    hook: Option<String>,
    /// Train a transcoder that reads --hook and writes this hook (e.g. --hook
    /// blocks.6.ln2.hook_normalized --hook-out blocks.6.hook_mlp_out: the MLP's input and output).
    #[arg(long)]
    hook_out: Option<String>,
    #[command(flatten)]
    train: TrainArgs,
    #[command(flatten)]
    tokens: lab::store::TokenArgs,
    /// The model (default: the store's own, checked by sha256).
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    corpus: CorpusArgs,
    #[command(flatten)]
    out: RunArgs,
}

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(mut a: Args) -> Result<()> {
    let store = a.store.as_deref().map(ActivationStore::open).transpose()?;
    if let Some(s) = &store {
        lab::store::default_model(&mut a.model, s);
    }
    let dir = a.out.dir("train_sae")?;
    let (mut exp, model, tok) = lab::Experiment::load("train_sae", &a.model, &a)?;
    let hook = match (&a.hook, &store) {
        (Some(h), _) => model.hook_point(h)?,
        (None, Some(s)) => model.hook_point(&s.spec.hooks[0].name)?,
        (None, None) => {
            anyhow::bail!("--hook: which activations to train on (e.g. blocks.6.hook_resid_post)")
        }
    };
    let hook_out = a
        .hook_out
        .as_deref()
        .map(|h| model.hook_point(h))
        .transpose()?;
    let hooks: Vec<_> = std::iter::once(hook).chain(hook_out).collect();
    let (capture, contexts);
    let (source, indices, available) = match &store {
        Some(s) => {
            lab::store::check_store_model(s, &exp.manifest.model.weights)?;
            let indices = hooks
                .iter()
                .map(|h| Ok(s.spec.hook(&h.to_string())?.0))
                .collect::<Result<Vec<_>>>()?;
            (Source::Disk(s), indices, s.spec.tokens as u64)
        }
        None => {
            capture = Capture::new(&model, hooks.clone(), candle_core::DType::F32)?;
            contexts = a.corpus.contexts(&model, &tok)?.0;
            let tokens = (contexts.len() * contexts.context_len) as u64;
            (
                Source::Model {
                    capture: &capture,
                    contexts: &contexts,
                    contexts_per_chunk: 32,
                },
                (0..hooks.len()).collect(),
                tokens,
            )
        }
    };
    let widths = hooks
        .iter()
        .map(|h| Ok(model.hook_shape(h)?.iter().product()))
        .collect::<Result<Vec<usize>>>()?;
    let (d_in, width) = (widths[0], widths.iter().sum::<usize>());
    let special = match &store {
        Some(s) => lab::store::special_tokens(s),
        None => tok
            .bos_token_id
            .into_iter()
            .chain(tok.eos_token_id)
            .collect(),
    };
    let filter = a.tokens.filter(special);
    let cfg = a.train.config(
        d_in,
        a.train.train_tokens.unwrap_or(available),
        a.corpus.seed,
    )?;
    let batch = a.train.batch as usize;
    let buffer_rows = a.train.buffer_plan(&cfg, width, &dir, a.out.resume)?;
    let mut stream = Stream::new(
        &source,
        &indices,
        batch,
        buffer_rows,
        a.corpus.seed,
        filter.clone(),
    )?;
    let checkpoint = dir.file("checkpoint.safetensors");
    let losses = dir.file("losses.parquet");
    lab::progress::save_or_check_args(&dir, a.out.resume, &a)?;
    let (mut trainer, mut history) = match a.out.resume && checkpoint.is_file() {
        true => {
            let t = Trainer::load_checkpoint(cfg, &checkpoint, model.device())?;
            let h = read_losses(&losses, t.step)?;
            (t, h)
        }
        false => {
            let first = Stream::new(
                &source,
                &indices,
                batch,
                2 * batch,
                a.corpus.seed,
                filter.clone(),
            )?
            .next_batch()?
            .to_device(model.device())?;
            let (x, y) = split(&first, d_in, hook_out.is_some())?;
            let t = Trainer::new(cfg, &x, y.as_ref(), candle_core::DType::F32)?;
            (t, vec![])
        }
    };
    exp.set_run(dir);
    let start = std::time::Instant::now();
    train(
        &mut trainer,
        &mut stream,
        &mut history,
        &checkpoint,
        &losses,
        a.train.checkpoint_every as usize,
    )
    .context("training")?;
    exp.manifest.record_time("train", start);
    exp.manifest.seed = Some(a.corpus.seed);
    exp.manifest.set("steps", trainer.step)?;
    exp.manifest.set("input_scale", trainer.scale)?;
    exp.manifest.set("target_scale", trainer.scale_out)?;
    exp.manifest
        .set("architecture_trained", trainer.cfg.sparsity.name())?;
    exp.manifest.set("buffer_rows", buffer_rows)?;
    let (_, peak) = lab::store::memory();
    exp.manifest.set("peak_rss_bytes", peak)?;
    let sae_dir = exp.file("sae", "The SAE as a SAELens folder")?;
    if a.out.resume && sae_dir.is_dir() {
        // Written by this run before it was stopped: the same weights, written again.
        std::fs::remove_dir_all(&sae_dir)?;
    }
    trainer
        .to_sae(hook, hook_out)?
        .save(&sae_dir, &exp.manifest.model.name)?;
    exp.frame(
        "losses.parquet",
        &mut losses_frame(&history, batch as u64)?,
        LOSS_COLUMNS,
    )?;
    let what = match trainer.transcoder {
        true => "transcoder",
        false => "SAE",
    };
    lab::report::training_curves(&mut exp, &history, batch as u64, what)?;
    exp.finish()
}
