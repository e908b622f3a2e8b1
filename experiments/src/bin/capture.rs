//! Streams a corpus through the model into an activation store under
//! `outputs/capture/<run>/`:
//!
//! - `shards/NNNNNN.safetensors`: per hook [tokens, ...] (TransformerLens names) with
//!   `token_id`, `context` and `position`, each shard complete once it exists;
//! - `store.json`: hooks, shapes, dtype, token count, batch and shard sizes, and the model's and
//!   corpus's sha256; `tokens.parquet`: every token with its shard and row;
//! - `stats.parquet` and `means.safetensors`: each hook's mean (for `ablate --reference`) and
//!   norms over the corpus; `manifest.json`, with the measured peak memory.

use anyhow::Result;
use clap::Parser;
use hooklens::store::Capture;
use lab::args::{DTypeArg, ModelArgs, RunArgs, ShardArgs};
use lab::progress::Shard;
use lab::store::{
    capture_dir, capture_in_folder, memory, merge_store, parse_bytes, plan_store, store_tables,
    CorpusArgs,
};
use serde::Serialize;

#[derive(Parser, Serialize)]
#[command(
    about = "Capture activations over a corpus into a sharded, resumable activation store",
    after_help = "Example: hooklens's real corpus on SmolLM2, four layers, in f16:\n  capture --model smollm2 --corpus $(bash scripts/fetch_corpus.sh) --tokens 1000000 \\\n    --hooks blocks.3.hook_resid_post,blocks.7.hook_resid_post,blocks.11.hook_resid_post,blocks.15.hook_resid_post --store-dtype f16\nResume a killed run with the same arguments and --resume; spread it over machines with --shard i/n and combine with --merge."
)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    corpus: CorpusArgs,
    /// Hook points to store, comma-separated TransformerLens names (`hooklens hooks` lists them).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "blocks.0.attn.hook_z,blocks.1.hook_resid_post"
    )]
    hooks: Vec<String>,
    /// How activations are stored (the forward runs in --dtype).
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    store_dtype: DTypeArg,
    /// Peak resident memory of the whole process (model included): 4G, 512M, 1.5GiB. Batch and
    /// shard sizes are planned to stay under it; the measured peak is in the manifest.
    #[arg(long, default_value = "4G", value_parser = parse_bytes)]
    max_memory: u64,
    /// Tokens per store shard, about (whole batches). Default: planned from --max-memory, at
    /// most 256 MB a shard.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    shard_tokens: Option<u64>,
    #[command(flatten)]
    sweep: ShardArgs,
    #[command(flatten)]
    out: RunArgs,
}

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(a: Args) -> Result<()> {
    let dir = capture_dir(&a.out, &a.sweep)?;
    let (mut exp, model, tok) = lab::Experiment::load("capture", &a.model, &a)?;
    let hooks = a
        .hooks
        .iter()
        .map(|h| model.hook_point(h))
        .collect::<hooklens::Result<_>>()?;
    let capture = Capture::new(&model, hooks, a.store_dtype.dtype())?;
    let (contexts, corpus) = exp.time("read_corpus", || Ok(a.corpus.contexts(&model, &tok)))??;
    let provenance = serde_json::json!({ "model": exp.manifest.model.name, "weights": exp.manifest.model.weights, "corpus": corpus });
    let spec = if a.sweep.merge {
        merge_store(&dir, &a)?
    } else {
        let spec = plan_store(
            &capture,
            &contexts,
            a.max_memory,
            a.shard_tokens,
            provenance,
        )?;
        let shard = a.sweep.shard.unwrap_or(Shard::WHOLE);
        let start = std::time::Instant::now();
        let done = capture_in_folder(
            dir.clone(),
            a.out.resume,
            shard,
            &a,
            &capture,
            &contexts,
            spec,
        )?;
        exp.manifest.record_time("capture", start);
        let rate = done.tokens as f64 / start.elapsed().as_secs_f64();
        println!(
            "captured {} tokens in {} new shards ({rate:.0} tokens/s)",
            done.tokens, done.computed
        );
        done.spec
    };
    exp.set_run(dir.clone());
    exp.manifest.set("store", &spec)?;
    if a.sweep.shard.is_none() {
        store_tables(&mut exp, &dir, &spec, &contexts, &tok)?;
    }
    let (_, peak) = memory();
    exp.manifest.set("peak_rss_bytes", peak)?;
    println!(
        "peak resident memory {} MB (--max-memory {} MB)",
        peak >> 20,
        a.max_memory >> 20
    );
    exp.finish()
}
