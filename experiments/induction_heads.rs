//! Induction-head detection: score every head as previous-token, duplicate-token and induction
//! head on repeated random tokens, and write
//!
//! - `head_scores.parquet`: columns kind (str), layer (u32), head (u32), label (str), score (f32);
//! - `induction_scores.png`: layers x heads heatmap of induction scores;
//! - `top_head_pattern.png`: the attention pattern of the best induction head on one example;
//! - `manifest.json`: parameters, files and columns;
//!
//! under `outputs/induction_heads/<run>/`.

use anyhow::{Context, Result};
use candle_core::IndexOp;
use clap::Parser;
use hooklens::cli::ModelArgs;
use hooklens::detectors::{all_head_scores, best_head, scores_frame, HeadKind};
use hooklens::export::{parquet::write_parquet, plot::heatmap, run::RunDir};
use hooklens::train::repeated_random_tokens;
use hooklens::{BlockHook, HookPoint, NameFilter};
use rand::SeedableRng;
use serde_json::json;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Find induction heads: score every attention head on repeated random tokens")]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Length of the random segment that is repeated (default: 50, or 12 for the embedded model,
    /// which was trained on 32-token sequences).
    #[arg(long)]
    half: Option<usize>,
    /// Number of random sequences.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Lowest token id of the random tokens (default: 32 for byte-level models, else 1000).
    #[arg(long)]
    token_min: Option<u32>,
    /// One past the highest token id (default: 127 for byte-level models, else token_min + 20000,
    /// capped at the vocabulary).
    #[arg(long)]
    token_max: Option<u32>,
    /// Where runs are written.
    #[arg(long, default_value = "outputs")]
    outputs: PathBuf,
    /// Run folder name (default: a UTC timestamp).
    #[arg(long)]
    run: Option<String>,
    /// Write into an existing run folder.
    #[arg(long)]
    resume: bool,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let (model, tok) = a.model.load().context("loading the model")?;
    let half = a
        .half
        .unwrap_or(if a.model.model.is_none() { 12 } else { 50 });
    let run = RunDir::create(&a.outputs, "induction_heads", a.run.as_deref(), a.resume)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    // Random ordinary tokens: printable ASCII for byte-level models (what the embedded model was
    // trained on), otherwise ids clear of the special tokens at either end of the vocabulary.
    let byte_level = model.cfg.d_vocab <= 512;
    let vocab = model.cfg.d_vocab as u32;
    let lo = a
        .token_min
        .unwrap_or(if byte_level {
            hooklens::train::DATA_TOKENS.start
        } else {
            1000
        })
        .min(vocab - 1);
    let hi = a
        .token_max
        .unwrap_or(if byte_level {
            hooklens::train::DATA_TOKENS.end
        } else {
            lo + 20000
        })
        .min(vocab)
        .max(lo + 1);
    let bos = model.cfg.bos_token_id.or(tok.bos_token_id);
    let tokens = repeated_random_tokens(&mut rng, a.batch, half, bos, lo..hi, model.device())?;
    let scores = all_head_scores(&model, &tokens, half)?;
    let mut df = scores_frame(&scores)?;
    write_parquet(&mut df, &run.file("head_scores.parquet"))?;

    let ind = scores[&HeadKind::Induction].to_vec2::<f32>()?;
    let (nl, nh) = (model.cfg.n_layers, model.cfg.n_heads);
    heatmap(
        &run.file("induction_scores.png"),
        "Induction score per head",
        &ind,
        &(0..nl).map(|l| format!("L{l}")).collect::<Vec<_>>(),
        &(0..nh).map(|h| format!("H{h}")).collect::<Vec<_>>(),
        "head",
        "layer",
    )?;
    let (bl, bh, best) = best_head(&scores[&HeadKind::Induction])?;

    // The best head's pattern on a short example, with token labels on both axes.
    let example = tokens
        .i((0..1, ..))?
        .narrow(1, 0, tokens.dim(1)?.min(1 + 2 * half.min(12)))?;
    let short_half = (example.dim(1)? - 1) / 2;
    let example = repeated_random_tokens(&mut rng, 1, short_half, bos, lo..hi, model.device())?;
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
    heatmap(
        &run.file("top_head_pattern.png"),
        &format!("Attention pattern of L{bl}H{bh} (induction score {best:.2})"),
        &pattern,
        &labels,
        &labels,
        "key (attended-to token)",
        "query token",
    )?;

    run.write_manifest(
        json!({"model": a.model.model.as_deref().unwrap_or(hooklens::loading::EMBEDDED_NAME), "half": half, "batch": a.batch, "seed": a.seed, "processing": !a.model.no_processing}),
        json!({
            "head_scores.parquet": {"columns": {"kind": "str: previous_token | duplicate_token | induction", "layer": "u32", "head": "u32", "label": "str, e.g. L1H3", "score": "f32: mean attention on the kind's stripe, 0..1"}},
            "induction_scores.png": "heatmap layers x heads of the induction score",
            "top_head_pattern.png": "attention pattern of the best induction head on one example",
        }),
    )?;
    for kind in HeadKind::ALL {
        let (l, h, s) = best_head(&scores[&kind])?;
        println!("top {:<16} head: L{l}H{h}  score {s:.3}", kind.name());
    }
    println!("best induction head: L{bl}H{bh} with score {best:.3}");
    println!("wrote {}", run.path.display());
    Ok(())
}
