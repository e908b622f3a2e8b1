//! Activation patching sweeps (TransformerLens's `get_act_patch_*`): patch clean activations
//! into the corrupted run, cell by cell of each grid, and compare with attribution patching's
//! linear estimate. Writes under `outputs/patch/<run>/`:
//!
//! - `patch.parquet`: one row per (grid cell, method), long format (columns in `manifest.json`);
//! - `<grid>.png`: one heatmap per grid, token strings on the position axis;
//! - `attribution_vs_patching.png`: attribution estimate against the actual patched value;
//! - `manifest.json`, `args.json` and `progress.jsonl` (finished batches, for --resume).

use anyhow::Result;
use clap::Parser;
use hooklens::analysis::patching::{Grid, Patching};
use hooklens::analysis::sweep::Metric;
use lab::args::{choice, choice_name, ModelArgs, PairArgs, RunArgs, SweepArgs};
use lab::plot::token_labels;
use serde::Serialize;

#[derive(Parser, Serialize)]
#[command(
    about = "Activation patching: clean activations patched into the corrupted run, grid by grid, beside attribution patching",
    after_help = "Example: patch --model gpt2 --ioi 8 --grids resid_pre,attn_head_out_all_pos"
)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: PairArgs,
    /// Grids to patch (comma-separated). attn_head_out_by_pos has layers x heads x positions
    /// cells; add it by name.
    #[arg(long, value_parser = choice::<Grid>(), value_delimiter = ',', default_value = "resid_pre,attn_out,mlp_out,attn_head_out_all_pos,attn_head_pattern_all_pos")]
    grids: Vec<Grid>,
    /// The metric, normalised to 0 (corrupted) .. 1 (clean).
    #[arg(long, value_parser = choice::<Metric>(), default_value = "logit-diff")]
    metric: Metric,
    /// Skip attribution patching.
    #[arg(long)]
    no_attribution: bool,
    #[command(flatten)]
    sweep: SweepArgs,
    #[command(flatten)]
    out: RunArgs,
}

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(mut a: Args) -> Result<()> {
    let (mut exp, model, tok) = lab::Experiment::load("patch", &a.model, &a)?;
    let (pairs, batch) = a.data.load(&model, &tok)?;
    if model.cfg.attn_only {
        a.grids.retain(|g| *g != Grid::MlpOut); // nothing to patch
    }
    a.grids = lab::args::distinct(a.grids, "--grids", choice_name);
    let bar = lab::args::spinner("the clean and corrupted runs over every pair");
    let p = Patching::new(
        &model,
        &batch,
        &a.grids,
        a.metric,
        a.sweep.tokens_per_pass as usize,
    )?;
    bar.finish_and_clear();
    let outcome = exp.sweep(&a.out, &a.sweep, &a, std::slice::from_ref(&p.sweep))?;
    exp.manifest.set("pairs", pairs.len())?;
    exp.manifest.set("clean_metric", p.scale.clean)?;
    exp.manifest.set("corrupted_metric", p.scale.corrupted)?;
    let mut rows = p.rows(&outcome.values[0]);
    // Attribution is one pass for every cell: the unsharded run (or the merge) does it.
    if !a.no_attribution && a.sweep.shards.shard.is_none() {
        let attribution = exp.time("attribution", || p.attribution_rows(&model))?;
        rows.extend(attribution);
    }
    exp.table("patch.parquet", rows.as_slice())?;
    if a.sweep.shards.shard.is_none() {
        let n_pos = batch.clean.dim(1)?;
        let positions: Vec<String> = match batch.lengths.iter().all(|&l| l == n_pos) {
            true => token_labels(&tok, &batch.clean.get(0)?.to_vec1()?)?,
            false => (0..n_pos).map(|i| i.to_string()).collect(),
        };
        lab::report::patching_plots(&mut exp, &p, &rows, &a.grids, &positions)?;
    }
    lab::report::patching_summary(&p, &rows, &a.grids, pairs.len())?;
    exp.finish()
}
