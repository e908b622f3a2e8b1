//! Per-head circuits ("A Mathematical Framework for Transformer Circuits"): for every attention
//! head the singular values of its QK and OV circuits, of the full circuits through the
//! embeddings and unembedding, its copying score, and the Q-, K- and V-composition scores between
//! every earlier head's output and every later head's inputs. Writes under
//! `outputs/circuits/<run>/`:
//!
//! - `heads.parquet`: layer, head, circuit, rank, singular value, copying score, top tokens;
//! - `composition.parquet`: kind, writer layer and head, reader layer and head, score;
//! - `composition_q.png`, `composition_k.png`, `composition_v.png`: writer heads x reader heads;
//! - `copying_scores.png`: layers x heads;
//! - `manifest.json`.

use anyhow::Result;
use clap::Parser;
use hooklens::analysis::circuits::{
    composition_scores, copying_scores, head_circuits, Composition,
};
use lab::args::{ModelArgs, RunArgs};
use lab::plot::write_heads;
use lab::tables::HeadsTable;
use serde::Serialize;

#[derive(Parser, Serialize)]
#[command(
    about = "Per-head QK and OV circuits: singular values (also of the full circuits through the vocabulary), copying scores, and Q/K/V composition scores between heads"
)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Singular values kept per circuit.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    top_singular: u32,
    /// Tokens listed per OV singular vector.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    top_tokens: u32,
    #[command(flatten)]
    out: RunArgs,
}

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(a: Args) -> Result<()> {
    let (mut exp, model, tok) = lab::Experiment::start("circuits", &a.model, &a.out, &a)?;
    let (l, h) = (model.cfg.n_layers, model.cfg.n_heads);
    let bar = lab::args::progress_bar((l * h) as u64, "head circuits", "heads")?;
    let (k, n) = (a.top_singular as usize, a.top_tokens as usize);
    let rows = exp.time("head_circuits", || {
        head_circuits(&model, k, n, || bar.inc(1))
    })?;
    bar.finish_and_clear();
    exp.table(
        "heads.parquet",
        &HeadsTable {
            rows: &rows,
            tok: &tok,
        },
    )?;
    let spinner = lab::args::spinner("composition scores");
    let scores = exp.time("composition", || {
        Composition::ALL
            .into_iter()
            .map(|c| Ok((c, composition_scores(&model, c)?)))
            .collect::<hooklens::Result<Vec<_>>>()
    })?;
    spinner.finish_and_clear();
    exp.table("composition.parquet", scores.as_slice())?;

    lab::report::composition_plots(&mut exp, &scores)?;
    let copying = copying_scores(&model)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec2::<f32>()?;
    let path = exp.file(
        "copying_scores.png",
        "copying score (-1..1) of each head, layers x heads",
    )?;
    write_heads(
        &path,
        "Copying score of each head's full OV circuit",
        &copying,
        true,
        Some((-1.0, 1.0)),
    )?;
    exp.finish()
}
