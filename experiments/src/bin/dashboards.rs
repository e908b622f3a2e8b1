//! Unit dashboards over an activation store (from `capture`): for each MLP neuron (or any
//! stored unit) its top-k examples over the whole corpus with the tokens around them, its
//! activation histogram and its logit effects. Writes under `outputs/dashboards/<run>/`:
//!
//! - `units.parquet`, `top_examples.parquet`, `histograms.parquet`, `logit_effects.parquet`
//!   (columns documented in `manifest.json`);
//! - `dashboard.html`: one self-contained page to browse the units;
//! - `manifest.json`.

use anyhow::Result;
use clap::Parser;
use hooklens::store::ActivationStore;
use lab::args::{ModelArgs, RunArgs};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Parser, Serialize)]
#[command(
    about = "Neuron dashboards over a corpus: top examples, histograms and logit effects per unit of a stored hook",
    after_help = "Example: capture --model smollm2 --corpus FILE --hooks blocks.5.mlp.hook_post --run mlp5, then\n  dashboards --store outputs/capture/mlp5 --units 0..64"
)]
struct Args {
    /// The activation store (a `capture` run folder).
    #[arg(long)]
    store: PathBuf,
    /// The stored hook whose units to show. Default: the store's first `mlp.hook_post`, else its
    /// first hook.
    #[arg(long)]
    hook: Option<String>,
    /// The units shown and how much of each (kept at the top level of args.json, as before).
    #[command(flatten)]
    #[serde(flatten)]
    units: lab::features::UnitArgs,
    /// The model the store was captured with (default: the store's own, checked by sha256).
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
    let (mut exp, model, tok) = lab::Experiment::start("dashboards", &a.model, &a.out, &a)?;
    lab::store::check_store_model(&store, &exp.manifest.model.weights)?;
    let hook = lab::store::unit_hook(&store, a.hook.as_deref())?;
    a.units.browse(&mut exp, &store, (&model, &tok), &hook)?;
    exp.finish()
}
