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

use anyhow::{bail, Context, Result};
use clap::Parser;
use hooklens::analysis::lens::{lens_frame, logit_lens, LensOpts, LENS_COLUMNS};
use hooklens::analysis::resid::Positions;
use lab::args::{ModelArgs, PromptArgs, RunArgs};
use lab::manifest::Manifest;
use lab::plot::{line_plot, Heatmap};
use hooklens::{BlockHook, HookPoint, NameFilter};
use serde::Serialize;
use std::io::Write;

/// The embedded model's default: byte-level text it continues by induction.
const EMBEDDED_PROMPT: &str = "Hello world! Hello world! Hello w";
const EMBEDDED_TARGET: &str = "o";

#[derive(Parser, Serialize)]
#[command(
    about = "Logit lens: the next-token prediction read off the residual stream at every layer"
)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// A token to follow across layers (its rank and log-prob), e.g. " Paris". Must be one token.
    #[arg(long)]
    target: Option<String>,
    /// How many top tokens to keep per layer and position.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    top_k: u32,
    /// Also read the residual stream between each layer's attention and MLP.
    #[arg(long)]
    incl_mid: bool,
    #[command(flatten)]
    out: RunArgs,
}

fn main() -> std::process::ExitCode {
    lab::args::finish(run(Args::parse()))
}

fn run(mut a: Args) -> Result<()> {
    let defaults =
        a.model.model.is_none() && a.prompt.prompt.is_none() && a.prompt.prompt_file.is_none();
    if defaults {
        a.prompt.prompt = Some(EMBEDDED_PROMPT.into());
        a.target.get_or_insert(EMBEDDED_TARGET.into());
    }
    let prompts = a.prompt.prompts()?;
    let run = a.out.dir("logit_lens")?;
    let start = std::time::Instant::now();
    let (model, tok) = a.model.load().context("loading the model")?;
    if a.top_k as usize > model.cfg.d_vocab {
        bail!(
            "--top-k {}: must lie in 1..={} (the vocabulary size)",
            a.top_k,
            model.cfg.d_vocab
        );
    }
    let target = a
        .target
        .as_deref()
        .map(|t| tok.single_token(t, "--target"))
        .transpose()?;
    let mut manifest = Manifest::new("logit_lens", &model, &a)?;
    manifest.record_time("load_model", start);
    let bos = a.prompt.prepend_bos(&model);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let tokens = tok.to_tokens(&refs, bos, model.device())?;
    let lengths = tok.lengths(&refs, bos)?;
    manifest.set("prepend_bos", bos)?;
    manifest.set("target_id", target)?;

    let n = model.cfg.n_layers;
    let bar = lab::args::spinner("running the lens");
    let cells = manifest.time("lens", || {
        let mut points: Vec<HookPoint> = (0..n)
            .map(|l| HookPoint::block(l, BlockHook::ResidPre))
            .collect();
        points.push(HookPoint::block(n - 1, BlockHook::ResidPost));
        if a.incl_mid && !model.cfg.attn_only {
            points.extend((0..n).map(|l| HookPoint::block(l, BlockHook::ResidMid)));
        }
        let (_, cache) = model.run_with_cache(&tokens, NameFilter::Points(points))?;
        let opts = LensOpts {
            k: a.top_k as usize,
            target,
            pos: Positions::All,
            incl_mid: a.incl_mid,
        };
        logit_lens(&model, &cache, &opts)
    })?;
    bar.finish_and_clear();
    // Padded positions are not the prompt's: keep each prompt's real ones.
    let cells: Vec<_> = cells
        .into_iter()
        .filter(|c| c.pos < lengths[c.batch])
        .collect();
    let ids: Vec<Vec<u32>> = (0..prompts.len())
        .map(|i| Ok(tokens.get(i)?.to_vec1::<u32>()?[..lengths[i]].to_vec()))
        .collect::<Result<_>>()?;
    let mut df = lens_frame(&cells, &ids, &tok, target)?;
    run.write_table(&mut manifest, "lens.parquet", &mut df, LENS_COLUMNS)?;

    // Layers x positions of the first prompt: the top token in each cell.
    let labels: Vec<String> = cells
        .iter()
        .filter(|c| c.batch == 0 && c.pos == 0)
        .map(|c| c.label.clone())
        .collect();
    let p0 = lengths[0];
    let (mut probs, mut text) = (
        vec![vec![0f32; p0]; labels.len()],
        vec![vec![String::new(); p0]; labels.len()],
    );
    for c in cells.iter().filter(|c| c.batch == 0) {
        let (id, lp) = c.top[0];
        probs[c.entry][c.pos] = lp.exp();
        text[c.entry][c.pos] = short(&tok.decode(&[id])?);
    }
    let cols: Vec<String> = tok
        .to_str_tokens(&ids[0])?
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{i}:{}", short(s)))
        .collect();
    Heatmap {
        title: &format!(
            "Logit lens on {:?}: top next token (colour: its probability)",
            prompts[0]
        ),
        values: &probs,
        row_labels: &labels,
        col_labels: &cols,
        x_desc: "position: input token",
        y_desc: "residual stream read at",
        cell_text: Some(&text),
        range: Some((0.0, 1.0)),
        ..Default::default()
    }
    .write(&run.file("top_tokens.png"))?;
    manifest.add_file("top_tokens.png", "layers x positions of the first prompt: each cell's top token, coloured by its probability");

    let mut out = std::io::stdout().lock();
    if let (Some(t), Some(name)) = (target, &a.target) {
        let series: Vec<(String, Vec<f32>)> = (0..prompts.len().min(8))
            .map(|b| {
                let v = cells
                    .iter()
                    .filter(|c| c.batch == b && c.pos + 1 == lengths[b])
                    .map(|c| c.target.map_or(f32::NAN, |x| x.1))
                    .collect();
                (format!("prompt {b}: {}", short(&prompts[b])), v)
            })
            .collect();
        line_plot(
            &run.file("target.png"),
            &format!("Log-prob of {name:?} (id {t}) at the last token, by layer"),
            &labels,
            &series,
            "residual stream read at",
            "log-prob (nats)",
        )?;
        manifest.add_file(
            "target.png",
            "the target's log-prob across layers at each prompt's last token (up to 8 prompts)",
        );
        for c in cells
            .iter()
            .filter(|c| c.batch == 0 && c.pos + 1 == lengths[0])
        {
            let (rank, lp) = c.target.unwrap_or_default();
            writeln!(
                out,
                "{:<12} top {:<14} {name:?} rank {rank:>6}  log-prob {lp:8.3}",
                c.label,
                format!("{:?}", tok.decode(&[c.top[0].0])?)
            )?;
        }
    }
    run.write_manifest(&manifest)?;
    writeln!(out, "wrote {}", run.path.display())?;
    Ok(())
}

/// A token or prompt shortened for a plot label: control characters escaped, spaces shown as ␣.
fn short(s: &str) -> String {
    let e: String = s.escape_debug().collect::<String>().replace(' ', "␣");
    match e.chars().count() > 24 {
        true => format!("{}…", e.chars().take(23).collect::<String>()),
        false => e,
    }
}
