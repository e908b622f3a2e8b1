//! Capture benchmark: hooklens's capture (forward stopped at the deepest hook, activations
//! written to safetensors shards) against a bare hooklens forward of the same depth and batch
//! size, interleaved. `--serve` is the hooklens side of benches/run_capture_bench.sh instead
//! (against TransformerLens's run_with_cache loop on the same contexts, benches/interleave.py):
//! "capture" and "forward" answer one timed pass over the store's contexts each.
//!
//!     benches/run_capture_bench.sh
//!     cargo run --release --example bench_capture -- --store STORE [--serve]

use anyhow::{Context, Result};
use clap::Parser;
use hooklens::corpus::Contexts;
use hooklens::store::{write_shard, ActivationStore, Capture};
use hooklens::{load_model, Hooks, LoadOptions};

mod common;

use common::median;

#[derive(Parser)]
#[command(about = "Benchmark capture against a bare forward (and TransformerLens, with --serve)")]
struct Args {
    /// A store written by `capture` on SmolLM2: its contexts, hooks and batch size are used.
    #[arg(long)]
    store: std::path::PathBuf,
    /// Interleaved rounds (medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Answer benches/interleave.py's commands on stdin instead ("capture", "forward").
    #[arg(long)]
    serve: bool,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let store = ActivationStore::open(&a.store)?;
    let spec = store.spec.clone();
    let model_name = spec.provenance["model"]
        .as_str()
        .context("the store names no model")?;
    let (model, _, _) = load_model(Some(model_name), &LoadOptions::default())?;
    let mut tokens = vec![];
    for i in 0..spec.shards {
        tokens.extend(store.column(i, "token_id")?);
    }
    let contexts = Contexts {
        tokens,
        context_len: spec.context_len,
        documents: 0,
        text_tokens: 0,
    };
    let hooks = spec
        .hooks
        .iter()
        .map(|h| model.hook_point(&h.name))
        .collect::<hooklens::Result<_>>()?;
    let capture = Capture::new(&model, hooks, spec.dtype()?)?;
    let n = contexts.tokens.len() as f64;
    let out = tempfile::tempdir()?;
    // One pass over the contexts as hooklens's capture makes it, to shards in a temporary folder.
    let capture_secs = || -> Result<f64> {
        let t0 = std::time::Instant::now();
        for i in 0..spec.shards {
            let data = capture.shard(&spec, &contexts, i, &mut |_| {})?;
            write_shard(out.path(), &spec, i, &data)?;
        }
        Ok(t0.elapsed().as_secs_f64())
    };
    // The same batches through a bare forward of the same depth.
    let forward_secs = || -> Result<f64> {
        let t0 = std::time::Instant::now();
        for start in (0..contexts.len()).step_by(spec.contexts_per_batch) {
            let end = (start + spec.contexts_per_batch).min(contexts.len());
            let t = contexts.batch(start..end, model.device())?;
            model.run_range(&t, 0, spec.stop_at_layer, Hooks::none())?;
        }
        Ok(t0.elapsed().as_secs_f64())
    };
    if a.serve {
        // Warm-up (allocations, thread pool, packed weights paged in): one batch.
        let t = contexts.batch(
            0..spec.contexts_per_batch.min(contexts.len()),
            model.device(),
        )?;
        model.run_range(&t, 0, spec.stop_at_layer, Hooks::none())?;
        let timed = |secs: f64| serde_json::json!({"seconds": secs, "tokens_per_s": n / secs});
        return common::serve(
            serde_json::json!({"tokens": contexts.tokens.len()}),
            |words| match words {
                ["capture"] => Ok(timed(capture_secs()?)),
                ["forward"] => Ok(timed(forward_secs()?)),
                _ => {
                    anyhow::bail!("unknown command {words:?}: expected capture, forward or matmul")
                }
            },
        );
    }
    let (mut bare, mut cap) = (vec![], vec![]);
    for _ in 0..a.rounds {
        bare.push(n / forward_secs()?);
        cap.push(n / capture_secs()?);
    }
    let (bare, cap) = (median(bare), median(cap));
    println!(
        "{} tokens in contexts of {}, {} per forward, hooks {}, forward stopped before layer {:?}, stored {}; threads {}\n",
        n, spec.context_len, spec.contexts_per_batch,
        spec.hooks.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(","),
        spec.stop_at_layer, spec.dtype, candle_core::utils::get_num_threads()
    );
    println!("{:<44} {:>12}", "", "tokens/s");
    println!("{:<44} {:>12.0}", "hooklens bare forward, same depth", bare);
    println!(
        "{:<44} {:>12.0}   overhead {:+.1} %",
        "hooklens capture (to safetensors shards)",
        cap,
        100.0 * (bare / cap - 1.0)
    );
    Ok(())
}
