//! Ablation sweeps: knock out every head, every MLP layer, a layer's top neurons or any listed
//! units by zero, mean or resample ablation, and measure the loss, the logit difference or the
//! answer's probability. Writes under `outputs/ablate/<run>/`:
//!
//! - `ablate.parquet`: one row per (unit, ablation, metric) (columns in `manifest.json`);
//! - `heads_<metric>_<ablation>.png`: layers x heads heatmap of the change;
//! - `top_<metric>_<ablation>.png`: bar chart of the units that change the metric most;
//! - `manifest.json`, `args.json` and `progress.jsonl` (finished batches, for --resume).

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use hooklens::analysis::ablation::{ablation_jobs, ablation_rows, source_points, top_neurons};
use hooklens::analysis::ablation::{Ablation, AblationRow, NeuronRank, Unit};
use hooklens::analysis::sweep::{Metric, Sweep, Target};
use hooklens::{ActivationCache, HookedTransformer, NameFilter, Tokenizer};
use lab::args::{choice, ModelArgs, PairArgs, RunArgs, SweepArgs};
use lab::plot::{bar_chart, largest};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum UnitSet {
    /// Every attention head.
    Heads,
    /// Every MLP layer.
    Mlps,
}

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
    /// Which units to ablate (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "heads,mlps")]
    units: Vec<UnitSet>,
    /// Ablate exactly these units instead (comma-separated, e.g. L1H2,MLP0,L0N42).
    #[arg(long, value_delimiter = ',', conflicts_with = "units")]
    unit: Vec<String>,
    /// Also ablate the top K neurons of each of --neuron-layers.
    #[arg(long, value_name = "K")]
    top_neurons: Option<usize>,
    /// Layers for --top-neurons (comma-separated; default every layer).
    #[arg(long, value_delimiter = ',', requires = "top_neurons")]
    neuron_layers: Vec<usize>,
    /// How --top-neurons ranks a layer's neurons.
    #[arg(long, value_parser = choice::<NeuronRank>(), default_value = "mean", requires = "top_neurons")]
    rank_by: NeuronRank,
    /// Ablation kinds (comma-separated).
    #[arg(long, value_parser = choice::<Ablation>(), value_delimiter = ',', default_value = "zero")]
    ablation: Vec<Ablation>,
    /// Metrics (comma-separated).
    #[arg(long, value_parser = choice::<Metric>(), value_delimiter = ',', default_value = "logit-diff,loss")]
    metric: Vec<Metric>,
    /// A file of reference prompts (one per line) for mean ablation; default the dataset's
    /// clean prompts.
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

