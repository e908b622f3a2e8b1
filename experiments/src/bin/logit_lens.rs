//! The logit lens: what the model would predict if it stopped at each layer. Writes under
//! `outputs/logit_lens/<run>/`:
//!
//! - `lens.parquet`: one row per (prompt, layer, position, top-k rank), with the target's rank and
//!   log-prob and the entropy (columns in `manifest.json`);
//! - `top_tokens.png`: layers x positions of the first prompt, each cell its top token, coloured by
//!   that token's probability;
//! - `target.png` (with `--target`): the target's log-prob across layers at each prompt's last
//!   token;
//! - `manifest.json`.

use anyhow::Result;
use clap::Parser;
use hooklens::analysis::lens::{logit_lens_on, LensOpts};
use hooklens::analysis::resid::Positions;
use lab::args::{ModelArgs, PromptArgs, RunArgs};
use lab::tables::LensTable;
use serde::Serialize;

#[derive(Parser, Serialize)]
#[command(
    about = "Logit lens: the next-token prediction read off the residual stream at every layer"
)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// A token (one token, e.g. " Paris") whose rank and log-prob are tracked across layers.
    #[arg(long)]
    target: Option<String>,
    /// How many of the lens's most likely tokens to keep per cell.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    top_k: u32,
    /// Also read the residual stream between each layer's attention and MLP.
    #[arg(long)]
    incl_mid: bool,
    #[command(flatten)]
    out: RunArgs,
}

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(mut a: Args) -> Result<()> {
    if a.model.model.is_none() && a.prompt.prompt.is_none() && a.prompt.prompt_file.is_none() {
        a.prompt.prompt = Some("Hello world! Hello world! Hello w".into());
        a.target.get_or_insert("o".into());
    }
    let prompts = a.prompt.prompts()?;
    let (mut exp, model, tok) = lab::Experiment::start("logit_lens", &a.model, &a.out, &a)?;
    let (model, tok) = (&model, &tok);
    let target = a
        .target
        .as_deref()
        .map(|t| tok.single_token(t, "--target"))
        .transpose()?;
    let (bos, refs) = (
        a.prompt.prepend_bos(model),
        prompts.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let tokens = tok.to_tokens(&refs, bos, model.device())?;
    let lengths = tok.lengths(&refs, bos)?;
    let opts = LensOpts {
        k: a.top_k as usize,
        target,
        pos: Positions::All,
        incl_mid: a.incl_mid,
    };
    let bar = lab::args::spinner("running the lens");
    let cells = exp
        .manifest
        .time("lens", || logit_lens_on(model, &tokens, &opts))?;
    bar.finish_and_clear();
    // Padded positions are not the prompt's: keep each prompt's real ones.
    let cells: Vec<_> = cells
        .into_iter()
        .filter(|c| c.pos < lengths[c.batch])
        .collect();
    let ids: Vec<Vec<u32>> = (0..prompts.len())
        .map(|i| Ok(tokens.get(i)?.to_vec1::<u32>()?[..lengths[i]].to_vec()))
        .collect::<Result<_>>()?;
    let target = target.zip(a.target.as_deref());
    lab::report::lens_views(&mut exp, &cells, tok, &ids, &prompts, target)?;
    exp.table(
        "lens.parquet",
        &LensTable {
            cells: &cells,
            tokens: &ids,
            tok,
            target: target.map(|t| t.0),
        },
    )?;
    exp.manifest.set("prepend_bos", bos)?;
    exp.manifest.set("target_id", target.map(|t| t.0))?;
    exp.finish()
}
