//! Induction-head detection: score every head as previous-token, duplicate-token and induction
//! head on repeated random tokens, and write under `outputs/induction_heads/<run>/`:
//!
//! - `head_scores.parquet`: columns kind (str), layer (u32), head (u32), label (str), score (f32);
//! - `induction_scores.png`: layers x heads heatmap of induction scores;
//! - `top_head_pattern.png`: the attention pattern of the best induction head on one example;
//! - `manifest.json`: model, checksum, arguments, timings, table schemas.

use anyhow::{Context, Result};
use candle_core::IndexOp;
use clap::Parser;
use hooklens::analysis::detectors::{
    all_head_scores, best_head, scores_frame, HeadKind, SCORE_COLUMNS,
};
use hooklens::cli::{ModelArgs, RunArgs};
use hooklens::data::{random_token_range, repeated_random_tokens};
use hooklens::export::{manifest::Manifest, plot::Heatmap};
use hooklens::{BlockHook, HookPoint, NameFilter};
use rand::SeedableRng;
use serde::Serialize;
use std::io::Write;

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
    hooklens::cli::finish(run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let run = a.out.dir("induction_heads")?;
    let start = std::time::Instant::now();
    let (model, tok) = a.model.load().context("loading the model")?;
    let half = a
        .half
        .unwrap_or(if a.model.model.is_none() { 12 } else { 50 }) as usize;
    let n_ctx = model.cfg.n_ctx;
    let bos = model.cfg.bos_token_id.or(tok.bos_token_id);
    if 2 * half + bos.is_some() as usize > n_ctx {
        anyhow::bail!(
            "--half {half} needs {} positions but the model's context is {n_ctx}; use --half {} or less",
            2 * half + bos.is_some() as usize,
            (n_ctx - bos.is_some() as usize) / 2
        );
    }
    let range = random_token_range(&model.cfg, a.token_min, a.token_max)?;
    let mut manifest = Manifest::new("induction_heads", &model, &a)?;
    manifest.record_time("load_model", start);
    manifest.seed = Some(a.seed);
    manifest.set("half", half)?;
    manifest.set("token_range", [range.start, range.end])?;
    manifest.set("bos", bos)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let tokens = repeated_random_tokens(
        &mut rng,
        a.batch as usize,
        half,
        bos,
        range.clone(),
        model.device(),
    )?;
    let bar = hooklens::cli::spinner("scoring heads");
    let scores = manifest.time("score_heads", || all_head_scores(&model, &tokens, half))?;
    bar.finish_and_clear();
    let mut df = scores_frame(&scores)?;
    run.write_table(&mut manifest, "head_scores.parquet", &mut df, SCORE_COLUMNS)?;

    let ind = scores[&HeadKind::Induction].to_vec2::<f32>()?;
    let (nl, nh) = (model.cfg.n_layers, model.cfg.n_heads);
    Heatmap {
        title: "Induction score per head",
        values: &ind,
        row_labels: &(0..nl).map(|l| format!("L{l}")).collect::<Vec<_>>(),
        col_labels: &(0..nh).map(|h| format!("H{h}")).collect::<Vec<_>>(),
        x_desc: "head",
        y_desc: "layer",
        ..Default::default()
    }
    .write(&run.file("induction_scores.png"))?;
    manifest.add_file(
        "induction_scores.png",
        "heatmap layers x heads of the induction score",
    );
    let (bl, bh, best) = best_head(&scores[&HeadKind::Induction])?;

    // The best head's pattern on a short example (at most 12 repeated tokens), labelled.
    let example = repeated_random_tokens(&mut rng, 1, half.min(12), bos, range, model.device())?;
    let point = HookPoint::Block(bl, BlockHook::Pattern);
    let (_, cache) = model.run_with_cache(&example, NameFilter::Points(vec![point]))?;
    let pattern = cache
        .get(point)?
        .i((0, bh))?
        .to_dtype(candle_core::DType::F32)?
        .to_vec2::<f32>()?;
    let ids: Vec<u32> = example.i(0)?.to_vec1()?;
    let labels: Vec<String> = tok
        .to_str_tokens(&ids)?
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{i}:{s:?}"))
        .collect();
    Heatmap {
        title: &format!("Attention pattern of L{bl}H{bh} (induction score {best:.2})"),
        values: &pattern,
        row_labels: &labels,
        col_labels: &labels,
        x_desc: "key (attended-to token)",
        y_desc: "query token",
        ..Default::default()
    }
    .write(&run.file("top_head_pattern.png"))?;
    manifest.add_file(
        "top_head_pattern.png",
        "attention pattern of the best induction head on one example",
    );
    run.write_manifest(&manifest)?;
    let mut out = std::io::stdout().lock();
    for kind in HeadKind::ALL {
        let (l, h, s) = best_head(&scores[&kind])?;
        writeln!(out, "top {:<16} head: L{l}H{h}  score {s:.3}", kind.name())?;
    }
    writeln!(out, "best induction head: L{bl}H{bh} with score {best:.3}")?;
    writeln!(out, "wrote {}", run.path.display())?;
    Ok(())
}
