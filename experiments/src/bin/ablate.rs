//! Ablation sweeps: knock out every head, every MLP layer, a layer's top neurons or any listed
//! units by zero, mean or resample ablation, and measure the loss, the logit difference or the
//! answer's probability. Writes under `outputs/ablate/<run>/`:
//!
//! - `ablate.parquet`: one row per (unit, ablation, metric) (columns in `manifest.json`);
//! - `heads_<metric>_<ablation>.png`: layers x heads heatmap of the change;
//! - `top_<metric>_<ablation>.png`: bar chart of the units that change the metric most;
//! - `manifest.json`, `args.json` and `progress.jsonl` (finished batches, for --resume).

use anyhow::Result;
use clap::Parser;
use hooklens::analysis::ablation::{Ablation, AblationSweep};
use hooklens::analysis::sweep::Metric;
use lab::args::{choice, choice_name, ModelArgs, PairArgs, RunArgs, SweepArgs, UnitArgs};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Parser, Serialize)]
#[command(
    about = "Ablation sweep: zero, mean or resample-ablate heads, MLPs or neurons and measure the loss, logit difference or answer probability",
    after_help = "Units: L1H2 is head 2 of layer 1, MLP0 the MLP of layer 0, L0N42 neuron 42 of layer 0.\n\nExample: ablate --model gpt2 --ioi 20 --ablation zero,mean --metric logit-diff,loss"
)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: PairArgs,
    #[command(flatten)]
    #[serde(flatten)] // args.json keeps the flags at the top level, as before
    units: UnitArgs,
    /// Ablation kinds (comma-separated).
    #[arg(long, value_parser = choice::<Ablation>(), value_delimiter = ',', default_value = "zero")]
    ablation: Vec<Ablation>,
    /// Metrics (comma-separated).
    #[arg(long, value_parser = choice::<Metric>(), value_delimiter = ',', default_value = "logit-diff,loss")]
    metric: Vec<Metric>,
    /// What mean ablation averages over: a file of prompts (one per line; the mean at each
    /// position), or an activation store from `capture` (its corpus means, the same at every
    /// position; it must hold each unit's hook: hook_z for heads, hook_mlp_out for MLPs,
    /// mlp.hook_post for neurons). Default: the dataset's clean prompts.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Bars in the top-units charts.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
    top: u32,
    #[command(flatten)]
    sweep: SweepArgs,
    #[command(flatten)]
    out: RunArgs,
}

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(mut a: Args) -> Result<()> {
    a.ablation = lab::args::distinct(a.ablation, "--ablation", choice_name);
    a.metric = lab::args::distinct(a.metric, "--metric", choice_name);
    if a.reference.is_some() && !a.ablation.contains(&Ablation::Mean) {
        anyhow::bail!("--reference has no effect without --ablation mean: it is what mean ablation averages over");
    }
    let (mut exp, model, tok) = lab::Experiment::load("ablate", &a.model, &a)?;
    let (pairs, batch) = a.data.load(&model, &tok)?;
    let tokens_per_pass = a.sweep.tokens_per_pass as usize;
    let units = a.units.select(&model, &batch, tokens_per_pass)?;
    let bos = a.data.bos.resolve(&model);
    let weights = &exp.manifest.model.weights;
    let reference = lab::args::mean_reference(a.reference.as_deref(), &model, &tok, bos, weights)?;
    let bar = lab::args::spinner("the unablated run over every prompt");
    let plan = AblationSweep::new(
        &model,
        &batch,
        units,
        a.ablation.clone(),
        &a.metric,
        &reference,
        a.data.seed,
        tokens_per_pass,
    )?;
    bar.finish_and_clear();
    let outcome = exp.sweep(&a.out, &a.sweep, &a, &plan.sweeps)?;
    exp.manifest.seed = Some(a.data.seed);
    exp.manifest.set("prompts", pairs.len())?;
    exp.manifest.set("units", plan.units.len())?;
    let rows = plan.rows(&outcome.values);
    exp.table("ablate.parquet", rows.as_slice())?;
    if a.sweep.shards.shard.is_none() {
        lab::report::ablation_plots(&mut exp, &rows, &a.metric, &a.ablation, a.top as usize)?;
    }
    lab::report::ablation_summary(&plan, &rows)?;
    exp.finish()
}