fn run(a: Args) -> Result<()> {
    let (mut exp, model, tok) = lab::Experiment::load("ablate", &a.model, &a)?;
    let (pairs, batch) = a.data.load(&model, &tok)?;
    let mut units: Vec<Unit> = match a.unit.is_empty() {
        false => a
            .unit
            .iter()
            .map(|u| u.parse())
            .collect::<hooklens::Result<_>>()?,
        true => a
            .units
            .iter()
            .flat_map(|s| match s {
                UnitSet::Heads => Unit::all_heads(&model),
                UnitSet::Mlps => Unit::all_mlps(&model),
            })
            .collect(),
    };
    if let Some(k) = a.top_neurons {
        let all: Vec<usize> = (0..model.cfg.n_layers).collect();
        let layers = if a.neuron_layers.is_empty() {
            &all
        } else {
            &a.neuron_layers
        };
        units.extend(top_neurons(&model, &batch, layers, k, a.rank_by)?);
    }
    units.iter().try_for_each(|u| u.check(&model))?;
    anyhow::ensure!(!units.is_empty(), "no units to ablate");
    // Mean ablation reads the units' activations on the reference prompts (--reference, or the
    // dataset), resample on the dataset's other prompts.
    let wants = |k: Ablation| a.ablation.contains(&k);
    let points = NameFilter::Points(source_points(&units));
    let dataset =
        match wants(Ablation::Resample) || (wants(Ablation::Mean) && a.reference.is_none()) {
            true => Some(model.run_with_cache(&batch.clean, points.clone())?.1),
            false => None,
        };
    let reference = match (&a.reference, wants(Ablation::Mean)) {
        (Some(file), true) => Some(reference_cache(
            file,
            &model,
            &tok,
            a.data.bos.resolve(&model),
            points,
        )?),
        _ => None,
    };
    let mut jobs = vec![];
    for &kind in &a.ablation {
        let source = match (kind, &reference, &dataset) {
            (Ablation::Zero, ..) => None,
            (Ablation::Mean, Some((cache, lengths)), _) => Some((cache, lengths.as_slice())),
            (_, _, Some(cache)) => Some((cache, batch.lengths.as_slice())),
            _ => None,
        };
        jobs.extend(ablation_jobs(&units, kind, source, a.data.seed)?);
    }
    let sweeps = a
        .metric
        .iter()
        .map(|&m| {
            Sweep::new(
                &model,
                Target::new(&batch, false)?,
                m,
                jobs.clone(),
                a.sweep.tokens_per_pass as usize,
            )
        })
        .collect::<hooklens::Result<Vec<_>>>()?;
    let outcome = exp.sweep(&a.out, &a.sweep, &a, &sweeps)?;
    exp.manifest.seed = Some(a.data.seed);
    exp.manifest.set("prompts", pairs.len())?;
    exp.manifest.set("units", units.len())?;
    let rows: Vec<AblationRow> = sweeps
        .iter()
        .zip(&a.metric)
        .zip(&outcome.values)
        .flat_map(|((s, &m), v)| ablation_rows(&units, &a.ablation, m, s.baseline(), v))
        .collect();
    exp.table("ablate.parquet", rows.as_slice())?;
    let mut out = std::io::stdout().lock();
    for (&metric, sweep) in a.metric.iter().zip(&sweeps) {
        writeln!(out, "{}: baseline {:.4}", metric.name(), sweep.baseline())?;
        for &kind in &a.ablation {
            let these: Vec<&AblationRow> = rows
                .iter()
                .filter(|r| r.metric == metric && r.ablation == kind)
                .collect();
            let what = format!("{} ablation, change in {}", kind.name(), metric.name());
            let mut grid = vec![vec![0f32; model.cfg.n_heads]; model.cfg.n_layers];
            for r in &these {
                if let Unit::Head { layer, head } = r.unit {
                    grid[layer][head] = r.ablated - r.baseline;
                }
            }
            let top = largest(
                these
                    .iter()
                    .map(|r| (r.unit.to_string(), r.ablated - r.baseline)),
                a.top as usize,
            );
            if a.sweep.shard.is_some() {
                continue; // a shard's plots would show only its slice
            }
            if these.iter().any(|r| matches!(r.unit, Unit::Head { .. })) {
                let file = format!("heads_{}_{}.png", metric.name(), kind.name());
                exp.heads(&file, &format!("layers x heads: {what} (ablated - baseline; red raises it, blue lowers it)"), &format!("Heads: {what}"), &grid, true)?;
            }
            let path = exp.file(
                &format!("top_{}_{}.png", metric.name(), kind.name()),
                &format!("the units with the largest |change|: {what}"),
            )?;
            bar_chart(
                &path,
                &format!("Top units: {what}"),
                &top,
                &format!("ablated - baseline {}", metric.name()),
            )?;
        }
        let top = largest(
            rows.iter().filter(|r| r.metric == metric).map(|r| {
                (
                    format!("{:<8} {:<8}", r.unit.to_string(), r.ablation.name()),
                    r.ablated - r.baseline,
                )
            }),
            5,
        );
        for (name, delta) in top {
            writeln!(out, "  {name} {delta:+.4}")?;
        }
    }
    exp.finish()
}

/// The activations at `points` of the reference prompts in `file` (one per line), with each
/// prompt's length.
fn reference_cache(
    file: &PathBuf,
    model: &HookedTransformer,
    tok: &Tokenizer,
    bos: bool,
    points: NameFilter,
) -> Result<(ActivationCache, Vec<usize>)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let prompts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    anyhow::ensure!(
        !prompts.is_empty(),
        "{}: no reference prompts (one per line)",
        file.display()
    );
    let ids = prompts
        .iter()
        .map(|p| tok.encode_prompt(p, bos))
        .collect::<hooklens::Result<Vec<_>>>()?;
    let tokens = hooklens::tokenizer::pad_batch(&ids, 0, model.device())?;
    Ok((
        model.run_with_cache(&tokens, points)?.1,
        ids.iter().map(Vec::len).collect(),
    ))
}
