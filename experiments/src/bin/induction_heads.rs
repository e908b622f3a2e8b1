//! Induction-head detection: score every head as previous-token, duplicate-token and induction
//! head on repeated random tokens, and write under `outputs/induction_heads/<run>/`:
//!
//! - `head_scores.parquet`: columns kind (str), layer (u32), head (u32), label (str), score (f32);
//! - `induction_scores.png`: layers x heads heatmap of induction scores;
//! - `top_head_pattern.png`: the attention pattern of the best induction head on one example;
//! - `manifest.json`: model, checksum, arguments, timings, table schemas.

use anyhow::Result;
use candle_core::IndexOp;
use clap::Parser;
use hooklens::analysis::detectors::{all_head_scores, best_head, head_patterns, HeadKind};
use hooklens::data::{random_token_range, repeated_random_tokens};
use lab::args::{ModelArgs, RunArgs};
use lab::plot::token_labels;
use rand::SeedableRng;
use serde::Serialize;

#[derive(Parser, Serialize)]
#[command(about = "Find induction heads: score every attention head on repeated random tokens")]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Length of the random segment that is repeated (default: 50, or 12 for the embedded model,
    /// which was trained on 32-token sequences).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    half: Option<u32>,
    /// Number of random sequences.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Seeds the random sequences.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Lowest token id of the random tokens (default: 32 for byte-level models, else 1000).
    #[arg(long)]
    token_min: Option<u32>,
    /// One past the highest token id (default: 127 for byte-level models, else token_min + 20000,
    /// at most the vocabulary size).
    #[arg(long)]
    token_max: Option<u32>,
    #[command(flatten)]
    out: RunArgs,
}

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(a: Args) -> Result<()> {
    let (mut exp, model, tok) = lab::Experiment::start("induction_heads", &a.model, &a.out, &a)?;
    let (model, tok) = (&model, &tok);
    let cfg = &model.cfg;
    let half = a
        .half
        .unwrap_or(if a.model.model.is_none() { 12 } else { 50 }) as usize;
    let bos = cfg.bos_token_id.or(tok.bos_token_id);
    let needed = 2 * half + bos.is_some() as usize;
    if needed > cfg.n_ctx {
        let most = (cfg.n_ctx - bos.is_some() as usize) / 2;
        anyhow::bail!("--half {half} needs {needed} positions but the model's context is {}; use --half {most} or less", cfg.n_ctx);
    }
    let range = random_token_range(cfg, a.token_min, a.token_max)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let tokens = repeated_random_tokens(
        &mut rng,
        a.batch as usize,
        half,
        bos,
        range.clone(),
        model.device(),
    )?;
    let bar = lab::args::spinner("scoring heads");
    let scores = exp
        .manifest
        .time("score_heads", || all_head_scores(model, &tokens, half))?;
    bar.finish_and_clear();
    // The best head's pattern on a short example (at most 12 repeated tokens).
    let (bl, bh, _) = best_head(&scores[&HeadKind::Induction])?;
    let example = repeated_random_tokens(
        &mut rng,
        1,
        half.min(12),
        bos,
        range.clone(),
        model.device(),
    )?;
    let pattern = &head_patterns(model, &example, &[bl])?[bh].1; // [query][key]
    let labels = token_labels(tok, &example.i(0)?.to_vec1()?)?;
    exp.manifest.seed = Some(a.seed);
    exp.manifest.set("half", half)?;
    exp.manifest.set("token_range", [range.start, range.end])?;
    exp.manifest.set("bos", bos)?;
    lab::report::induction_views(&mut exp, &scores, pattern, &labels)?;
    exp.finish()
}
