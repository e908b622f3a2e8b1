//! Softmax with temperature on a real model: the top next tokens of a prompt and their
//! probabilities at several temperatures. Writes under `outputs/temperature/<run>/`:
//!
//! - `temperature.parquet`: one row per (temperature, token) (columns in `manifest.json`);
//! - `temperature.png`: the top tokens' probabilities, one bar per temperature;
//! - `manifest.json`.

use anyhow::{bail, Context, Result};
use candle_core::IndexOp;
use clap::Parser;
use hooklens::analysis::metrics::{probs_at_temperature, temperature_rows};
use lab::args::{BosArgs, ModelArgs, RunArgs};
use lab::tables::TemperatureTable;
use serde::Serialize;

#[derive(Parser, Serialize)]
#[command(
    about = "Next-token probabilities of a prompt at several sampling temperatures (softmax(logits / T))"
)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt. Default: "The cat sat on the mat. The cat sat on the m" (the embedded model
    /// completes it by induction).
    #[arg(long)]
    prompt: Option<String>,
    /// Temperatures (comma-separated, each > 0).
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,2")]
    temperatures: Vec<f64>,
    /// How many of the most likely tokens to show.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    top: u32,
    #[command(flatten)]
    bos: BosArgs,
    #[command(flatten)]
    out: RunArgs,
}

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(a: Args) -> Result<()> {
    let prompt = a
        .prompt
        .clone()
        .unwrap_or_else(|| "The cat sat on the mat. The cat sat on the m".into());
    if prompt.trim().is_empty() {
        bail!("the prompt is empty: give at least one token of text");
    }
    for &t in &a.temperatures {
        probs_at_temperature(&[0.0], t).context("--temperatures")?;
    }
    let (mut exp, model, tok) = lab::Experiment::start("temperature", &a.model, &a.out, &a)?;
    let tokens = tok.to_tokens(&[prompt.as_str()], a.bos.resolve(&model), model.device())?;
    let logits = model.run_with_hooks(&tokens, hooklens::Hooks::none())?;
    let last: Vec<f32> = logits
        .i((0, tokens.dim(1)? - 1))?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    let rows = temperature_rows(&last, &a.temperatures, a.top as usize)?;
    exp.table(
        "temperature.parquet",
        &TemperatureTable {
            rows: &rows,
            tok: &tok,
        },
    )?;
    lab::report::temperature_views(&mut exp, &rows, a.temperatures.len(), &tok, &prompt)?;
    exp.finish()
}
