//! Trains the embedded default model and writes it as a model directory.
//!
//!     cargo run --bin train_embedded -- [--steps N] [--out DIR]   (about 4.5 minutes on 2 cores)
//!
//! To replace the shipped model: `--out assets/embedded --force`, then rebuild (the model is
//! compiled into the `hooklens` library).

use anyhow::bail;
use anyhow::{Context, Result};
use clap::Parser;
use hooklens::analysis::detectors::{all_head_scores, best_head, HeadKind};
use hooklens::config::Positional;
use hooklens::data::{repeated_random_tokens, PRINTABLE_ASCII};
use hooklens::train::{embedded_config, train_induction_model, Layout, TrainConfig, BYTE_BOS};
use hooklens::ModelConfig;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{rngs::StdRng, SeedableRng};
use std::collections::HashMap;
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
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Attention-only layers.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    layers: u64,
    /// Where the copies sit: `shifted` puts random tokens before and between them (no
    /// positional shortcut); `adjacent` puts them right after BOS, back to back.
    #[arg(long, value_enum, default_value = "shifted")]
    layout: DataLayout,
    /// Positional embeddings: `rotary`, learned absolute (`standard`), or the fixed
    /// sine/cosine table of the original transformer (`sinusoidal`).
    #[arg(long, value_enum, default_value = "rotary")]
    positional: Pos,
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum Pos {
    Rotary,
    Standard,
    Sinusoidal,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DataLayout {
    Shifted,
    Adjacent,
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
        positional_embedding_type: match a.positional {
            Pos::Standard => Positional::Standard,
            Pos::Rotary => Positional::Rotary,
            Pos::Sinusoidal => Positional::Sinusoidal,
        },
        ..embedded_config()
    };
    // Fixed probe batches, short and long, so that scores at different steps compare.
    let probes = [12, 50]
        .map(|half| {
            let mut rng = StdRng::seed_from_u64(12345);
            let dev = candle_core::Device::Cpu;
            repeated_random_tokens(&mut rng, 16, half, Some(BYTE_BOS), PRINTABLE_ASCII, &dev)
                .map(|t| (half, t))
        })
        .into_iter()
        .collect::<hooklens::Result<Vec<_>>>()?;
    let tc = TrainConfig {
        steps: a.steps as usize,
        batch: a.batch as usize,
        lr: a.lr,
        seed: a.seed,
        seq_len: a.seq_len as usize,
        long_from: a.long_from,
        long_seq_len: a.long_seq_len as usize,
        layout: match a.layout {
            DataLayout::Shifted => Layout::Shifted,
            DataLayout::Adjacent => Layout::Adjacent,
        },
    };
    let bar = ProgressBar::new(tc.steps as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    )?);
    let mut avg = None;
    let w = train_induction_model(&cfg, &tc, |step, loss, model| {
        let avg_loss: f32 = avg.map_or(loss, |m: f32| 0.98 * m + 0.02 * loss);
        avg = Some(avg_loss);
        bar.set_message(format!("loss {avg_loss:.3}"));
        bar.inc(1);
        if a.eval_every > 0 && (step % a.eval_every == 0 || step + 1 == tc.steps) {
            let mut line = format!("step {step:5} loss {avg_loss:.4}  best heads:");
            for (half, probe) in &probes {
                let scores = all_head_scores(model, probe, *half)?;
                for kind in [HeadKind::Induction, HeadKind::PreviousToken] {
                    let (l, h, v) = best_head(&scores[&kind])?;
                    line += &format!("  {} L{l}H{h} {v:.3} (half {half})", kind.name());
                }
            }
            bar.suspend(|| eprintln!("{line}"));
        }
        Ok(())
    })?;
    bar.finish();
    let tensors: HashMap<String, _> = w.tensors.into_iter().collect();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let st = a.out.join("model.safetensors");
    hooklens::atomic::atomic_write_with(&st, |tmp| {
        Ok(candle_core::safetensors::save(&tensors, tmp)?)
    })?;
    hooklens::atomic::atomic_write(&a.out.join("config.json"), cfg.to_hf_json().as_bytes())?;
    // The byte tokenizer, so that the folder is a complete model directory for `--model`.
    hooklens::atomic::atomic_write(
        &a.out.join("tokenizer.json"),
        hooklens::Tokenizer::bytes()?.to_json()?.as_bytes(),
    )?;
    println!("wrote {}, config.json and tokenizer.json", st.display());
    Ok(())
}
