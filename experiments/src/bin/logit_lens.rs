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
use lab::plot::{line_plot, short, token_labels, Heatmap};
use lab::tables::LensTable;
use serde::Serialize;
use std::io::Write;

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
    // Layers x positions of the first prompt: the top token in each cell.
    let labels: Vec<String> = cells
        .iter()
        .filter(|c| c.batch == 0 && c.pos == 0)
        .map(|c| c.label.clone())
        .collect();
    let (mut probs, mut text) = (
        vec![vec![0f32; lengths[0]]; labels.len()],
        vec![vec![String::new(); lengths[0]]; labels.len()],
    );
    for c in cells.iter().filter(|c| c.batch == 0) {
        probs[c.entry][c.pos] = c.top[0].1.exp();
        text[c.entry][c.pos] = short(&tok.decode(&[c.top[0].0])?);
    }
    let cols = token_labels(tok, &ids[0])?;
    let title = format!(
        "Logit lens on {:?}: top next token (colour: its probability)",
        prompts[0]
    );
    let heatmap = Heatmap {
        title: &title,
        values: &probs,
        row_labels: &labels,
        col_labels: &cols,
        x_desc: "position: input token",
        y_desc: "residual stream read at",
        cell_text: Some(&text),
        range: Some((0.0, 1.0)),
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    if let (Some(t), Some(name)) = (target, &a.target) {
        let lengths = &lengths;
        let last = |b: usize| {
            cells
                .iter()
                .filter(move |c| c.batch == b && c.pos + 1 == lengths[b])
        };
        let series: Vec<(String, Vec<f32>)> = (0..prompts.len().min(8))
            .map(|b| {
                (
                    format!("prompt {b}: {}", short(&prompts[b])),
                    last(b)
                        .map(|c| c.target.map_or(f32::NAN, |x| x.1))
                        .collect(),
                )
            })
            .collect();
        let path = exp.file(
            "target.png",
            "the target's log-prob across layers at each prompt's last token (up to 8 prompts)",
        )?;
        line_plot(
            &path,
            &format!("Log-prob of {name:?} (id {t}) at the last token, by layer"),
            &labels,
            &series,
            "residual stream read at",
            "log-prob (nats)",
        )?;
        for c in last(0) {
            let (rank, lp) = c.target.unwrap_or_default();
            let top = format!("{:?}", tok.decode(&[c.top[0].0])?);
            writeln!(
                out,
                "{:<12} top {top:<14} {name:?} rank {rank:>6}  log-prob {lp:8.3}",
                c.label
            )?;
        }
    }
    exp.heatmap("top_tokens.png", "layers x positions of the first prompt: each cell's top token, coloured by its probability", &heatmap)?;
    exp.table(
        "lens.parquet",
        &LensTable {
            cells: &cells,
            tokens: &ids,
            tok: &tok,
            target,
        },
    )?;
    exp.manifest.set("prepend_bos", bos)?;
    exp.manifest.set("target_id", target)?;
    exp.finish()
}
