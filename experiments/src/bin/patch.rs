//! Activation patching sweeps (TransformerLens's `get_act_patch_*`): patch clean activations
//! into the corrupted run, cell by cell of each grid, and compare with attribution patching's
//! linear estimate. Writes under `outputs/patch/<run>/`:
//!
//! - `patch.parquet`: one row per (grid cell, method), long format (columns in `manifest.json`);
//! - `<grid>.png`: one heatmap per grid, token strings on the position axis;
//! - `attribution_vs_patching.png`: attribution estimate against the actual patched value;
//! - `manifest.json`, `args.json` and `progress.jsonl` (finished batches, for --resume).

use anyhow::{bail, Context, Result};
use clap::Parser;
use hooklens::analysis::patching::{
    attribution, clean_points, patch_frame, Cell, Grid, PatchRow, PATCH_COLUMNS,
};
use hooklens::analysis::sweep::{Metric, Sweep, Target};
use lab::args::{ModelArgs, PairArgs, RunArgs, SweepArgs};
use lab::manifest::Manifest;
use lab::plot::{scatter, Heatmap};
use hooklens::NameFilter;
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
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "resid_pre,attn_out,mlp_out,attn_head_out_all_pos,attn_head_pattern_all_pos"
    )]
    grids: Vec<Grid>,
    /// The metric, normalised to 0 (corrupted) .. 1 (clean).
    #[arg(long, value_enum, default_value_t = Metric::LogitDiff)]
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
    lab::args::finish(run(Args::parse()))
}

fn run(mut a: Args) -> Result<()> {
    let start = std::time::Instant::now();
    let (model, tok) = a.model.load().context("loading the model")?;
    let mut manifest = Manifest::new("patch", &model, &a)?;
    manifest.record_time("load_model", start);
    let (pairs, batch) = a.data.load(&model, &tok)?;
    if model.cfg.attn_only {
        a.grids.retain(|g| *g != Grid::MlpOut); // nothing to patch
    }
    a.grids.dedup();

    let (clean_logits, clean) = model.run_with_cache(
        &batch.clean,
        NameFilter::Points(clean_points(&model, &a.grids)),
    )?;
    let clean_value = mean(
        &a.metric
            .of_logits(&clean_logits, &Target::new(&batch, false)?)?,
    );
    let target = Target::new(&batch, true)?;
    let n_pos = batch.clean.dim(1)?;
    let cells: Vec<Cell> = a
        .grids
        .iter()
        .map(|g| g.cells(&model, n_pos))
        .collect::<hooklens::Result<Vec<_>>>()?
        .concat();
    let jobs = cells
        .iter()
        .map(|c| c.job(&clean))
        .collect::<hooklens::Result<Vec<_>>>()?;
    let sweep = Sweep::new(
        &model,
        target.clone(),
        a.metric,
        jobs,
        a.sweep.tokens_per_pass as usize,
    )?;
    let corrupted_value = sweep.baseline();
    let span = clean_value - corrupted_value;
    if span.abs() < 1e-6 {
        bail!(
            "the clean and corrupted prompts give the same {} ({clean_value:.6}): there is nothing for patching to restore; use pairs whose answers differ",
            a.metric.name()
        );
    }
    let t0 = std::time::Instant::now();
    let (run, outcome) =
        lab::args::run_sweep(&a.out, &a.sweep, "patch", &a, std::slice::from_ref(&sweep))?;
    manifest.record_time("sweep", t0);
    manifest.interventions = outcome.fired.clone();
    manifest.set("pairs", pairs.len())?;
    manifest.set("clean_metric", clean_value)?;
    manifest.set("corrupted_metric", corrupted_value)?;
    manifest.set("shard", a.sweep.shard)?;

    let norm = |raw: f32| (raw - corrupted_value) / span;
    let mut rows: Vec<PatchRow> = cells
        .iter()
        .zip(&outcome.values[0])
        .filter_map(|(cell, v)| {
            v.map(|raw| PatchRow {
                cell: *cell,
                method: "activation",
                raw,
                value: norm(raw),
            })
        })
        .collect();
    // Attribution is one pass for every cell: the unsharded run (or the merge) does it.
    if !a.no_attribution && a.sweep.shard.is_none() {
        let t0 = std::time::Instant::now();
        let est = attribution(&model, &target, a.metric, &clean, &cells)?;
        manifest.record_time("attribution", t0);
        rows.extend(cells.iter().zip(est).map(|(cell, d)| PatchRow {
            cell: *cell,
            method: "attribution",
            raw: corrupted_value + d,
            value: norm(corrupted_value + d),
        }));
    }
    let mut df = patch_frame(&rows)?;
    run.write_table(&mut manifest, "patch.parquet", &mut df, PATCH_COLUMNS)?;
    if a.sweep.shard.is_none() {
        let ids = batch.clean.get(0)?.to_vec1::<u32>()?;
        let same_len = batch.lengths.iter().all(|&l| l == n_pos);
        let labels: Vec<String> = match same_len {
            true => tok
                .to_str_tokens(&ids)?
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{i} {}", s.replace(' ', "_").replace('\n', "\\n")))
                .collect(),
            false => (0..n_pos).map(|i| i.to_string()).collect(),
        };
        plots(&a, &model, &rows, &labels, &run, &mut manifest)?;
    }
    run.write_manifest(&manifest)?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: clean {clean_value:.4}, corrupted {corrupted_value:.4} ({} pairs)",
        a.metric.name(),
        pairs.len()
    )?;
    for &g in &a.grids {
        let best = rows
            .iter()
            .filter(|r| r.cell.grid == g && r.method == "activation")
            .max_by(|x, y| x.value.abs().total_cmp(&y.value.abs()));
        if let Some(r) = best {
            writeln!(
                out,
                "  {:<26} strongest {} = {:+.3}",
                g.name(),
                describe(&r.cell),
                r.value
            )?;
        }
    }
    writeln!(out, "wrote {}", run.path.display())?;
    Ok(())
}

