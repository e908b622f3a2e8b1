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
use hooklens::analysis::dashboards::{
    dashboards, logit_effects, output_directions, DashboardOptions,
};
use hooklens::store::{ActivationStore, TokenFilter};
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
    /// Units (the hook's last axis, flattened), comma-separated numbers and ranges: `0..64,100`.
    /// Default: all.
    #[arg(long)]
    units: Option<String>,
    /// Top examples per unit.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    top_k: u32,
    /// Histogram bins.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=1000))]
    bins: u32,
    /// Tokens shown before and after each example.
    #[arg(long, default_value_t = 12)]
    before: usize,
    #[arg(long, default_value_t = 4)]
    after: usize,
    /// Count BOS and the document separator too (left out by default: their activations are
    /// outliers in most models).
    #[arg(long)]
    include_bos: bool,
    /// Tokens listed per unit as raised and lowered by its logit effect.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    logit_k: u32,
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
    let width = store.spec.hook(&hook)?.1.width();
    let units = match &a.units {
        Some(s) => lab::args::parse_ranges(s, width, "--units")?,
        None => (0..width).collect(),
    };
    let skip_tokens = match a.include_bos {
        true => vec![],
        false => lab::store::special_tokens(&store),
    };
    let opts = DashboardOptions {
        units,
        k: a.top_k as usize,
        bins: a.bins as usize,
        before: a.before,
        after: a.after,
        tokens: TokenFilter {
            skip_tokens,
            ..TokenFilter::all()
        },
    };
    let bar = lab::args::progress_bar(
        2 * store.spec.tokens as u64,
        "two passes over the store",
        "tokens",
    )?;
    let dash = exp.time("dashboards", || {
        dashboards(&store, &hook, &opts, &mut |n| bar.inc(n as u64))
    })?;
    bar.finish_and_clear();
    let point = model.hook_point(&hook)?;
    let effects = exp.time("logit_effects", || {
        output_directions(&model, &point)?
            .map(|d| logit_effects(&model, &d, &opts.units, a.logit_k as usize))
            .transpose()
    })?;
    exp.manifest.set("hook", &hook)?;
    exp.manifest
        .set("tokens_counted", dash.first().map(|d| d.tokens))?;
    lab::report::dashboard_views(&mut exp, &store, &hook, &dash, effects.as_ref(), None, &tok)?;
    exp.finish()
}
