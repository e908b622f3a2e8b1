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
use candle_core::{IndexOp, Tensor};
use clap::Parser;
use hooklens::analysis::ablation::Unit;
use hooklens::analysis::metrics::{next_token_losses, top_k};
use lab::args::{BosArgs, ModelArgs, RunArgs};
use lab::html::{token_values_page, TokenValues};
use lab::manifest::Manifest;
use lab::plot::colored_tokens;
use hooklens::{BlockHook, HookPoint, NameFilter};
use serde::Serialize;
use std::io::Write;
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

const COLUMNS: &[(&str, &str)] = &[
    ("layer", "the neuron's layer"),
    ("neuron", "the neuron (index into mlp.hook_post)"),
    ("rank", "0 = the strongest activation in the text"),
    ("activation", "mlp.hook_post at that position"),
    ("position", "token index in the text (BOS not counted)"),
    ("token", "the token there"),
    ("context", "the text around it, --context tokens each side"),
];

fn main() -> std::process::ExitCode {
    lab::args::finish(run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let text = match &a.text {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("reading --text {}", f.display()))?
        }
        None => DEFAULT_TEXT.into(),
    };
    if text.trim().is_empty() {
        bail!("the text is empty: give a file with at least one token of text");
    }
    let start = std::time::Instant::now();
    let (model, tok) = a.model.load().context("loading the model")?;
    let mut manifest = Manifest::new("neurons", &model, &a)?;
    manifest.record_time("load_model", start);
    let bos = match a.bos.resolve(&model) {
        true => model.cfg.bos_token_id.or(tok.bos_token_id),
        false => None,
    };
    let pair = match (&a.answer, &a.wrong) {
        (Some(x), Some(y)) => Some((
            tok.single_token(x, "--answer")?,
            tok.single_token(y, "--wrong")?,
        )),
        _ => None,
    };
    let ids = tok.encode(&text)?;
    let strs = tok.to_str_tokens(&ids)?;
    let window = (model.cfg.n_ctx - bos.is_some() as usize).min(512);

    let mut units: Vec<Unit> = a
        .neuron
        .iter()
        .map(|s| match s.parse::<Unit>()? {
            u @ Unit::Neuron { .. } => Ok(u),
            u => Err(anyhow::anyhow!(
                "--neuron {u}: write L<layer>N<neuron>, e.g. L1N42"
            )),
        })
        .collect::<Result<_>>()?;
    for u in &units {
        u.check(&model)?;
    }
    let layer = a.layer.unwrap_or(model.cfg.n_layers / 2);
    if units.is_empty() && !model.cfg.attn_only {
        model.block(layer)?;
    }
    let mut layers: Vec<usize> = units.iter().map(|u| u.layer()).collect();
    if units.is_empty() && !model.cfg.attn_only {
        layers.push(layer);
    }
    layers.sort();
    layers.dedup();

    // Each window of the text: its per-token loss and the chosen layers' neuron activations.
    let mut loss: Vec<Option<f32>> = vec![None; ids.len()];
    let mut diff: Vec<Option<f32>> = vec![None; ids.len()];
    let mut acts: Vec<Vec<Vec<f32>>> = vec![vec![]; layers.len()]; // [layer][position][neuron]
    for (w, chunk) in ids.chunks(window).enumerate() {
        let row: Vec<u32> = bos.into_iter().chain(chunk.iter().copied()).collect();
        let tokens = Tensor::new(row.as_slice(), model.device())?.unsqueeze(0)?;
        let points = layers
            .iter()
            .map(|&l| HookPoint::block(l, BlockHook::MlpPost))
            .collect();
        let (logits, cache) = model.run_with_cache(&tokens, NameFilter::Points(points))?;
        let shift = bos.is_some() as usize;
        if row.len() >= 2 {
            let l: Vec<f32> = next_token_losses(&logits, &tokens)?.i(0)?.to_vec1()?;
            // l[i] is the loss of row[i + 1]: text token w * window + i + 1 - shift.
            for (i, v) in l.into_iter().enumerate() {
                if let Some(slot) = (w * window + i + 1).checked_sub(shift) {
                    loss[slot] = Some(v);
                }
            }
        }
        if let Some((x, y)) = pair {
            // The logits at each text position: what the model expects next there.
            let l = logits.i(0)?.to_dtype(candle_core::DType::F32)?;
            let d: Vec<f32> = (l.i((.., x as usize))? - l.i((.., y as usize))?)?.to_vec1()?;
            for (i, v) in d.into_iter().enumerate().skip(shift) {
                diff[w * window + i - shift] = Some(v);
            }
        }
        for (k, &l) in layers.iter().enumerate() {
            let post = cache.block(l, BlockHook::MlpPost)?.i(0)?;
            let post: Vec<Vec<f32>> = post.to_dtype(candle_core::DType::F32)?.to_vec2()?;
            acts[k].extend(post.into_iter().skip(shift));
        }
    }
    if units.is_empty() && !model.cfg.attn_only {
        let k = layers.iter().position(|&l| l == layer).unwrap_or(0);
        let max: Vec<f32> = (0..model.cfg.d_mlp)
            .map(|n| {
                acts[k]
                    .iter()
                    .map(|p| p[n])
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .collect();
        units = top_k(&max, 4)
            .into_iter()
            .map(|(n, _)| Unit::Neuron {
                layer,
                neuron: n as usize,
            })
            .collect();
    }

    let run = a.out.dir("neurons")?;
    let ctx = |p: usize| p.saturating_sub(a.context)..(p + a.context + 1).min(ids.len());
    let (mut c_l, mut c_n, mut c_r, mut c_a, mut c_p, mut c_t, mut c_c) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut sections = vec![];
    let mut pngs = vec![];
    for u in &units {
        let Unit::Neuron { layer, neuron } = *u else {
            continue;
        };
        let k = layers.iter().position(|&l| l == layer).unwrap_or(0);
        let series: Vec<f32> = acts[k].iter().map(|p| p[neuron]).collect();
        for (r, (pos, v)) in top_k(&series, a.top as usize).into_iter().enumerate() {
            let pos = pos as usize;
            let range = ctx(pos);
            c_l.push(layer as u32);
            c_n.push(neuron as u32);
            c_r.push(r as u32);
            c_a.push(v);
            c_p.push(pos as u32);
            c_t.push(strs[pos].clone());
            c_c.push(strs[range.clone()].concat());
            sections.push(TokenValues {
                heading: format!("{u} #{r}: {v:.3} at token {pos} {:?}", strs[pos]),
                note: None,
                tokens: strs[range.clone()].to_vec(),
                values: series[range.clone()].iter().map(|&x| Some(x)).collect(),
                peak: Some(pos - range.start),
            });
            if r == 0 {
                pngs.push((
                    format!("{u}: strongest at token {pos}"),
                    strs[range.clone()].to_vec(),
                    series[range].to_vec(),
                ));
            }
        }
    }
    let mut df = polars::df!("layer" => c_l, "neuron" => c_n, "rank" => c_r, "activation" => c_a, "position" => c_p, "token" => c_t, "context" => c_c)?;
    run.write_table(&mut manifest, "top_activations.parquet", &mut df, COLUMNS)?;
    let name = manifest.model.name.clone();
    if !sections.is_empty() {
        let page = token_values_page(
            &format!("{name}: top activations of {} neurons", units.len()),
            &sections,
        )?;
        lab::atomic_write(&run.file("neurons.html"), page.as_bytes())?;
        manifest.add_file(
            "neurons.html",
            "each neuron's top positions in context, tokens coloured by its activation",
        );
        colored_tokens(
            &run.file("neurons.png"),
            &format!("{name}: each neuron's strongest example"),
            &pngs,
        )?;
        manifest.add_file(
            "neurons.png",
            "each neuron's strongest example, tokens coloured by its activation",
        );
    }
    let loss_page = token_values_page(
        &format!("{name}: per-token loss"),
        &[TokenValues {
            heading: "loss of predicting each token from the ones before it (nats)".into(),
            note: Some("the first token of the text has no prediction".into()),
            tokens: strs.clone(),
            values: loss.clone(),
            peak: None,
        }],
    )?;
    lab::atomic_write(&run.file("token_loss.html"), loss_page.as_bytes())?;
    manifest.add_file(
        "token_loss.html",
        "the text coloured by each token's loss (hover for the value)",
    );
    let shown = strs.len().min(300);
    colored_tokens(
        &run.file("token_loss.png"),
        &format!("{name}: per-token loss (nats), darker = more surprising"),
        &[(
            format!("the first {shown} tokens"),
            strs[..shown].to_vec(),
            loss[..shown].iter().map(|v| v.unwrap_or(0.0)).collect(),
        )],
    )?;
    manifest.add_file(
        "token_loss.png",
        "the text's first tokens coloured by their loss",
    );
    if let (Some(x), Some(y)) = (&a.answer, &a.wrong) {
        let page = token_values_page(
            &format!("{name}: logit({x:?}) - logit({y:?}) after each token"),
            &[TokenValues {
                heading: format!("red: {x:?} expected next more than {y:?}; blue: less"),
                note: None,
                tokens: strs.clone(),
                values: diff,
                peak: None,
            }],
        )?;
        lab::atomic_write(&run.file("logit_diff.html"), page.as_bytes())?;
        manifest.add_file(
            "logit_diff.html",
            "the text coloured by logit(answer) - logit(wrong) at each position",
        );
    }
    manifest.set("tokens", ids.len())?;
    manifest.set(
        "neurons",
        units.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
    )?;
    run.write_manifest(&manifest)?;
    let mut out = std::io::stdout().lock();
    let mean = loss.iter().flatten().sum::<f32>() / loss.iter().flatten().count().max(1) as f32;
    writeln!(out, "{} tokens, mean loss {mean:.3}", ids.len())?;
    if model.cfg.attn_only {
        writeln!(
            out,
            "attention-only model: no MLP neurons, only the loss view"
        )?;
    }
    for s in sections.iter().step_by(a.top as usize) {
        writeln!(out, "  {}", s.heading)?;
    }
    writeln!(out, "wrote {}", run.path.display())?;
    Ok(())
}
