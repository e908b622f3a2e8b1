//! Trains the embedded default model and writes it as a model directory.
//!
//!     cargo run --bin train_embedded -- [--steps N] [--out DIR]   (about 4.5 minutes on 2 cores)
//!
//! To replace the shipped model: `--out assets/embedded --force`, then rebuild (the model is
//! compiled into the `hooklens` library).

use anyhow::bail;
use anyhow::Result;
use clap::Parser;
use hooklens::config::Positional;
use hooklens::train::embedded_config;
use hooklens::train::{Layout, TrainConfig};
use hooklens::ModelConfig;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Train the embedded 2-layer attention-only induction model")]
struct Args {
    /// Optimiser steps.
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    /// Sequences per batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Seeds the initial weights and the training sequences.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Attention-only layers.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    layers: u64,
    /// Where the copies sit: `shifted` puts random tokens before and between them (no
    /// positional shortcut); `adjacent` puts them right after BOS, back to back.
    #[arg(long, value_parser = lab::args::choice::<Layout>(), default_value = "shifted")]
    layout: Layout,
    /// Positional embeddings: `rotary`, learned absolute (`standard`), or the fixed
    /// sine/cosine table of the original transformer (`sinusoidal`).
    #[arg(long, value_parser = lab::args::choice::<Positional>(), default_value = "rotary")]
    positional: Positional,
    /// Print the best induction score (repeated random tokens, half 12) every N steps; 0: never.
    #[arg(long, default_value_t = 250)]
    eval_every: usize,
    /// Tokens per training sequence (7 to the model's 128 positions).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(7..=128))]
    seq_len: u64,
    /// Step from which sequences are --long-seq-len tokens (batch scaled to keep tokens per step).
    #[arg(long, default_value_t = 2500)]
    long_from: usize,
    /// Sequence length from --long-from on (7 to the model's 128 positions).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(7..=128))]
    long_seq_len: u64,
    /// Output folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long, default_value = "outputs/train_embedded/model")]
    out: PathBuf,
    /// Replace a model already in --out (needed to overwrite the shipped assets/embedded).
    #[arg(long)]
    force: bool,
}

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(a: Args) -> Result<()> {
    if !(a.lr.is_finite() && a.lr > 0.0) {
        bail!("--lr {}: must be a finite number > 0", a.lr);
    }
    if a.out.join("model.safetensors").exists() && !a.force {
        bail!(
            "{} already holds a model; pass --force to replace it or --out DIR for another folder",
            a.out.display()
        );
    }
    let cfg = ModelConfig {
        n_layers: a.layers as usize,
        positional_embedding_type: a.positional,
        ..embedded_config()
    };
    let tc = TrainConfig {
        steps: a.steps as usize,
        batch: a.batch as usize,
        lr: a.lr,
        seed: a.seed,
        seq_len: a.seq_len as usize,
        long_from: a.long_from,
        long_seq_len: a.long_seq_len as usize,
        layout: a.layout,
    };
    let w = lab::progress::train_with_progress(&cfg, &tc, a.eval_every)?;
    // With the byte tokenizer, the folder is a complete model directory for `--model`.
    hooklens::loading::save_dir(&a.out, &cfg, w, &hooklens::Tokenizer::bytes()?)?;
    let st = a.out.join("model.safetensors");
    println!("wrote {}, config.json and tokenizer.json", st.display());
    Ok(())
}
