//! Sweep benchmark: hooklens vs TransformerLens on the same random GPT-2-small weights and the
//! same 64 tokens.
//!
//!     benches/run_bench.sh sweeps   # builds the model, runs both, prints the comparison
//!
//! Times the 144-head zero-ablation with the loss and with the last-position logit difference,
//! and the `resid_pre` layer x position patching grid; checks the values against
//! TransformerLens's; prints each sweep's matmul FLOPs (the work it does: prefix reuse, causal
//! suffix, metric-aware unembedding) as a fraction of the roofline at this build's matmul rate.

use anyhow::{Context, Result};
use clap::Parser;
use hooklens::analysis::sweep::{Metric, Sweep};
use hooklens::data::PairBatch;
use hooklens::{load_model, LoadOptions};
mod common;

use common::{matmul_gflops, read_reference, timed_sweeps};

#[derive(Parser)]
#[command(about = "Benchmark ablation and patching sweeps against TransformerLens")]
struct Args {
    /// GPT-2-shaped model directory (benches/run_bench.sh sweeps writes a random GPT-2 small).
    #[arg(long)]
    model: String,
    /// JSON written by benches/tl_sweep_bench.py (token ids, times and values).
    #[arg(long)]
    reference: std::path::PathBuf,
    /// Token positions per batched pass.
    #[arg(long, default_value_t = 4096)]
    tokens_per_pass: usize,
}

/// Matmul FLOPs of a sweep's batches: each recomputed position through each layer it runs
/// (projections, attention over its keys, MLP) and the unembedding the metric needs.
fn sweep_flops(sweep: &Sweep, model: &hooklens::HookedTransformer, metric: Metric) -> f64 {
    let c = &model.cfg;
    let (n, p) = sweep.shape();
    let (d, dh) = (c.d_model as f64, c.d_head as f64);
    let qkvo = 2.0 * d * dh * (2 * c.n_heads + 2 * c.n_key_value_heads) as f64;
    let mlp = 2.0 * d * c.d_mlp as f64 * if c.gated_mlp { 3.0 } else { 2.0 };
    let rows = |b: &hooklens::analysis::sweep::Batch| b.jobs.len() as f64;
    sweep
        .batches()
        .iter()
        .map(|b| {
            let s = (p - b.offset) as f64;
            // Query i attends to offset + i + 1 keys: scores and mixing, 2 matmuls.
            let keys: f64 = (b.offset..p).map(|q| (q + 1) as f64).sum();
            let per_layer = s * (qkvo + mlp) + 4.0 * c.n_heads as f64 * dh * keys;
            let unembed = match metric {
                Metric::Loss => s * 2.0 * d * c.d_vocab as f64,
                Metric::Prob => 2.0 * d * c.d_vocab as f64,
                Metric::LogitDiff => 0.0,
            };
            rows(b) * ((n - b.layer) as f64 * per_layer + unembed)
        })
        .sum()
}

fn main() -> Result<()> {
    let a = Args::parse();
    let r = read_reference(Some(&a.reference))?;
    let (model, _, _) = load_model(Some(&a.model), &LoadOptions::default())
        .context("loading the benchmark model")?;
    let ids = |k: &str| -> Vec<u32> {
        r[k].as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u32)
                    .collect()
            })
            .unwrap_or_default()
    };
    let (clean, corrupted) = (ids("tokens_clean"), ids("tokens_corrupted"));
    let p = clean.len();
    anyhow::ensure!(
        p > 1 && corrupted.len() == p,
        "the reference has no token ids"
    );
    let dev = model.device();
    let batch = PairBatch {
        clean: candle_core::Tensor::new(clean.as_slice(), dev)?.unsqueeze(0)?,
        corrupted: candle_core::Tensor::new(corrupted.as_slice(), dev)?.unsqueeze(0)?,
        lengths: vec![p],
        answers: vec![r["answer"].as_u64().unwrap_or(0) as u32],
        wrong: vec![r["wrong"].as_u64().unwrap_or(0) as u32],
    };
    let gflops = matmul_gflops()?;
    let c = &model.cfg;
    println!(
        "model: {} layers, {} heads, d_model {}, {p} tokens; threads {}; f32 matmul {gflops:.1} GFLOP/s ({})",
        c.n_layers, c.n_heads, c.d_model, candle_core::utils::get_num_threads(), hooklens::matmul::backend()
    );
    println!(
        "{:<40} {:>10} {:>16} {:>8} {:>9} {:>9}",
        "", "hooklens", "TransformerLens", "speed-up", "roofline", "max |diff|"
    );
    for s in timed_sweeps(&model, &batch, a.tokens_per_pass)? {
        let (name, key, secs, values, metric) =
            (s.name, s.key, s.secs, &s.values, s.sweep.metric());
        let theirs = r[format!("{key}_s")].as_f64().unwrap_or(f64::NAN);
        let want: Vec<f64> = r[key]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        let diff = values
            .iter()
            .zip(&want)
            .map(|(g, w)| (*g as f64 - w).abs())
            .fold(0f64, f64::max);
        let flop = sweep_flops(&s.sweep, &model, metric);
        println!(
            "{name:<40} {secs:>8.2} s {theirs:>14.2} s {:>7.1}x {:>8.0} % {diff:>9.1e}",
            theirs / secs,
            100.0 * flop / 1e9 / gflops / secs
        );
    }
    Ok(())
}
