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
use hooklens::analysis::ablation::{
    ablation_frame, ablation_jobs, source_points, top_neurons, Ablation, AblationRow, NeuronRank,
    Unit, ABLATION_COLUMNS,
};
use hooklens::analysis::sweep::{Metric, Sweep, Target};
use lab::args::{ModelArgs, PairArgs, RunArgs, SweepArgs};
use hooklens::data::PairBatch;
use lab::manifest::Manifest;
use lab::plot::{bar_chart, Heatmap};
use hooklens::NameFilter;
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
    #[arg(long, value_enum, default_value_t = NeuronRank::Mean, requires = "top_neurons")]
    rank_by: NeuronRank,
    /// Ablation kinds (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "zero")]
    ablation: Vec<Ablation>,
    /// Metrics (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "logit-diff,loss"
    )]
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
    lab::args::finish(run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let start = std::time::Instant::now();
    let (model, tok) = a.model.load().context("loading the model")?;
    let mut manifest = Manifest::new("ablate", &model, &a)?;
    manifest.record_time("load_model", start);
    let (pairs, batch) = a.data.load(&model, &tok)?;

    let mut units: Vec<Unit> = match a.unit.is_empty() {
        false => a
            .unit
            .iter()
            .map(|u| u.parse::<Unit>())
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
        let layers = match a.neuron_layers.is_empty() {
            true => (0..model.cfg.n_layers).collect(),
            false => a.neuron_layers.clone(),
        };
        units.extend(top_neurons(&model, &batch, &layers, k, a.rank_by)?);
    }
    for u in &units {
        u.check(&model)?;
    }
    anyhow::ensure!(!units.is_empty(), "no units to ablate");

    // Mean ablation reads the units' activations on the reference prompts (--reference, or
    // the dataset), resample on the dataset's other prompts.
    let wants = |k: Ablation| a.ablation.contains(&k);
    let points = || NameFilter::Points(source_points(&units));
    let dataset =
        match wants(Ablation::Resample) || (wants(Ablation::Mean) && a.reference.is_none()) {
            true => Some(model.run_with_cache(&batch.clean, points())?.1),
            false => None,
        };
    let reference = match (&a.reference, wants(Ablation::Mean)) {
        (Some(file), true) => {
            let r = reference_batch(file, &model, &tok, &a)?;
            Some((model.run_with_cache(&r.clean, points())?.1, r.lengths))
        }
        _ => None,
    };
    let mut jobs = vec![];
    for &kind in &a.ablation {
        let src = match (kind, &reference, &dataset) {
            (Ablation::Zero, ..) => None,
            (Ablation::Mean, Some((cache, lengths)), _) => Some((cache, lengths.as_slice())),
            (_, _, Some(cache)) => Some((cache, batch.lengths.as_slice())),
            _ => None,
        };
        jobs.extend(ablation_jobs(&units, kind, src, a.data.seed)?);
    }
    let sweeps = a
        .metric
        .iter()
        .map(|&m| {
            let target = Target::new(&batch, false)?;
            Sweep::new(
                &model,
                target,
                m,
                jobs.clone(),
                a.sweep.tokens_per_pass as usize,
            )
        })
        .collect::<hooklens::Result<Vec<_>>>()?;

    let t0 = std::time::Instant::now();
    let (run, outcome) = lab::args::run_sweep(&a.out, &a.sweep, "ablate", &a, &sweeps)?;
    manifest.record_time("sweep", t0);
    manifest.interventions = outcome.fired.clone();
    manifest.seed = Some(a.data.seed);
    manifest.set("prompts", pairs.len())?;
    manifest.set("units", units.len())?;
    manifest.set("shard", a.sweep.shard)?;

    let mut rows = vec![];
    for (s, sweep) in sweeps.iter().enumerate() {
        for (j, v) in outcome.values[s].iter().enumerate() {
            if let Some(v) = v {
                rows.push(AblationRow {
                    unit: units[j % units.len()],
                    ablation: a.ablation[j / units.len()],
                    metric: a.metric[s],
                    baseline: sweep.baseline(),
                    ablated: *v,
                });
            }
        }
    }
    let mut df = ablation_frame(&rows)?;
    run.write_table(&mut manifest, "ablate.parquet", &mut df, ABLATION_COLUMNS)?;
    if a.sweep.shard.is_none() {
        plots(&a, &model, &rows, &run, &mut manifest)?;
    }
    run.write_manifest(&manifest)?;

    let mut out = std::io::stdout().lock();
    for (s, sweep) in sweeps.iter().enumerate() {
        writeln!(
            out,
            "{}: baseline {:.4}",
            a.metric[s].name(),
            sweep.baseline()
        )?;
        let mut top: Vec<&AblationRow> = rows.iter().filter(|r| r.metric == a.metric[s]).collect();
        top.sort_by(|x, y| {
            (y.ablated - y.baseline)
                .abs()
                .total_cmp(&(x.ablated - x.baseline).abs())
        });
        for r in top.iter().take(5) {
            writeln!(
                out,
                "  {:<8} {:<8} {:+.4}",
                r.unit.to_string(),
                r.ablation.name(),
                r.ablated - r.baseline
            )?;
        }
    }
    writeln!(out, "wrote {}", run.path.display())?;
    Ok(())
}

