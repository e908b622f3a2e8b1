//! Direct logit attribution: which heads, MLPs (or neurons), embeddings and biases push the
//! answer's logit above the wrong answer's. Writes under `outputs/dla/<run>/`:
//!
//! - `dla.parquet`: one row per component (columns in `manifest.json`); the contributions sum to
//!   the model's logit difference, and the binary prints that check;
//! - `top_components.png`: bar chart of the components with the largest |contribution|;
//! - `heads.png`: layers x heads heatmap of head contributions;
//! - `manifest.json`.

use anyhow::Result;
use clap::Parser;
use hooklens::analysis::dla::dla_on;
use lab::args::{ModelArgs, PairArgs, RunArgs};
use lab::plot::{bar_chart, largest};
use serde::Serialize;
use std::io::Write;

#[derive(Parser, Serialize)]
#[command(
    about = "Direct logit attribution: each component's share of the logit difference answer - wrong",
    after_help = "Prompts: --prompt with --answer and --wrong, --ioi N, or --pairs FILE (the clean prompts are attributed). Default on the embedded model: \"Hello world! Hello world! Hello w\", answer \"o\" over \"r\"."
)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: PairArgs,
    /// One component per MLP neuron instead of per MLP layer.
    #[arg(long)]
    expand_neurons: bool,
    /// Bars in the top-components chart.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
    top: u32,
    #[command(flatten)]
    out: RunArgs,
}

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(mut a: Args) -> Result<()> {
    let d = &mut a.data;
    if a.model.model.is_none() && d.prompt.is_none() && d.ioi.is_none() && d.pairs.is_none() {
        d.prompt = Some("Hello world! Hello world! Hello w".into());
        (d.answer, d.wrong) = (Some("o".into()), Some("r".into()));
    }
    let (mut exp, model, tok) = lab::Experiment::start("dla", &a.model, &a.out, &a)?;
    let (pairs, batch) = a.data.load(&model, &tok)?;
    let bar = lab::args::spinner("attributing");
    let dla = exp.time("attribute", || dla_on(&model, &batch, a.expand_neurons))?;
    bar.finish_and_clear();
    exp.manifest.seed = a.data.ioi.map(|_| a.data.seed);
    exp.manifest.set("prompts", pairs.len())?;
    exp.manifest
        .set("prepend_bos", a.data.bos.resolve(&model))?;
    exp.manifest.set("logit_diff", dla.logit_diff)?;
    exp.table("dla.parquet", &dla)?;
    let top = largest(
        dla.contributions
            .iter()
            .map(|c| (c.component.clone(), c.value)),
        a.top as usize,
    );
    let what = match pairs.len() {
        1 => format!("{:?} over {:?}", pairs[0].answer, pairs[0].wrong),
        n => format!("answer over wrong answer, mean of {n} prompts"),
    };
    let path = exp.file(
        "top_components.png",
        "bar chart of the components with the largest |contribution|",
    )?;
    bar_chart(
        &path,
        &format!("Direct logit attribution: {what}"),
        &top,
        "contribution to the logit difference",
    )?;
    // Models with post-sublayer norms (Gemma 2) attribute whole attention layers, not heads.
    if dla.contributions.iter().any(|c| c.kind == "head") {
        let mut grid = vec![vec![0f32; model.cfg.n_heads]; model.cfg.n_layers];
        for c in dla.contributions.iter().filter(|c| c.kind == "head") {
            if let (Some(l), Some(h)) = (c.layer, c.head) {
                grid[l as usize][h as usize] = c.value;
            }
        }
        exp.heads(
            "heads.png",
            "layers x heads heatmap of head contributions (red pushes towards the answer)",
            &format!("Head contributions: {what}"),
            &grid,
            true,
        )?;
    }
    let sum: f32 = dla.contributions.iter().map(|c| c.value).sum();
    let capped = match model.cfg.output_logits_soft_cap {
        Some(_) => " (before the final logit soft-cap)",
        None => "",
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "logit difference{capped} {:.4}; sum of the {} contributions {sum:.4} (|diff| {:.1e})",
        dla.logit_diff,
        dla.contributions.len(),
        (sum - dla.logit_diff).abs()
    )?;
    for (name, v) in top.iter().take(10) {
        writeln!(out, "  {name:<14} {v:+.4}")?;
    }
    exp.finish()
}
