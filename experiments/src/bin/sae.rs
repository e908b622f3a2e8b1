//! An SAE on a model, measured and browsed over an activation store (from `capture`). Writes
//! under `outputs/sae/<run>/`:
//!
//! - `metrics.parquet`: L0, MSE, explained variance, dead and dense features over the store, and
//!   the next-token loss clean, with the SAE spliced in and with its hook zero-ablated (CE loss
//!   recovered) over the store's first contexts; the binary prints it as one line;
//! - `density.parquet`: each feature's density;
//! - feature dashboards as `dashboards` writes them (`units`, `top_examples`, `histograms`,
//!   `logit_effects` from W_dec·W_U, `dashboard.html`), and `similar.parquet`: each feature's
//!   nearest features by decoder direction; `neuronpedia.json`: the same in Neuronpedia's
//!   feature JSON;
//! - `manifest.json`.

use anyhow::Result;
use clap::Parser;
use hooklens::sae::{ce_loss, reconstruction, Sae};
use hooklens::store::{ActivationStore, Source};
use lab::args::{ModelArgs, RunArgs};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Parser, Serialize)]
#[command(
    about = "Measure an SAE over an activation store (L0, explained variance, CE loss recovered, density) and browse its features",
    after_help = "Example: capture --model smollm2 --corpus FILE --hooks blocks.6.hook_resid_post --run r6, then\n  sae --sae PATH/TO/SAELENS_FOLDER --store outputs/capture/r6"
)]
struct Args {
    /// A SAELens folder (cfg.json + sae_weights.safetensors).
    #[arg(long)]
    sae: PathBuf,
    /// The activation store holding the SAE's hook (a `capture` run folder).
    #[arg(long)]
    store: PathBuf,
    /// The tokens measured, spliced and browsed: as the SAE was trained (`train_sae` takes the
    /// same flags).
    #[command(flatten)]
    tokens: lab::store::TokenArgs,
    /// Contexts of the store the CE loss is measured on (three forward passes each).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    ce_contexts: u32,
    /// The features browsed (flags kept at the top level of args.json, as before).
    #[command(flatten)]
    #[serde(flatten)]
    features: lab::features::FeatureArgs,
    /// The model (default: the store's own, checked by sha256).
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    out: RunArgs,
}

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(mut a: Args) -> Result<()> {
    let store = ActivationStore::open(&a.store)?;
    lab::store::default_model(&mut a.model, &store);
    let (mut exp, model, tok) = lab::Experiment::start("sae", &a.model, &a.out, &a)?;
    lab::store::check_store_model(&store, &exp.manifest.model.weights)?;
    let sae = Sae::load(&a.sae, model.device())?;
    sae.check_fits(&model)?;
    let filter = a.tokens.filter(lab::store::special_tokens(&store));
    let (input, _) = store.spec.hook(&sae.hook.to_string())?;
    let (target, _) = store.spec.hook(&sae.writes().to_string())?;
    let bar = lab::args::progress_bar(store.spec.tokens as u64, "reconstruction", "tokens")?;
    let recon = exp.time("reconstruction", || {
        reconstruction(
            &sae,
            &Source::Disk(&store),
            (input, target),
            &filter,
            &mut |n| bar.inc(n as u64),
        )
    })?;
    bar.finish_and_clear();
    let contexts = lab::store::store_contexts(&store, a.ce_contexts as usize, model.device())?;
    let ce = exp.time("ce_loss", || ce_loss(&model, &sae, &contexts, &filter))?;
    let shown = a
        .features
        .browse(&mut exp, &store, (&model, &tok), &sae, &filter)?;
    lab::report::sae_views(&mut exp, &sae, &recon, &ce, &shown.similar, &shown.features)?;
    exp.finish()
}
