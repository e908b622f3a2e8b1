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
use hooklens::analysis::detectors::{all_head_scores, HeadKind};
use lab::args::{BosArgs, ModelArgs, RunArgs};
use hooklens::data::{random_token_range, repeated_random_tokens};
use lab::html::attention_page;
use lab::manifest::Manifest;
use lab::plot::{pattern_grid, Heatmap};
use hooklens::{BlockHook, HookPoint, NameFilter};
use rand::SeedableRng;
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
    after_help = "Heads: --heads 1.2,5.1 (layer.head), --layers 0,3 (every head of those layers), or --top K --by induction (the default: the top 8 induction heads on repeated random tokens)."
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
    /// Heads as layer.head, comma-separated (e.g. 1.2,5.1).
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
    lab::args::finish(run(Args::parse()))
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
    let start = std::time::Instant::now();
    let (model, tok) = a.model.load().context("loading the model")?;
    let mut manifest = Manifest::new("attention", &model, &a)?;
    manifest.record_time("load_model", start);
    let (nl, nh) = (model.cfg.n_layers, model.cfg.n_heads);

    let heads: Vec<(usize, usize)> = if !a.heads.is_empty() {
        a.heads
            .iter()
            .map(|s| parse_head(s))
            .collect::<Result<_>>()?
    } else if !a.layers.is_empty() {
        a.layers
            .iter()
            .flat_map(|&l| (0..nh).map(move |h| (l, h)))
            .collect()
    } else {
        top_heads(&model, &tok, &a)?
    };
    for &(l, h) in &heads {
        model.block(l)?;
        model.check_head(h)?;
    }

    let bos = a.bos.resolve(&model);
    let tokens = tok.to_tokens(&[text.as_str()], bos, model.device())?;
    let ids: Vec<u32> = tokens.i(0)?.to_vec1()?;
    let n = ids.len();
    let strs = tok.to_str_tokens(&ids)?;
    // The page and the grid hold every head of the chosen heads' layers.
    let mut layers: Vec<usize> = heads.iter().map(|h| h.0).collect();
    layers.sort();
    layers.dedup();
    let floats = layers.len() * nh * n * n;
    if floats > 40_000_000 {
        bail!(
            "{} layers x {nh} heads x {n}^2 positions is {:.0} MB of patterns for the page; choose fewer layers or a shorter prompt",
            layers.len(),
            floats as f64 * 4.0 / 1e6
        );
    }
    let points = layers
        .iter()
        .map(|&l| HookPoint::block(l, BlockHook::Pattern))
        .collect();
    let (_, cache) = model.run_with_cache(&tokens, NameFilter::Points(points))?;
    let pattern = |l: usize, h: usize| -> Result<Vec<Vec<f32>>> {
        let p = cache.block(l, BlockHook::Pattern)?.i((0, h))?;
        Ok(p.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
    };

    let run = a.out.dir("attention")?;
    let model_name = manifest.model.name.clone();
    let short: String = match text.chars().count() > 48 {
        true => text.chars().take(45).collect::<String>() + "...",
        false => text.clone(),
    };
    let labels: Vec<String> = strs
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{i}:{s:?}"))
        .collect();
    for &(l, h) in &heads {
        let file = format!("pattern_L{l}H{h}.png");
        Heatmap {
            title: &format!("{model_name} L{l}H{h} on {short:?}"),
            values: &pattern(l, h)?,
            row_labels: &labels,
            col_labels: &labels,
            x_desc: "key (attended-to token)",
            y_desc: "query token",
            range: Some((0.0, 1.0)),
            ..Default::default()
        }
        .write(&run.file(&file))?;
        manifest.add_file(
            &file,
            &format!("attention pattern of L{l}H{h}, query rows, key columns"),
        );
    }
    let all: Vec<(usize, usize)> = layers
        .iter()
        .flat_map(|&l| (0..nh).map(move |h| (l, h)))
        .collect();
    let patterns: Vec<Vec<Vec<f32>>> = all
        .iter()
        .map(|&(l, h)| pattern(l, h))
        .collect::<Result<_>>()?;
    let thumbs: Vec<(String, Vec<Vec<f32>>)> = all
        .iter()
        .zip(&patterns)
        .map(|(&(l, h), p)| (format!("L{l}H{h}"), p.clone()))
        .collect();
    pattern_grid(
        &run.file("heads_grid.png"),
        &format!("{model_name}: every head of layer(s) {layers:?} on {short:?}"),
        &thumbs,
        nh.min(12),
    )?;
    manifest.add_file(
        "heads_grid.png",
        "every head of the chosen layers as thumbnails (query rows, key columns; white 0, red 1)",
    );

    // The page opens on the first chosen head.
    let first = all.iter().position(|x| *x == heads[0]).unwrap_or(0);
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.swap(0, first);
    let page_heads: Vec<(usize, usize)> = order.iter().map(|&i| all[i]).collect();
    let flat: Vec<Vec<f32>> = order.iter().map(|&i| patterns[i].concat()).collect();
    let page = attention_page(
        &format!("{model_name}: attention on {short:?}"),
        &strs,
        (nl, nh),
        &page_heads,
        &flat,
    )?;
    lab::atomic_write(&run.file("attention.html"), page.as_bytes())?;
    manifest.add_file(
        "attention.html",
        "interactive attention view, self-contained (open it in a browser)",
    );

    let mut df = patterns_frame(&page_heads, &flat, &strs)?;
    run.write_table(&mut manifest, "patterns.parquet", &mut df, PATTERN_COLUMNS)?;
    manifest.set(
        "heads",
        heads
            .iter()
            .map(|(l, h)| format!("L{l}H{h}"))
            .collect::<Vec<_>>(),
    )?;
    manifest.set("tokens", n)?;
    run.write_manifest(&manifest)?;
    writeln!(
        std::io::stdout().lock(),
        "{} heads on {n} tokens; wrote {}",
        heads.len(),
        run.path.display()
    )?;
    Ok(())
}

