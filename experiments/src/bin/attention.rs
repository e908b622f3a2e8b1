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
use clap::Parser;
use hooklens::analysis::detectors::head_patterns;
use lab::args::{BosArgs, HeadArgs, ModelArgs, RunArgs};
use lab::plot::token_labels;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

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
    #[command(flatten)]
    heads: HeadArgs,
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
        (_, Some(f)) => hooklens::text::read_text(f)
            .with_context(|| format!("reading --prompt-file {}", f.display()))?
            .trim_end()
            .to_string(),
        _ => "The cat sat on the mat. The cat sat on the mat.".into(),
    };
    if text.trim().is_empty() {
        bail!("the prompt is empty: give at least one token of text");
    }
    let (mut exp, model, tok) = lab::Experiment::start("attention", &a.model, &a.out, &a)?;
    let heads = a.heads.select(&model, &tok)?;
    let tokens = tok.to_tokens(&[text.as_str()], a.bos.resolve(&model), model.device())?;
    let ids: Vec<u32> = tokens.i(0)?.to_vec1()?;
    // The page and the grid hold every head of the chosen heads' layers.
    let mut layers: Vec<usize> = heads.iter().map(|h| h.0).collect();
    layers.sort();
    layers.dedup();
    let floats = layers.len() * model.cfg.n_heads * ids.len() * ids.len();
    if floats > 40_000_000 {
        bail!(
            "{} layers x {} heads x {}^2 positions is {:.0} MB of patterns for the page; choose fewer layers or a shorter prompt",
            layers.len(), model.cfg.n_heads, ids.len(), floats as f64 * 4e-6
        );
    }
    let patterns = head_patterns(&model, &tokens, &layers)?;
    let (strs, labels) = (tok.to_str_tokens(&ids)?, token_labels(&tok, &ids)?);
    lab::report::attention_views(&mut exp, &heads, &patterns, &strs, &labels, &text)?;
    let names: Vec<String> = heads
        .iter()
        .map(|&(l, h)| lab::tables::head_label(l, h))
        .collect();
    exp.manifest.set("heads", names)?;
    exp.manifest.set("tokens", ids.len())?;
    writeln!(
        std::io::stdout().lock(),
        "{} heads on {} tokens",
        heads.len(),
        ids.len()
    )?;
    exp.finish()
}