/// The reference prompts of `file` (one per line) as a batch.
fn reference_batch(
    file: &PathBuf,
    model: &hooklens::HookedTransformer,
    tok: &hooklens::Tokenizer,
    a: &Args,
) -> Result<PairBatch> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let prompts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    anyhow::ensure!(
        !prompts.is_empty(),
        "{}: no reference prompts (one per line)",
        file.display()
    );
    let bos = a.data.bos.resolve(model);
    let ids = prompts
        .iter()
        .map(|p| tok.encode_prompt(p, bos))
        .collect::<hooklens::Result<Vec<_>>>()?;
    let lengths = ids.iter().map(Vec::len).collect();
    let clean = hooklens::tokenizer::pad_batch(&ids, 0, model.device())?;
    Ok(PairBatch {
        corrupted: clean.clone(),
        clean,
        lengths,
        answers: vec![],
        wrong: vec![],
    })
}

/// The heatmaps of head deltas and the bar charts of the top units, per metric and ablation.
fn plots(
    a: &Args,
    model: &hooklens::HookedTransformer,
    rows: &[AblationRow],
    run: &lab::run::RunDir,
    manifest: &mut Manifest,
) -> Result<()> {
    let (nl, nh) = (model.cfg.n_layers, model.cfg.n_heads);
    for &metric in &a.metric {
        for &kind in &a.ablation {
            let these: Vec<&AblationRow> = rows
                .iter()
                .filter(|r| r.metric == metric && r.ablation == kind)
                .collect();
            let what = format!("{} ablation, change in {}", kind.name(), metric.name());
            let mut grid = vec![vec![0f32; nh]; nl];
            let mut any_head = false;
            for r in &these {
                if let Unit::Head { layer, head } = r.unit {
                    grid[layer][head] = r.ablated - r.baseline;
                    any_head = true;
                }
            }
            if any_head {
                let file = format!("heads_{}_{}.png", metric.name(), kind.name());
                Heatmap {
                    title: &format!("Heads: {what}"),
                    values: &grid,
                    row_labels: &(0..nl).map(|l| format!("L{l}")).collect::<Vec<_>>(),
                    col_labels: &(0..nh).map(|h| format!("H{h}")).collect::<Vec<_>>(),
                    x_desc: "head",
                    y_desc: "layer",
                    diverging: true,
                    ..Default::default()
                }
                .write(&run.file(&file))?;
                manifest.add_file(
                    &file,
                    &format!("layers x heads: {what} (ablated - baseline; red raises it, blue lowers it)"),
                );
            }
            let mut top: Vec<(String, f32)> = these
                .iter()
                .map(|r| (r.unit.to_string(), r.ablated - r.baseline))
                .collect();
            top.sort_by(|x, y| y.1.abs().total_cmp(&x.1.abs()));
            top.truncate(a.top as usize);
            let file = format!("top_{}_{}.png", metric.name(), kind.name());
            bar_chart(
                &run.file(&file),
                &format!("Top units: {what}"),
                &top,
                &format!("ablated - baseline {}", metric.name()),
            )?;
            manifest.add_file(
                &file,
                &format!("the units with the largest |change|: {what}"),
            );
        }
    }
    Ok(())
}
