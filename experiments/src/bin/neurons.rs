//! Token-value views of a text: the per-token loss, and the top-activating positions of chosen
//! MLP neurons (`blocks.L.mlp.hook_post`) shown in context. Writes under
//! `outputs/neurons/<run>/`:
//!
//! - `top_activations.parquet`: each neuron's top positions over the text;
//! - `neurons.html`: each of those positions in context, tokens coloured by the neuron;
//! - `token_loss.html`, `token_loss.png`: the text coloured by each token's loss;
//! - `neurons.png`: each neuron's strongest example, coloured;
//! - with --answer and --wrong, `logit_diff.html`: the text coloured by their logit difference;
//! - `manifest.json`.

use anyhow::{bail, Context, Result};
use clap::Parser;
use hooklens::analysis::neurons::scan_neurons;
use lab::args::{BosArgs, ModelArgs, RunArgs};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Parser, Serialize)]
#[command(
    about = "Per-token loss and the top-activating positions of MLP neurons over a text, as coloured-token views",
    after_help = "Neurons: L1N42 is neuron 42 of layer 1's mlp.hook_post. Without --neuron, the 4 neurons of --layer with the largest activation anywhere in the text."
)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The text (a UTF-8 file). Default: a short built-in paragraph.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Neurons (comma-separated, e.g. L1N42,L3N7).
    #[arg(long, value_delimiter = ',')]
    neuron: Vec<String>,
    /// The layer whose strongest neurons to show without --neuron (default: the middle one).
    #[arg(long, conflicts_with = "neuron")]
    layer: Option<usize>,
    /// Top positions per neuron.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    top: u32,
    /// Tokens of context shown on each side.
    #[arg(long, default_value_t = 10)]
    context: usize,
    /// Also colour the text by logit(answer) - logit(wrong) at every position (one token each,
    /// e.g. --answer " Mary" --wrong " John"): `logit_diff.html`.
    #[arg(long, requires = "wrong")]
    answer: Option<String>,
    /// The other token of --answer's logit difference.
    #[arg(long, requires = "answer")]
    wrong: Option<String>,
    #[command(flatten)]
    bos: BosArgs,
    #[command(flatten)]
    out: RunArgs,
}

const DEFAULT_TEXT: &str = "The cat sat on the mat. The cat sat on the mat. \
In 1969, two astronauts walked on the Moon while a third orbited above. \
Paris is the capital of France, and Rome is the capital of Italy. \
She counted: one, two, three, four, five, six, seven. \
def add(a, b):\n    return a + b\n";

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(a: Args) -> Result<()> {
    let text = match &a.text {
        Some(f) => hooklens::text::read_text(f)
            .with_context(|| format!("reading --text {}", f.display()))?,
        None => DEFAULT_TEXT.into(),
    };
    if text.trim().is_empty() {
        bail!("the text is empty: give a file with at least one token of text");
    }
    let (mut exp, model, tok) = lab::Experiment::start("neurons", &a.model, &a.out, &a)?;
    let bos = a
        .bos
        .resolve(&model)
        .then(|| model.cfg.bos_token_id.or(tok.bos_token_id))
        .flatten();
    let pair = match (&a.answer, &a.wrong) {
        (Some(x), Some(y)) => Some((
            tok.single_token(x, "--answer")?,
            tok.single_token(y, "--wrong")?,
        )),
        _ => None,
    };
    let (ids, units) = (tok.encode(&text)?, lab::args::parse_neurons(&a.neuron)?);
    let strs = tok.to_str_tokens(&ids)?;
    let (scan, units) = exp.time("scan", || {
        scan_neurons(&model, &ids, bos, units, a.layer, pair)
    })?;
    let examples = scan.top_examples(&units, a.top as usize);
    let pair = a.answer.as_deref().zip(a.wrong.as_deref());
    exp.manifest.set("tokens", ids.len())?;
    let names: Vec<String> = units.iter().map(|u| u.to_string()).collect();
    exp.manifest.set("neurons", names)?;
    lab::report::neuron_views(&mut exp, &scan, &examples, &strs, a.context, pair)?;
    exp.finish()
}
