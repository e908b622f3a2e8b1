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
use serde::Serialize;

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
    /// Token positions per forward pass (prompts × positions, every hook cached for them):
    /// memory is bounded by this, not by the number of prompts.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    tokens_per_pass: u64,
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
    let dla = exp.time("attribute", || {
        dla_on(&model, &batch, a.expand_neurons, a.tokens_per_pass as usize)
    })?;
    bar.finish_and_clear();
    exp.manifest.seed = a.data.ioi.map(|_| a.data.seed);
    exp.manifest.set("prompts", pairs.len())?;
    exp.manifest
        .set("prepend_bos", a.data.bos.resolve(&model))?;
    exp.manifest.set("logit_diff", dla.logit_diff)?;
    exp.table("dla.parquet", &dla)?;
    lab::report::dla_views(&mut exp, &dla, &pairs, a.top as usize)?;
    exp.finish()
}
