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

use anyhow::{Context, Result};
use clap::Parser;
use hooklens::analysis::circuits::{
    composition_frame, composition_scores, copying_scores, heads_frame, Composition,
    COMPOSITION_COLUMNS, HEAD_COLUMNS,
};
use lab::args::{ModelArgs, RunArgs};
use lab::manifest::Manifest;
use lab::plot::Heatmap;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::Write;

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
    lab::args::finish(run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let run = a.out.dir("circuits")?;
    let start = std::time::Instant::now();
    let (model, tok) = a.model.load().context("loading the model")?;
    let mut manifest = Manifest::new("circuits", &model, &a)?;
    manifest.record_time("load_model", start);
    let (l, h) = (model.cfg.n_layers, model.cfg.n_heads);

    let bar = ProgressBar::new((l * h) as u64).with_message("head circuits");
    bar.set_style(ProgressStyle::with_template(
        "{msg} {bar:30} {pos}/{len} heads [{elapsed}<{eta}]",
    )?);
    let mut heads = manifest.time("head_circuits", || {
        heads_frame(
            &model,
            &tok,
            a.top_singular as usize,
            a.top_tokens as usize,
            || bar.inc(1),
        )
    })?;
    bar.finish_and_clear();
    run.write_table(&mut manifest, "heads.parquet", &mut heads, HEAD_COLUMNS)?;

    let spinner = lab::args::spinner("composition scores");
    let scores = manifest.time("composition", || {
        Composition::ALL
            .into_iter()
            .map(|c| Ok((c, composition_scores(&model, c)?)))
            .collect::<hooklens::Result<Vec<_>>>()
    })?;
    spinner.finish_and_clear();
    let mut comp = composition_frame(&scores)?;
    run.write_table(
        &mut manifest,
        "composition.parquet",
        &mut comp,
        COMPOSITION_COLUMNS,
    )?;

    let labels: Vec<String> = (0..l)
        .flat_map(|x| (0..h).map(move |y| format!("L{x}H{y}")))
        .collect();
    let mut out = std::io::stdout().lock();
    for (c, s) in &scores {
        let grid: Vec<Vec<f32>> = s.reshape((l * h, l * h))?.to_vec2()?;
        let file = format!("composition_{}.png", c.name().to_lowercase());
        Heatmap {
            title: &format!(
                "{}-composition: earlier head's OV into later head's {}",
                c.name(),
                match c {
                    Composition::Q => "queries",
                    Composition::K => "keys",
                    Composition::V => "values",
                }
            ),
            values: &grid,
            row_labels: &labels,
            col_labels: &labels,
            x_desc: "reader (later head)",
            y_desc: "writer (earlier head)",
            ..Default::default()
        }
        .write(&run.file(&file))?;
        manifest.add_file(&file, &format!("{} composition scores, writer heads (rows) x reader heads (columns); 0 unless the reader is later", c.name()));
        // The strongest pair.
        let (i, best) = grid
            .iter()
            .flatten()
            .enumerate()
            .fold((0, f32::MIN), |m, (i, &v)| if v > m.1 { (i, v) } else { m });
        writeln!(
            out,
            "strongest {}-composition: {} -> {} ({best:.3})",
            c.name(),
            labels[i / (l * h)],
            labels[i % (l * h)]
        )?;
    }
    let copying = copying_scores(&model)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec2::<f32>()?;
    Heatmap {
        title: "Copying score of each head's full OV circuit",
        values: &copying,
        row_labels: &(0..l).map(|x| format!("L{x}")).collect::<Vec<_>>(),
        col_labels: &(0..h).map(|y| format!("H{y}")).collect::<Vec<_>>(),
        x_desc: "head",
        y_desc: "layer",
        diverging: true,
        range: Some((-1.0, 1.0)),
        ..Default::default()
    }
    .write(&run.file("copying_scores.png"))?;
    manifest.add_file(
        "copying_scores.png",
        "copying score (-1..1) of each head, layers x heads",
    );
    run.write_manifest(&manifest)?;
    writeln!(out, "wrote {}", run.path.display())?;
    Ok(())
}
