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
use hooklens::analysis::patching::{Grid, PatchRow, Patching};
use hooklens::analysis::sweep::Metric;
use lab::args::{choice, ModelArgs, PairArgs, RunArgs, SweepArgs};
use lab::plot::{scatter, token_labels, Heatmap};
use lab::tables::head_label;
use serde::Serialize;
use std::io::Write;

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
    a.grids.dedup();
    let p = Patching::new(
        &model,
        &batch,
        &a.grids,
        a.metric,
        a.sweep.tokens_per_pass as usize,
    )?;
    let outcome = exp.sweep(&a.out, &a.sweep, &a, std::slice::from_ref(&p.sweep))?;
    exp.manifest.set("pairs", pairs.len())?;
    exp.manifest.set("clean_metric", p.scale.clean)?;
    exp.manifest.set("corrupted_metric", p.scale.corrupted)?;
    let mut rows = p.rows(&outcome.values[0]);
    // Attribution is one pass for every cell: the unsharded run (or the merge) does it.
    if !a.no_attribution && a.sweep.shard.is_none() {
        let attribution = exp.time("attribution", || p.attribution_rows(&model))?;
        rows.extend(attribution);
    }
    exp.table("patch.parquet", rows.as_slice())?;
    let n_pos = batch.clean.dim(1)?;
    let positions: Vec<String> = match batch.lengths.iter().all(|&l| l == n_pos) {
        true => token_labels(&tok, &batch.clean.get(0)?.to_vec1()?)?,
        false => (0..n_pos).map(|i| i.to_string()).collect(),
    };
    let layers: Vec<String> = (0..model.cfg.n_layers).map(|l| format!("L{l}")).collect();
    let heads: Vec<String> = (0..model.cfg.n_heads).map(|h| format!("H{h}")).collect();
    let layer_heads: Vec<String> = (0..model.cfg.n_layers)
        .flat_map(|l| (0..model.cfg.n_heads).map(move |h| head_label(l, h)))
        .collect();
    for &g in a.grids.iter().filter(|_| a.sweep.shard.is_none()) {
        let values = p.grid(g, &rows, "activation")?;
        let (rows_n, cols_n) = (
            values.dims()[..values.rank() - 1].iter().product::<usize>(),
            values.dims()[values.rank() - 1],
        );
        let values: Vec<Vec<f32>> = values.reshape((rows_n, cols_n))?.to_vec2()?; // [layer (× head), pos or head]
        let (row_labels, col_labels, x_desc, y_desc) = match g.axes() {
            [_, "pos"] => (&layers, &positions, "position", "layer"),
            [_, "head"] => (&layers, &heads, "head", "layer"),
            _ => (&layer_heads, &positions, "position", "layer and head"),
        };
        let title = format!(
            "Patching {} ({} restored: 0 corrupted, 1 clean)",
            g.name(),
            a.metric.name()
        );
        let heatmap = Heatmap {
            title: &title,
            values: &values,
            row_labels,
            col_labels,
            x_desc,
            y_desc,
            diverging: true,
            ..Default::default()
        };
        exp.heatmap(
            &format!("{}.png", g.name()),
            &format!(
                "{}: normalised metric with each cell patched from the clean run",
                g.name()
            ),
            &heatmap,
        )?;
    }
    if !a.no_attribution && a.sweep.shard.is_none() {
        let get = |g: Grid, method: &'static str| {
            rows.iter()
                .filter(move |r| r.cell.grid == g && r.method == method)
        };
        let groups: Vec<(String, Vec<(f32, f32)>)> = a
            .grids
            .iter()
            .map(|&g| {
                (
                    g.name().to_string(),
                    get(g, "attribution")
                        .zip(get(g, "activation"))
                        .map(|(x, y)| (x.value, y.value))
                        .collect(),
                )
            })
            .collect();
        let path = exp.file("attribution_vs_patching.png", "each grid cell: the linear estimate (x) against the patched value (y); on the diagonal the linear approximation holds")?;
        scatter(
            &path,
            &format!(
                "Attribution vs activation patching ({}, normalised)",
                a.metric.name()
            ),
            &groups,
            "attribution patching estimate",
            "activation patching",
        )?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: clean {:.4}, corrupted {:.4} ({} pairs)",
        a.metric.name(),
        p.scale.clean,
        p.scale.corrupted,
        pairs.len()
    )?;
    for &g in &a.grids {
        let best = rows
            .iter()
            .filter(|r| r.cell.grid == g && r.method == "activation")
            .max_by(|x, y| x.value.abs().total_cmp(&y.value.abs()));
        if let Some(PatchRow { cell: c, value, .. }) = best {
            let head = c.head.map_or(String::new(), |h| format!("H{h}"));
            let pos = c.pos.map_or(String::new(), |p| format!(" pos {p}"));
            writeln!(
                out,
                "  {:<26} strongest L{}{head}{pos} = {value:+.3}",
                g.name(),
                c.layer
            )?;
        }
    }
    exp.finish()
}
