//! The `hooklens` command line: list hook points, run a prompt, cache activations, generate.

use anyhow::{bail, Context, Result};
use candle_core::{DType, IndexOp, D};
use clap::{Parser, Subcommand};
use hooklens::analysis::metrics;
use hooklens::cli::{ModelArgs, PromptArgs};
use hooklens::generate::{generate, GenerateOptions};
use hooklens::NameFilter;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "hooklens", version, about = "Hooked transformers for mechanistic interpretability", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the model's hook points with their shapes on a prompt.
    Hooks {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt whose shapes are shown.
        #[arg(long, default_value = "Hello world")]
        prompt: String,
    },
    /// Run a prompt: the top-k next tokens with probabilities, and the loss (like
    /// TransformerLens's `test_prompt`).
    Run {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        prompt: PromptArgs,
        /// How many next-token candidates to show.
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        /// An expected answer: its log-prob and rank are shown.
        #[arg(long)]
        answer: Option<String>,
    },
    /// Run with cache and write the activations to a .safetensors file keyed by hook name
    /// (batch dimension kept; read it with `safetensors.numpy.load_file`).
    Cache {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        prompt: PromptArgs,
        /// Keep only hook points whose name matches this regular expression.
        #[arg(long)]
        names: Option<String>,
        /// Output file.
        #[arg(long, default_value = "outputs/cache.safetensors")]
        out: PathBuf,
        /// Replace the output file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Continue a prompt: greedy at temperature 0, otherwise sampled.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        prompt: PromptArgs,
        #[arg(long, default_value_t = 20)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long)]
        top_p: Option<f64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Recompute the whole prefix each step instead of using the KV cache.
        #[arg(long)]
        no_kv_cache: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Hooks { model, prompt } => hooks(model, &prompt),
        Cmd::Run {
            model,
            prompt,
            top_k,
            answer,
        } => run(model, prompt, top_k, answer),
        Cmd::Cache {
            model,
            prompt,
            names,
            out,
            force,
        } => cache(model, prompt, names, out, force),
        Cmd::Generate {
            model,
            prompt,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            no_kv_cache,
        } => {
            let opts = GenerateOptions {
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed,
                use_kv_cache: !no_kv_cache,
                stop_at_eos: true,
            };
            generate_cmd(model, prompt, opts)
        }
    }
}

fn generate_cmd(margs: ModelArgs, pargs: PromptArgs, opts: GenerateOptions) -> Result<()> {
    let (model, tok) = margs.load().context("loading the model")?;
    let bos = pargs.prepend_bos(&model);
    for prompt in pargs.prompts()? {
        let ids = tok.encode_prompt(&prompt, bos)?;
        let new = generate(&model, &ids, &opts, &mut hooklens::Hooks::none())?;
        println!("{}", tok.decode(&new)?);
    }
    Ok(())
}

fn hooks(margs: ModelArgs, prompt: &str) -> Result<()> {
    let (model, tok) = margs.load().context("loading the model")?;
    let tokens = tok.to_tokens(&[prompt], model.cfg.default_prepend_bos, model.device())?;
    // Every hook point, the optional attn.hook_result included.
    let (_, cache) = model.run_with_cache(&tokens, NameFilter::regex(".")?)?;
    println!(
        "{} hook points (batch 1, {} tokens of {prompt:?}):",
        cache.len(),
        tokens.dim(1)?
    );
    for (p, t) in cache.iter() {
        println!("  {:<36} {:?}", p.to_string(), t.dims());
    }
    Ok(())
}

fn run(margs: ModelArgs, pargs: PromptArgs, top_k: usize, answer: Option<String>) -> Result<()> {
    let (model, tok) = margs.load().context("loading the model")?;
    let prompts = pargs.prompts()?;
    let bos = pargs.prepend_bos(&model);
    for prompt in &prompts {
        let tokens = tok.to_tokens(&[prompt.as_str()], bos, model.device())?;
        let ids: Vec<u32> = tokens.i(0)?.to_vec1()?;
        let logits = model
            .forward(&tokens, &mut hooklens::Hooks::none())?
            .to_dtype(DType::F32)?;
        let lp = candle_nn::ops::log_softmax(&logits.i(0)?, D::Minus1)?;
        println!("Tokenized prompt: {:?}", tok.to_str_tokens(&ids)?);
        if ids.len() > 1 {
            let loss = metrics::mean_next_token_loss(&logits, &tokens)?.to_scalar::<f32>()?;
            println!("Loss (mean next-token cross-entropy): {loss:.4}");
        }
        let last: Vec<f32> = lp.i(ids.len() - 1)?.to_vec1()?;
        if let Some(ans) = &answer {
            let a = tok.encode(ans)?;
            let Some(&first) = a.first() else {
                bail!("--answer is empty")
            };
            let rank = last.iter().filter(|&&x| x > last[first as usize]).count();
            println!(
                "Answer {:?} (first token {:?}): log-prob {:.4}, prob {:.2}%, rank {}",
                ans,
                tok.decode(&[first])?,
                last[first as usize],
                100.0 * last[first as usize].exp(),
                rank
            );
        }
        println!("Top {top_k} next tokens:");
        for (rank, (id, l)) in metrics::top_k(&last, top_k).into_iter().enumerate() {
            println!(
                "  {rank:>3}. {:<20} prob {:6.2}%  log-prob {:.4}",
                format!("{:?}", tok.decode(&[id])?),
                100.0 * l.exp(),
                l
            );
        }
    }
    Ok(())
}

fn cache(
    margs: ModelArgs,
    pargs: PromptArgs,
    names: Option<String>,
    out: PathBuf,
    force: bool,
) -> Result<()> {
    if out.exists() && !force {
        bail!(
            "{} exists; pass --force to replace it or --out for another file",
            out.display()
        );
    }
    let (model, tok) = margs.load().context("loading the model")?;
    let prompts = pargs.prompts()?;
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let tokens = tok.to_tokens(&refs, pargs.prepend_bos(&model), model.device())?;
    let filter = match &names {
        Some(r) => NameFilter::regex(r)?,
        None => NameFilter::All,
    };
    let (_, cache) = model.run_with_cache(&tokens, filter)?;
    if cache.is_empty() {
        bail!(
            "--names {:?} matches no hook point; run `hooklens hooks` to list them",
            names.unwrap_or_default()
        );
    }
    cache
        .save(&out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} activations ({:.1} MB, tokens {:?}) to {}",
        cache.len(),
        cache.size_bytes() as f64 / 1e6,
        tokens.dims(),
        out.display()
    );
    Ok(())
}
