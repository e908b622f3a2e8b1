//! Trains the embedded default model and writes it to `assets/embedded/`.
//!
//!     cargo run --bin train_embedded -- [--steps N] [--out DIR]
//!
//! Afterwards rebuild: the model is compiled into the `hooklens` library.

use anyhow::{Context, Result};
use clap::Parser;
use hooklens::train::{embedded_config, train_induction_model, TrainConfig};
use hooklens::ModelConfig;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Train the embedded 2-layer attention-only induction model")]
struct Args {
    /// Optimiser steps.
    #[arg(long, default_value_t = 5000)]
    steps: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Attention-only layers.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Put random tokens before and between the two copies (no positional shortcut).
    #[arg(long)]
    shifted: bool,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 32)]
    seq_len: usize,
    /// Output folder (config.json + model.safetensors).
    #[arg(long, default_value = "assets/embedded")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let cfg = ModelConfig {
        n_layers: a.layers,
        ..embedded_config()
    };
    let tc = TrainConfig {
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        seed: a.seed,
        seq_len: a.seq_len,
        shifted: a.shifted,
    };
    let bar = ProgressBar::new(tc.steps as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    )?);
    let mut avg = None;
    let w = train_induction_model(&cfg, &tc, |step, loss| {
        let a: f32 = avg.map_or(loss, |m: f32| 0.98 * m + 0.02 * loss);
        avg = Some(a);
        bar.set_message(format!("loss {a:.3}"));
        bar.inc(1);
        if step % 100 == 0 {
            bar.suspend(|| eprintln!("step {step:5} loss {a:.4}"));
        }
    })?;
    bar.finish();
    let tensors: HashMap<String, _> = w.tensors.into_iter().collect();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let st = a.out.join("model.safetensors");
    hooklens::export::atomic_write_with(&st, |tmp| {
        Ok(candle_core::safetensors::save(&tensors, tmp)?)
    })?;
    hooklens::export::atomic_write(&a.out.join("config.json"), cfg.to_hf_json().as_bytes())?;
    // The byte tokenizer, so that the folder is a complete model directory for `--model`.
    hooklens::export::atomic_write(
        &a.out.join("tokenizer.json"),
        hooklens::Tokenizer::bytes()?.to_json()?.as_bytes(),
    )?;
    println!("wrote {}, config.json and tokenizer.json", st.display());
    Ok(())
}