fn parse_head(s: &str) -> Result<(usize, usize)> {
    let bad = || anyhow::anyhow!("--heads {s:?}: write LAYER.HEAD, e.g. 1.2");
    let (l, h) = s.trim().split_once('.').ok_or_else(bad)?;
    Ok((l.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?))
}

/// The top `--top` heads (default 8) by the detector's score on repeated random tokens.
fn top_heads(
    model: &hooklens::HookedTransformer,
    tok: &hooklens::Tokenizer,
    a: &Args,
) -> Result<Vec<(usize, usize)>> {
    let k = a.top.unwrap_or(8) as usize;
    let half = 16.min((model.cfg.n_ctx - 1) / 2);
    let bos = model.cfg.bos_token_id.or(tok.bos_token_id);
    let range = random_token_range(&model.cfg, None, None)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let tokens = repeated_random_tokens(&mut rng, 8, half, bos, range, model.device())?;
    let kind = match a.by {
        Detector::Induction => HeadKind::Induction,
        Detector::PreviousToken => HeadKind::PreviousToken,
        Detector::DuplicateToken => HeadKind::DuplicateToken,
    };
    let scores = all_head_scores(model, &tokens, half)?[&kind].to_vec2::<f32>()?;
    let flat: Vec<f32> = scores.concat();
    let nh = model.cfg.n_heads;
    Ok(hooklens::analysis::metrics::top_k(&flat, k)
        .into_iter()
        .map(|(i, _)| (i as usize / nh, i as usize % nh))
        .collect())
}

const PATTERN_COLUMNS: &[(&str, &str)] = &[
    ("layer", "the head's layer"),
    ("head", "the head"),
    ("query", "query position (the attending token)"),
    (
        "key",
        "key position (the attended-to token), at most the query",
    ),
    ("query_token", "the query token's text"),
    ("key_token", "the key token's text"),
    ("weight", "attention weight (each query's weights sum to 1)"),
];

fn patterns_frame(
    heads: &[(usize, usize)],
    patterns: &[Vec<f32>],
    strs: &[String],
) -> Result<polars::prelude::DataFrame> {
    use polars::prelude::*;
    let n = strs.len();
    let (mut l, mut h, mut q, mut k, mut qt, mut kt, mut w) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for (&(layer, head), p) in heads.iter().zip(patterns) {
        for qi in 0..n {
            for ki in 0..=qi {
                l.push(layer as u32);
                h.push(head as u32);
                q.push(qi as u32);
                k.push(ki as u32);
                qt.push(strs[qi].clone());
                kt.push(strs[ki].clone());
                w.push(p[qi * n + ki]);
            }
        }
    }
    Ok(
        df!("layer" => l, "head" => h, "query" => q, "key" => k, "query_token" => qt, "key_token" => kt, "weight" => w)?,
    )
}