fn describe(c: &Cell) -> String {
    let mut s = format!("L{}", c.layer);
    if let Some(h) = c.head {
        s += &format!("H{h}");
    }
    if let Some(p) = c.pos {
        s += &format!(" pos {p}");
    }
    s
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len() as f32
}

/// One heatmap per grid (activation patching) and the attribution-vs-patching scatter.
fn plots(
    a: &Args,
    model: &hooklens::HookedTransformer,
    rows: &[PatchRow],
    pos_labels: &[String],
    run: &lab::run::RunDir,
    manifest: &mut Manifest,
) -> Result<()> {
    let (nl, nh) = (model.cfg.n_layers, model.cfg.n_heads);
    let layer_labels: Vec<String> = (0..nl).map(|l| format!("L{l}")).collect();
    let head_labels: Vec<String> = (0..nh).map(|h| format!("H{h}")).collect();
    let head_rows: Vec<String> = (0..nl)
        .flat_map(|l| (0..nh).map(move |h| format!("L{l}H{h}")))
        .collect();
    for &g in &a.grids {
        let cells: Vec<&PatchRow> = rows
            .iter()
            .filter(|r| r.cell.grid == g && r.method == "activation")
            .collect();
        let (row_labels, col_labels, x_desc, y_desc) = match g {
            Grid::ResidPre | Grid::AttnOut | Grid::MlpOut => {
                (&layer_labels, pos_labels, "position", "layer")
            }
            Grid::AttnHeadOutAllPos | Grid::AttnHeadPatternAllPos => {
                (&layer_labels, &head_labels[..], "head", "layer")
            }
            Grid::AttnHeadOutByPos => (&head_rows, pos_labels, "position", "layer and head"),
        };
        let mut values = vec![vec![0f32; col_labels.len()]; row_labels.len()];
        for r in cells {
            let c = r.cell;
            let (row, col) = match g {
                Grid::ResidPre | Grid::AttnOut | Grid::MlpOut => (c.layer, c.pos.unwrap_or(0)),
                Grid::AttnHeadOutAllPos | Grid::AttnHeadPatternAllPos => {
                    (c.layer, c.head.unwrap_or(0))
                }
                Grid::AttnHeadOutByPos => (c.layer * nh + c.head.unwrap_or(0), c.pos.unwrap_or(0)),
            };
            values[row][col] = r.value;
        }
        let file = format!("{}.png", g.name());
        let title = format!(
            "Patching {} ({} restored: 0 corrupted, 1 clean)",
            g.name(),
            a.metric.name()
        );
        Heatmap {
            title: &title,
            values: &values,
            row_labels,
            col_labels,
            x_desc,
            y_desc,
            diverging: true,
            ..Default::default()
        }
        .write(&run.file(&file))?;
        manifest.add_file(
            &file,
            &format!(
                "{}: normalised metric with each cell patched from the clean run",
                g.name()
            ),
        );
    }
    if !a.no_attribution {
        let groups: Vec<(String, Vec<(f32, f32)>)> = a
            .grids
            .iter()
            .map(|&g| {
                let get = |method: &str| -> Vec<(Cell, f32)> {
                    rows.iter()
                        .filter(|r| r.cell.grid == g && r.method == method)
                        .map(|r| (r.cell, r.value))
                        .collect()
                };
                let (act, attr) = (get("activation"), get("attribution"));
                let points = act
                    .iter()
                    .zip(&attr)
                    .map(|((c1, y), (c2, x))| {
                        debug_assert_eq!(c1, c2);
                        (*x, *y)
                    })
                    .collect();
                (g.name().to_string(), points)
            })
            .collect();
        scatter(
            &run.file("attribution_vs_patching.png"),
            &format!(
                "Attribution vs activation patching ({}, normalised)",
                a.metric.name()
            ),
            &groups,
            "attribution patching estimate",
            "activation patching",
        )?;
        manifest.add_file(
            "attribution_vs_patching.png",
            "each grid cell: the linear estimate (x) against the patched value (y); on the diagonal the linear approximation holds",
        );
    }
    Ok(())
}
