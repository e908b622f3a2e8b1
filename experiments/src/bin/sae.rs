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
use hooklens::analysis::dashboards::{
    dashboards_of, logit_effects, most_similar, DashboardOptions,
};
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
    /// Features to build dashboards of, e.g. `0..64,100` (default: the first 256).
    #[arg(long)]
    features: Option<String>,
    /// Top examples per feature, histogram bins, logit-effect tokens and similar features.
    #[arg(long, default_value_t = 20)]
    top_k: usize,
    #[arg(long, default_value_t = 40)]
    bins: usize,
    #[arg(long, default_value_t = 10)]
    logit_k: usize,
    #[arg(long, default_value_t = 5)]
    similar: usize,
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
    let features = match &a.features {
        Some(s) => lab::args::parse_ranges(s, sae.d_sae, "--features")?,
        None => (0..sae.d_sae.min(256)).collect(),
    };
    let opts = DashboardOptions {
        units: features,
        k: a.top_k,
        bins: a.bins,
        before: 12,
        after: 4,
        tokens: filter.clone(),
    };
    let hook = sae.hook.to_string();
    // Tokens over --max-norm count as inactive (the filter's other rules are the dashboards').
    let encode = |s: usize| {
        let x = store.read(s, &hook)?;
        let small: Vec<f32> = filter.norm_ok(&x)?.into_iter().map(f32::from).collect();
        let small = candle_core::Tensor::from_vec(small, (x.dim(0)?, 1), x.device())?;
        sae.encode(&x)?.broadcast_mul(&small).map_err(Into::into)
    };
    let bar =
        lab::args::progress_bar(2 * store.spec.tokens as u64, "feature dashboards", "tokens")?;
    let dash = exp.time("dashboards", || {
        dashboards_of(&store, "the SAE", sae.d_sae, &encode, &opts, &mut |n| {
            bar.inc(n as u64)
        })
    })?;
    bar.finish_and_clear();
    let dirs = sae.residual_directions(&model)?;
    let effects = dirs
        .as_ref()
        .map(|d| logit_effects(&model, d, &opts.units, a.logit_k))
        .transpose()?;
    let similar = most_similar(&sae.w_dec, &opts.units, a.similar)?;
    lab::report::sae_views(&mut exp, &sae, &recon, &ce, &similar, &opts.units)?;
    let np = lab::neuronpedia::features_json(
        &exp.manifest.model.name,
        &hook,
        &dash,
        effects.as_ref(),
        &similar,
        &tok,
    )?;
    exp.page("neuronpedia.json", "The feature dashboards in Neuronpedia's feature JSON (pos_str, freq_hist_data_bar_heights, activations, ...)", &serde_json::to_string(&np)?)?;
    lab::report::dashboard_views(
        &mut exp,
        &store,
        &format!("SAE at {hook}"),
        &dash,
        effects.as_ref(),
        Some(&similar),
        &tok,
    )?;
    exp.finish()
}
