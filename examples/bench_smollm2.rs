//! Real-weights benchmark (SmolLM2-135M, or Gemma 3 270M with `--model gemma3`): forward at
//! 128/512 tokens and greedy generation tokens/s with and without the KV cache, next to
//! transformers on the same weights and tokens.
//!
//!     benches/run_smollm2_bench.sh [smollm2|gemma3]
//!     cargo run --example bench_smollm2 -- [--model gemma3] [--reference hf.json]

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use hooklens::generate::{generate, GenerateOptions};
use hooklens::{load_model, Hooks, LoadOptions};

mod common;

use common::{forward_flops, matmul_gflops, median_secs, peak_rss_mb, read_reference};

/// Must match benches/hf_smollm2_bench.py.
const NEW_TOKENS: usize = 32;
const PROMPT: usize = 16;

#[derive(Parser)]
#[command(about = "Benchmark a real model's forward and generation against transformers")]
struct Args {
    /// The model alias (its script in scripts/ fetches it).
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// JSON written by benches/hf_smollm2_bench.py.
    #[arg(long)]
    reference: Option<std::path::PathBuf>,
}

/// i * 7919 modulo the vocabulary, as benches/hf_smollm2_bench.py.
fn ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| (i as u64 * 7919 % vocab as u64) as u32)
        .collect()
}

fn main() -> Result<()> {
    let a = Args::parse();
    let reference = read_reference(a.reference.as_deref())?;
    let (model, _, _) = load_model(Some(&a.model), &LoadOptions::default())
        .with_context(|| format!("loading {} (run scripts/fetch_{}.sh)", a.model, a.model))?;
    println!(
        "{} (dequantized f32), threads {}, matmul {}\n",
        a.model,
        candle_core::utils::get_num_threads(),
        hooklens::matmul::backend()
    );
    println!(
        "{:<28} {:>12} {:>14} {:>8}",
        "", "hooklens", "transformers", "ratio"
    );
    let row = |name: &str, ours: f64, theirs: Option<f64>, higher_better: bool, unit: &str| {
        let ratio = theirs.map(|t| if higher_better { ours / t } else { t / ours });
        let fmt = |x: f64| format!("{x:.3} {unit}");
        println!(
            "{name:<28} {:>12} {:>14} {:>8}",
            fmt(ours),
            theirs.map_or("-".into(), fmt),
            ratio.map_or("-".into(), |r| format!("{r:.2}x"))
        );
    };
    let mut roofline = vec![];
    for n in [128, 512] {
        let t = Tensor::from_vec(ids(n, model.cfg.d_vocab), (1, n), &Device::Cpu)?;
        let s = median_secs(3, || {
            model
                .forward(&t, &mut Hooks::none())
                .map(drop)
                .map_err(Into::into)
        })?;
        roofline.push((n, forward_flops(&model.cfg, n) / 1e9 / s));
        row(
            &format!("forward 1x{n}"),
            s,
            reference["forward"][n.to_string()].as_f64(),
            false,
            "s",
        );
    }
    for (kv, key) in [(true, "kv_cache"), (false, "no_cache")] {
        let opts = GenerateOptions {
            max_new_tokens: NEW_TOKENS,
            use_kv_cache: kv,
            stop_at_eos: false,
            ..Default::default()
        };
        let s = median_secs(2, || {
            generate(
                &model,
                &ids(PROMPT, model.cfg.d_vocab),
                &opts,
                &mut Hooks::none(),
            )
            .map(drop)
            .map_err(Into::into)
        })?;
        row(
            &format!("generate tokens/s ({key})"),
            NEW_TOKENS as f64 / s,
            reference["generate"][key].as_f64(),
            true,
            "tok/s",
        );
    }
    let gflops = matmul_gflops()?;
    println!(
        "\nroofline (forward matmul FLOPs at this run's {gflops:.0} GFLOP/s on 1024x768x3072):"
    );
    for (n, rate) in roofline {
        println!("  1x{n}: {:.0} %", 100.0 * rate / gflops);
    }
    println!(
        "\npeak RSS {:.0} MB (prompt {PROMPT} tokens, {NEW_TOKENS} new tokens, greedy)",
        peak_rss_mb()
    );
    Ok(())
}
