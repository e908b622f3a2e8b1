//! Circuits benchmark: hooklens vs TransformerLens on the same random GPT-2-small weights.
//!
//!     benches/run_bench.sh circuits   # builds the model, runs both, prints the comparison
//!
//! Times `all_composition_scores('Q')` (with its peak added memory and the fraction of the
//! matmul roofline: the earlier-to-later blocks are 2·(H·d_head)²·d_model·L(L−1)/2 FLOP), the
//! full-vocabulary SVD of one head's full QK circuit, and the copying scores of every head.

use anyhow::{Context, Result};
use clap::Parser;
use hooklens::analysis::circuits::{composition_scores, copying_scores, full_qk, Composition};
use hooklens::{load_model, LoadOptions};
mod common;

use common::{matmul_gflops, median_secs, peak_rss_mb, read_reference};

#[derive(Parser)]
#[command(
    about = "Benchmark composition scores, a full-circuit SVD and copying scores against TransformerLens"
)]
struct Args {
    /// GPT-2-shaped model directory (benches/run_bench.sh circuits writes a random GPT-2 small).
    #[arg(long)]
    model: String,
    /// JSON written by benches/tl_circuits_bench.py.
    #[arg(long)]
    reference: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let r = read_reference(a.reference.as_deref())?;
    let (model, _, _) = load_model(Some(&a.model), &LoadOptions::default())
        .context("loading the benchmark model")?;
    let c = &model.cfg;
    let gflops = matmul_gflops()?;
    println!(
        "model: {} layers, {} heads of {}, d_model {}, vocab {}; threads {}; f32 matmul {gflops:.1} GFLOP/s ({})",
        c.n_layers, c.n_heads, c.d_head, c.d_model, c.d_vocab, candle_core::utils::get_num_threads(),
        hooklens::matmul::backend()
    );
    let before = peak_rss_mb();
    let comp = median_secs(a.repeats, || {
        composition_scores(&model, Composition::Q)
            .map(drop)
            .map_err(Into::into)
    })?;
    let added = peak_rss_mb() - before;
    let hr = (c.n_heads * c.d_head) as f64;
    let flop = 2.0 * hr * hr * c.d_model as f64 * (c.n_layers * (c.n_layers - 1) / 2) as f64;
    let svd = median_secs(a.repeats, || {
        full_qk(&model, 0, 0)?.svd().map(drop).map_err(Into::into)
    })?;
    let copying = median_secs(a.repeats, || {
        copying_scores(&model).map(drop).map_err(Into::into)
    })?;
    let tl = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "{:<34} {:>12} {:>14} {:>8}",
        "", "hooklens", "TransformerLens", "speed-up"
    );
    let row = |name: &str, ours: f64, theirs: f64| {
        println!(
            "{name:<34} {ours:>10.3} s {theirs:>13.3} s {:>7.1}x",
            theirs / ours
        );
    };
    row("all_composition_scores('Q')", comp, tl("composition_q_s"));
    row("full QK circuit SVD, one head", svd, tl("full_qk_svd_s"));
    row(
        &format!("copying scores, all {} heads", c.n_layers * c.n_heads),
        copying,
        tl("copying_s"),
    );
    println!(
        "composition: {:.1} GFLOP of earlier-to-later blocks, {:.0} % of the matmul roofline; peak memory added {added:.0} MB (TransformerLens {:.0} MB)",
        flop / 1e9,
        100.0 * flop / 1e9 / gflops / comp,
        tl("composition_q_peak_mb")
    );
    Ok(())
}
