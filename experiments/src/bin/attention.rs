//! Attention views: the patterns of chosen heads on a prompt, as PNGs and as one
//! self-contained interactive HTML page. Writes under `outputs/attention/<run>/`:
//!
//! - `pattern_L<layer>H<head>.png`: each chosen head's pattern, tokens on both axes;
//! - `heads_grid.png`: every head of the chosen heads' layers as labelled thumbnails;
//! - `attention.html`: head selector, pattern matrices and token text, data inline;
//! - `patterns.parquet`: the patterns the page holds, one row per (head, query, key <= query);
//! - `manifest.json`.

use anyhow::{bail, Context, Result};
use candle_core::IndexOp;
use clap::{Parser, ValueEnum};
use hooklens::analysis::detectors::{top_heads, HeadKind};
use hooklens::{BlockHook, HookPoint, NameFilter};
use lab::args::{parse_head, BosArgs, ModelArgs, RunArgs};
use lab::plot::{pattern_grid, token_labels, Heatmap};
use lab::tables::PatternsTable;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Detector {
    Induction,
    PreviousToken,
    DuplicateToken,
}

#[derive(Parser, Serialize)]
#[command(
    about = "Attention patterns of chosen heads as PNGs and a self-contained interactive HTML page",
    after_help = "Heads: --heads L1H2,L5H1, --layers 0,3 (every head of those layers), or --top K --by induction (the default: the top 8 induction heads on repeated random tokens)."
)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt. Default: "The cat sat on the mat. The cat sat on the mat."
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// A text file whose whole content is the prompt.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Heads, comma-separated: L1H2 is head 2 of layer 1 (the older 1.2 still works).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["layers", "top"])]
    heads: Vec<String>,
    /// Every head of these layers (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "top")]
    layers: Vec<usize>,
    /// The K heads with the highest detector score (see --by).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    top: Option<u32>,
    /// The detector that ranks heads for --top, scored on repeated random tokens.
    #[arg(long, value_enum, default_value_t = Detector::Induction)]
    by: Detector,
    /// Seed of the detector's random tokens.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    bos: BosArgs,
    #[command(flatten)]
    out: RunArgs,
}

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(a: Args) -> Result<()> {
    let text = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.clone(),
        (_, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading --prompt-file {}", f.display()))?
            .trim_end()
            .to_string(),
        _ => "The cat sat on the mat. The cat sat on the mat.".into(),
    };
    if text.trim().is_empty() {
        bail!("the prompt is empty: give at least one token of text");
    }
    let (mut exp, model, tok) = lab::Experiment::start("attention", &a.model, &a.out, &a)?;
    let (model, tok) = (&model, &tok);
    let (nl, nh) = (model.cfg.n_layers, model.cfg.n_heads);
    let kind = match a.by {
        Detector::Induction => HeadKind::Induction,
        Detector::PreviousToken => HeadKind::PreviousToken,
        Detector::DuplicateToken => HeadKind::DuplicateToken,
    };
    let heads: Vec<(usize, usize)> = match (a.heads.is_empty(), a.layers.is_empty()) {
        (false, _) => a
            .heads
            .iter()
            .map(|s| parse_head(s))
            .collect::<Result<_>>()?,
        (_, false) => a
            .layers
            .iter()
            .flat_map(|&l| (0..nh).map(move |h| (l, h)))
            .collect(),
        _ => top_heads(
            model,
            kind,
            a.top.unwrap_or(8) as usize,
            model.cfg.bos_token_id.or(tok.bos_token_id),
            a.seed,
        )?,
    };
    for &(l, h) in &heads {
        model.block(l)?;
        model.check_head(h)?;
    }
    let tokens = tok.to_tokens(&[text.as_str()], a.bos.resolve(model), model.device())?;
    let ids: Vec<u32> = tokens.i(0)?.to_vec1()?;
    let (n, strs) = (ids.len(), tok.to_str_tokens(&ids)?);
    // The page and the grid hold every head of the chosen heads' layers.
    let mut layers: Vec<usize> = heads.iter().map(|h| h.0).collect();
    layers.sort();
    layers.dedup();
    if layers.len() * nh * n * n > 40_000_000 {
        bail!("{} layers x {nh} heads x {n}^2 positions is {:.0} MB of patterns for the page; choose fewer layers or a shorter prompt", layers.len(), (layers.len() * nh * n * n) as f64 * 4e-6);
    }
    let points = layers
        .iter()
        .map(|&l| HookPoint::block(l, BlockHook::Pattern))
        .collect();
    let (_, cache) = model.run_with_cache(&tokens, NameFilter::Points(points))?;
    let all: Vec<(usize, usize)> = layers
        .iter()
        .flat_map(|&l| (0..nh).map(move |h| (l, h)))
        .collect();
    let patterns: Vec<Vec<Vec<f32>>> = all
        .iter()
        .map(|&(l, h)| {
            Ok(cache
                .block(l, BlockHook::Pattern)?
                .i((0, h))?
                .to_dtype(candle_core::DType::F32)?
                .to_vec2()?)
        })
        .collect::<Result<_>>()?;
    let labels = token_labels(tok, &ids)?;
    let name = exp.manifest.model.name.clone();
    let short: String = match text.chars().count() > 48 {
        true => text.chars().take(45).collect::<String>() + "...",
        false => text.clone(),
    };

    for &(l, h) in &heads {
        let values = &patterns[all.iter().position(|x| *x == (l, h)).unwrap_or(0)];
        let title = format!("{name} L{l}H{h} on {short:?}");
        let heatmap = Heatmap {
            title: &title,
            values,
            row_labels: &labels,
            col_labels: &labels,
            x_desc: "key (attended-to token)",
            y_desc: "query token",
            range: Some((0.0, 1.0)),
            ..Default::default()
        };
        exp.heatmap(
            &format!("pattern_L{l}H{h}.png"),
            &format!("attention pattern of L{l}H{h}, query rows, key columns"),
            &heatmap,
        )?;
    }
    let thumbs: Vec<(String, Vec<Vec<f32>>)> = all
        .iter()
        .zip(&patterns)
        .map(|(&(l, h), p)| (format!("L{l}H{h}"), p.clone()))
        .collect();
    let grid = exp.file(
        "heads_grid.png",
        "every head of the chosen layers as thumbnails (query rows, key columns; white 0, red 1)",
    )?;
    pattern_grid(
        &grid,
        &format!("{name}: every head of layer(s) {layers:?} on {short:?}"),
        &thumbs,
        nh.min(12),
    )?;
    // The page opens on the first chosen head.
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.swap(0, all.iter().position(|x| *x == heads[0]).unwrap_or(0));
    let page_heads: Vec<(usize, usize)> = order.iter().map(|&i| all[i]).collect();
    let flat: Vec<Vec<f32>> = order.iter().map(|&i| patterns[i].concat()).collect();
    let page = lab::html::attention_page(
        &format!("{name}: attention on {short:?}"),
        &strs,
        (nl, nh),
        &page_heads,
        &flat,
    )?;
    exp.page(
        "attention.html",
        "interactive attention view, self-contained (open it in a browser)",
        &page,
    )?;
    exp.table(
        "patterns.parquet",
        &PatternsTable {
            heads: &page_heads,
            patterns: &flat,
            tokens: &strs,
        },
    )?;
    exp.manifest.set(
        "heads",
        heads
            .iter()
            .map(|&(l, h)| lab::tables::head_label(l, h))
            .collect::<Vec<_>>(),
    )?;
    exp.manifest.set("tokens", n)?;
    writeln!(
        std::io::stdout().lock(),
        "{} heads on {n} tokens",
        heads.len()
    )?;
    exp.finish()
}
