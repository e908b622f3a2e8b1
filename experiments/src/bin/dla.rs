//! Direct logit attribution: which heads, MLPs (or neurons), embeddings and biases push the
//! answer's logit above the wrong answer's. Writes under `outputs/dla/<run>/`:
//!
//! - `dla.parquet`: one row per component (columns in `manifest.json`); the contributions sum to
//!   the model's logit difference, and the binary prints that check;
//! - `top_components.png`: bar chart of the components with the largest |contribution|;
//! - `heads.png`: layers x heads heatmap of head contributions;
//! - `manifest.json`.

use anyhow::{bail, Context, Result};
use clap::Parser;
use hooklens::analysis::dla::{direct_logit_attribution, dla_frame, DLA_COLUMNS};
use lab::args::{BosArgs, ModelArgs, RunArgs};
use hooklens::data::{ioi_pairs, read_pairs, tokenize_pairs, PairBatch, PromptPair};
use lab::manifest::Manifest;
use lab::plot::{bar_chart, Heatmap};
use hooklens::NameFilter;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Serialize)]
#[command(
    about = "Direct logit attribution: each component's share of the logit difference answer - wrong"
)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt (with --answer and --wrong). Default for the embedded model: an induction
    /// prompt, answer "o", wrong "r".
    #[arg(long, conflicts_with_all = ["ioi", "pairs"])]
    prompt: Option<String>,
    /// The expected next token (one token, e.g. " Mary").
    #[arg(long, requires = "prompt")]
    answer: Option<String>,
    /// The competing token (one token, e.g. " John").
    #[arg(long, requires = "prompt")]
    wrong: Option<String>,
    /// Instead of a prompt: this many IOI prompts from the data module (answer: the indirect
    /// object, wrong: the subject), averaged.
    #[arg(long, conflicts_with = "pairs", value_parser = clap::value_parser!(u32).range(1..))]
    ioi: Option<u32>,
    /// Instead of a prompt: the clean prompts, answers and wrong answers of a .tsv/.jsonl pair file.
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// Seed of the IOI prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Attribute to every MLP neuron instead of every MLP layer.
    #[arg(long)]
    expand_neurons: bool,
    /// Bars in the top-components chart.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
    top: u32,
    #[command(flatten)]
    bos: BosArgs,
    #[command(flatten)]
    out: RunArgs,
}

fn main() -> std::process::ExitCode {
    lab::args::finish(run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let pairs: Vec<PromptPair> = match (&a.prompt, &a.ioi, &a.pairs) {
        (Some(p), None, None) => {
            let (Some(answer), Some(wrong)) = (&a.answer, &a.wrong) else {
                bail!("--prompt needs --answer and --wrong");
            };
            vec![PromptPair {
                clean: p.clone(),
                corrupted: p.clone(),
                answer: answer.clone(),
                wrong: wrong.clone(),
                line: None,
            }]
        }
        (None, None, Some(f)) => read_pairs(f)?,
        (None, None, None) if a.model.model.is_none() => vec![PromptPair {
            clean: "Hello world! Hello world! Hello w".into(),
            corrupted: "Hello world! Hello world! Hello w".into(),
            answer: "o".into(),
            wrong: "r".into(),
            line: None,
        }],
        (None, None, None) => {
            bail!("give --prompt with --answer and --wrong, --ioi N, or --pairs FILE")
        }
        _ => vec![],
    };
    let run = a.out.dir("dla")?;
    let start = std::time::Instant::now();
    let (model, tok) = a.model.load().context("loading the model")?;
    let mut manifest = Manifest::new("dla", &model, &a)?;
    manifest.record_time("load_model", start);
    let pairs = match a.ioi {
        Some(n) => ioi_pairs(&tok, n as usize, a.seed)?,
        None => pairs,
    };
    let bos = a.bos.resolve(&model);
    let source = a
        .pairs
        .as_ref()
        .map_or("the prompt".to_string(), |p| p.display().to_string());
    let t = tokenize_pairs(&pairs, &tok, bos, &source)?;
    let batch = PairBatch::new(&t, 0, model.device())?;
    let last: Vec<usize> = batch.lengths.iter().map(|l| l - 1).collect();
    manifest.seed = a.ioi.map(|_| a.seed);
    manifest.set("prompts", pairs.len())?;
    manifest.set("prepend_bos", bos)?;

    let bar = lab::args::spinner("attributing");
    let dla = manifest.time("attribute", || {
        let (logits, cache) = model.run_with_cache(&batch.clean, NameFilter::All)?;
        let expand = a.expand_neurons && !model.cfg.attn_only;
        direct_logit_attribution(
            &model,
            &cache,
            &logits,
            (&batch.answers, &batch.wrong),
            &last,
            expand,
        )
    })?;
    bar.finish_and_clear();
    manifest.set("logit_diff", dla.logit_diff)?;
    let mut df = dla_frame(&dla)?;
    run.write_table(&mut manifest, "dla.parquet", &mut df, DLA_COLUMNS)?;

    let mut top: Vec<(String, f32)> = dla
        .contributions
        .iter()
        .map(|c| (c.component.clone(), c.value))
        .collect();
    top.sort_by(|x, y| y.1.abs().total_cmp(&x.1.abs()));
    top.truncate(a.top as usize);
    let what = match pairs.len() {
        1 => format!("{:?} over {:?}", pairs[0].answer, pairs[0].wrong),
        n => format!("answer over wrong answer, mean of {n} prompts"),
    };
    bar_chart(
        &run.file("top_components.png"),
        &format!("Direct logit attribution: {what}"),
        &top,
        "contribution to the logit difference",
    )?;
    manifest.add_file(
        "top_components.png",
        "bar chart of the components with the largest |contribution|",
    );
    // Models with post-sublayer norms (Gemma 2) attribute whole attention layers, not heads.
    if dla.contributions.iter().any(|c| c.kind == "head") {
        let (nl, nh) = (model.cfg.n_layers, model.cfg.n_heads);
        let mut grid = vec![vec![0f32; nh]; nl];
        for c in dla.contributions.iter().filter(|c| c.kind == "head") {
            if let (Some(l), Some(h)) = (c.layer, c.head) {
                grid[l as usize][h as usize] = c.value;
            }
        }
        Heatmap {
            title: &format!("Head contributions: {what}"),
            values: &grid,
            row_labels: &(0..nl).map(|l| format!("L{l}")).collect::<Vec<_>>(),
            col_labels: &(0..nh).map(|h| format!("H{h}")).collect::<Vec<_>>(),
            x_desc: "head",
            y_desc: "layer",
            diverging: true,
            ..Default::default()
        }
        .write(&run.file("heads.png"))?;
        manifest.add_file(
            "heads.png",
            "layers x heads heatmap of head contributions (red pushes towards the answer)",
        );
    }
    run.write_manifest(&manifest)?;

    let sum: f32 = dla.contributions.iter().map(|c| c.value).sum();
    let mut out = std::io::stdout().lock();
    let capped = match model.cfg.output_logits_soft_cap {
        Some(_) => " (before the final logit soft-cap)",
        None => "",
    };
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
    writeln!(out, "wrote {}", run.path.display())?;
    Ok(())
}
