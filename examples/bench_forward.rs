//! Forward-pass benchmark: hooklens vs TransformerLens on the same random GPT-2-small weights.
//!
//!     benches/run_bench.sh            # builds the model, runs both, prints the table
//!     cargo run --example bench_forward -- --model DIR [--reference tl.json]
//!
//! Prints per length: forward and run_with_cache medians, the full cache's size, peak RSS,
//! the forward's FLOP count over the f32 matmul rate measured in the same run (roofline), and
//! with `--reference` TransformerLens's figures and the speed ratio. `--serve` is the hooklens
//! side of an interleaved run (benches/interleave_forward.py) instead.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use hooklens::{load_model, Hooks, LoadOptions, NameFilter};
mod common;

use common::{forward_flops, matmul_gflops, median_secs, peak_rss_mb, read_reference};

#[derive(Parser)]
#[command(about = "Benchmark forward and run_with_cache against TransformerLens")]
struct Args {
    /// GPT-2-shaped model directory (benches/run_bench.sh writes a random GPT-2 small).
    #[arg(long)]
    model: String,
    /// JSON written by benches/tl_reference_bench.py.
    #[arg(long)]
    reference: Option<std::path::PathBuf>,
    #[arg(long, default_value = "128,512,1024")]
    lengths: String,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Answer benches/interleave_forward.py's commands on stdin instead ("forward N": the
    /// median of --repeats forwards at N tokens; "matmul": the matmul rate), one "@@ JSON"
    /// line each.
    #[arg(long)]
    serve: bool,
}

/// The hooklens side of benches/interleave_forward.py: "forward N" answers the median of
/// `repeats` forwards at N tokens.
fn serve(model: &hooklens::HookedTransformer, repeats: usize) -> Result<()> {
    common::serve(serde_json::json!({}), |words| match words {
        ["forward", n] => {
            let n: usize = n.parse().with_context(|| format!("token count in {n:?}"))?;
            let ids = ids(n, model.cfg.d_vocab);
            let tokens = Tensor::from_vec(ids, (1, n), &Device::Cpu)?;
            let forward_s = median_secs(repeats, || {
                model
                    .forward(&tokens, &mut Hooks::none())
                    .map(drop)
                    .map_err(Into::into)
            })?;
            Ok(serde_json::json!({"tokens": n, "forward_s": forward_s}))
        }
        _ => anyhow::bail!("unknown command {words:?}: expected 'forward N' or 'matmul'"),
    })
}

/// The benchmark's token ids, i * 7919 modulo the vocabulary (the Python sides use the same).
fn ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| (i as u64 * 7919 % vocab as u64) as u32)
        .collect()
}

fn main() -> Result<()> {
    let a = Args::parse();
    let reference = Some(read_reference(a.reference.as_deref())?).filter(|r| !r.is_null());
    let (model, _, _) = load_model(Some(&a.model), &LoadOptions::default())
        .context("loading the benchmark model")?;
    if a.serve {
        return serve(&model, a.repeats);
    }
    let c = model.cfg.clone();
    let gflops = matmul_gflops()?;
    println!(
        "model: {} layers, d_model {}, {} heads, d_mlp {}, vocab {}; threads {}",
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.d_mlp,
        c.d_vocab,
        candle_core::utils::get_num_threads()
    );
    let torch = reference
        .as_ref()
        .and_then(|r| r["torch_gflops"].as_f64())
        .unwrap_or(0.0);
    println!(
        "f32 matmul 1024x768x3072: hooklens {gflops:.1} GFLOP/s ({}), torch {torch:.1} GFLOP/s",
        hooklens::matmul::backend()
    );
    // The roofline: the forward's matmul FLOPs at the best matmul rate measured in this run.
    let best = gflops.max(torch);
    println!("roofline = forward FLOPs / {best:.1} GFLOP/s / forward time\n");
    println!(
        "{:>6} {:>10} {:>8} {:>10} {:>12} {:>10} {:>9} | {:>9} {:>10} {:>10} {:>8}",
        "tokens",
        "GFLOP",
        "fwd s",
        "roofline",
        "cache s",
        "cache MB",
        "peak MB",
        "TL fwd s",
        "TL cache s",
        "TL cacheMB",
        "speedup"
    );
    for n in a.lengths.split(',').map(|s| s.trim().parse::<usize>()) {
        let n = n?;
        let tokens = Tensor::from_vec(ids(n, model.cfg.d_vocab), (1, n), &Device::Cpu)?;
        let fwd = median_secs(a.repeats, || {
            model
                .forward(&tokens, &mut Hooks::none())
                .map(drop)
                .map_err(Into::into)
        })?;
        let cache_s = median_secs(a.repeats, || {
            model
                .run_with_cache(&tokens, NameFilter::All)
                .map(drop)
                .map_err(Into::into)
        })?;
        let (_, cache) = model.run_with_cache(&tokens, NameFilter::All)?;
        let cache_mb = cache.size_bytes() as f64 / 1e6;
        drop(cache);
        let flop = forward_flops(&c, n);
        let roofline = flop / 1e9 / best / fwd;
        print!(
            "{n:>6} {:>10.1} {fwd:>8.3} {:>9.0}% {cache_s:>12.3} {cache_mb:>10.1} {:>9.0}",
            flop / 1e9,
            100.0 * roofline,
            peak_rss_mb()
        );
        let tl = reference.as_ref().and_then(|r| {
            r["runs"]
                .as_array()?
                .iter()
                .find(|x| x["tokens"].as_u64() == Some(n as u64))
                .cloned()
        });
        match tl {
            Some(r) => {
                let tf = r["forward_s"].as_f64().unwrap_or(f64::NAN);
                println!(
                    " | {tf:>9.3} {:>10.3} {:>10.1} {:>7.2}x",
                    r["run_with_cache_s"].as_f64().unwrap_or(f64::NAN),
                    r["cache_bytes"].as_f64().unwrap_or(f64::NAN) / 1e6,
                    tf / fwd
                );
            }
            None => println!(" | (no reference)"),
        }
    }
    Ok(())
}
