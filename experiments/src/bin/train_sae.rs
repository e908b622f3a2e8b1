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

use anyhow::Result;
use clap::Parser;
use hooklens::store::ActivationStore;
use lab::args::{ModelArgs, RunArgs};
use lab::store::{CorpusArgs, Origin};
use lab::train_sae::{fit, run_hooks, write_results, Data, TrainArgs};
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
    if let Some(s) = &store {
        lab::store::check_store_model(s, &exp.manifest.model.weights)?;
    }
    let (hook, hook_out) = (a.hook.as_deref(), a.hook_out.as_deref());
    let hooks = run_hooks(&model, store.as_ref(), hook, hook_out)?;
    let origin = Origin::new(store.as_ref(), &model, &hooks, &a.corpus, &tok)?;
    let filter = a.tokens.filter(origin.special_tokens(&tok));
    let data = Data::new(&origin, &model, &hooks, a.corpus.seed, filter)?;
    let tokens = a.train.train_tokens.unwrap_or(origin.tokens());
    let cfg = a.train.config(data.d_in, tokens, a.corpus.seed)?;
    lab::progress::save_or_check_args(&dir, a.out.resume, &a)?;
    let (trainer, history) = fit(&mut exp, &model, cfg, &data, &a.train, dir, a.out.resume)?;
    exp.manifest.seed = Some(a.corpus.seed);
    exp.manifest.set("peak_rss_bytes", lab::store::memory().1)?;
    let batch = a.train.batch as u64;
    write_results(&mut exp, &trainer, &history, &hooks, batch, a.out.resume)?;
    exp.finish()
}
