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
use lab::args::{ModelArgs, RunArgs};
use lab::store::{capture_dir, CorpusArgs, StoreArgs};
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
    /// The hooks, dtype and sizes (kept at the top level of args.json, as before).
    #[command(flatten)]
    #[serde(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    out: RunArgs,
}

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(a: Args) -> Result<()> {
    let dir = capture_dir(&a.out, &a.store.sweep)?;
    let (mut exp, model, tok) = lab::Experiment::load("capture", &a.model, &a)?;
    let corpus = exp.time("read_corpus", || Ok(a.corpus.contexts(&model, &tok)))??;
    a.store
        .capture(&mut exp, (&model, &tok), corpus, dir, a.out.resume, &a)?;
    exp.finish()
}
