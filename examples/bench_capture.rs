//! Capture benchmark: hooklens's capture (forward stopped at the deepest hook, activations
//! written to safetensors shards) against a bare hooklens forward of the same depth and batch
//! size, interleaved, and against TransformerLens's run_with_cache loop on the same contexts.
//!
//!     benches/run_capture_bench.sh
//!     cargo run --example bench_capture -- --store STORE [--reference tl.json]

use anyhow::{Context, Result};
use clap::Parser;
use hooklens::corpus::Contexts;
use hooklens::store::{write_shard, ActivationStore, Capture};
use hooklens::{load_model, Hooks, LoadOptions};

mod common;

use common::{median, read_reference};

#[derive(Parser)]
#[command(about = "Benchmark capture against a bare forward and TransformerLens")]
struct Args {
    /// A store written by `capture` on SmolLM2: its contexts, hooks and batch size are used.
    #[arg(long)]
    store: std::path::PathBuf,
    /// JSON written by benches/tl_capture_bench.py.
    #[arg(long)]
    reference: Option<std::path::PathBuf>,
    /// Interleaved rounds (medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let reference = read_reference(a.reference.as_deref())?;
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
    let (mut bare, mut cap) = (vec![], vec![]);
    for _ in 0..a.rounds {
        let t0 = std::time::Instant::now();
        for start in (0..contexts.len()).step_by(spec.contexts_per_batch) {
            let end = (start + spec.contexts_per_batch).min(contexts.len());
            let t = contexts.batch(start..end, model.device())?;
            model.run_range(&t, 0, spec.stop_at_layer, Hooks::none())?;
        }
        bare.push(n / t0.elapsed().as_secs_f64());
        let t0 = std::time::Instant::now();
        for i in 0..spec.shards {
            let data = capture.shard(&spec, &contexts, i, &mut |_| {})?;
            write_shard(out.path(), &spec, i, &data)?;
        }
        cap.push(n / t0.elapsed().as_secs_f64());
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
    if let Some(tl) = reference["tokens_per_s"].as_f64() {
        println!(
            "{:<44} {:>12.0}   hooklens capture {:.2}x",
            "TransformerLens run_with_cache loop (to .npy)",
            tl,
            cap / tl
        );
    }
    Ok(())
}
