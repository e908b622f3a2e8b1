//! The `hooklens` command line: list hook points, run a prompt, cache activations, generate.

use anyhow::{bail, Context, Result};
use candle_core::{DType, IndexOp, D};
use clap::{Parser, Subcommand};
use hooklens::analysis::metrics;
use hooklens::generate::{generate_streaming, GenerateOptions};
use hooklens::NameFilter;
use lab::args::{ModelArgs, PromptArgs};
use std::io::Write;
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
        /// How many next-token candidates to show (at most the vocabulary size).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
        top_k: u32,
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
        /// How many tokens to add (at most; generation stops early at end-of-sequence).
        #[arg(long, default_value_t = 20)]
        max_new_tokens: usize,
        /// Sampling temperature, >= 0; 0 is greedy (argmax), higher is more random.
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        temperature: f64,
        /// Sample only among the k most likely tokens (1..=vocabulary size; needs --temperature > 0).
        #[arg(long)]
        top_k: Option<usize>,
        /// Sample only among the most likely tokens whose probabilities sum to p, in (0, 1]
        /// (nucleus sampling; needs --temperature > 0).
        #[arg(long, allow_negative_numbers = true)]
        top_p: Option<f64>,
        /// Seed of the sampling RNG (needs --temperature > 0; default 0).
        #[arg(long)]
        seed: Option<u64>,
        /// Recompute the whole prefix each step instead of using the KV cache.
        #[arg(long)]
        no_kv_cache: bool,
    },
}

fn main() -> std::process::ExitCode {
    lab::args::finish(run_cli(Cli::parse()))
}

fn run_cli(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Hooks { model, prompt } => hooks(model, &prompt),
        Cmd::Run {
            model,
            prompt,
            top_k,
            answer,
        } => run(model, prompt, top_k as usize, answer),
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
            if seed.is_some() && temperature == 0.0 {
                bail!("--seed only matters when sampling; give a --temperature above 0 or leave it out");
            }
            let opts = GenerateOptions {
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed: seed.unwrap_or(0),
                use_kv_cache: !no_kv_cache,
                stop_at_eos: true,
            };
            generate_cmd(model, prompt, opts)
        }
    }
}

fn generate_cmd(margs: ModelArgs, pargs: PromptArgs, opts: GenerateOptions) -> Result<()> {
    let prompts = pargs.prompts()?;
    let (model, tok, _) = margs.load().context("loading the model")?;
    opts.validate(model.cfg.d_vocab)?;
    let bos = pargs.prepend_bos(&model);
    let mut out = std::io::stdout().lock();
    for prompt in prompts {
        let ids = tok.encode_prompt(&prompt, bos)?;
        // Stream: print what the new ids decode to beyond what is already printed (a token
        // may complete a character that the previous one started).
        let (mut new, mut shown) = (vec![], 0);
        let mut io_error = None;
        let result = generate_streaming(&model, &ids, &opts, &mut hooklens::Hooks::none(), |id| {
            new.push(id);
            let text = tok.decode(&new)?;
            if text.len() > shown && text.is_char_boundary(shown) && !text.ends_with('\u{fffd}') {
                if let Err(e) = write!(out, "{}", &text[shown..]).and_then(|_| out.flush()) {
                    io_error = Some(e);
                    return Err(hooklens::Error::Invalid("the output was closed".into()));
                }
                shown = text.len();
            }
            Ok(())
        });
        if let Some(e) = io_error {
            return Err(e.into());
        }
        result?;
        writeln!(out)?;
    }
    Ok(())
}

fn hooks(margs: ModelArgs, prompt: &str) -> Result<()> {
    let (model, tok, _) = margs.load().context("loading the model")?;
    let tokens = tok.to_tokens(&[prompt], model.cfg.default_prepend_bos, model.device())?;
    // Every hook point, the optional attn.hook_result included.
    let (_, cache) = model.run_with_cache(&tokens, NameFilter::regex(".")?)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} hook points (batch 1, {} tokens of {prompt:?}):",
        cache.len(),
        tokens.dim(1)?
    )?;
    for (p, t) in cache.iter() {
        writeln!(
            out,
            "  {:<36} {:?} {:?}",
            p.to_string(),
            t.dims(),
            t.dtype()
        )?;
    }
    Ok(())
}

fn run(margs: ModelArgs, pargs: PromptArgs, top_k: usize, answer: Option<String>) -> Result<()> {
    let prompts = pargs.prompts()?;
    let (model, tok, _) = margs.load().context("loading the model")?;
    if top_k > model.cfg.d_vocab {
        bail!(
            "--top-k {top_k}: must lie in 1..={} (the vocabulary size)",
            model.cfg.d_vocab
        );
    }
    let mut out = std::io::stdout().lock();
    let bos = pargs.prepend_bos(&model);
    for prompt in &prompts {
        let tokens = tok.to_tokens(&[prompt.as_str()], bos, model.device())?;
        let ids: Vec<u32> = tokens.i(0)?.to_vec1()?;
        let logits = model
            .forward(&tokens, &mut hooklens::Hooks::none())?
            .to_dtype(DType::F32)?;
        let lp = candle_nn::ops::log_softmax(&logits.i(0)?, D::Minus1)?;
        writeln!(out, "Tokenized prompt: {:?}", tok.to_str_tokens(&ids)?)?;
        if ids.len() > 1 {
            let loss = metrics::mean_next_token_loss(&logits, &tokens)?.to_scalar::<f32>()?;
            writeln!(out, "Loss (mean next-token cross-entropy): {loss:.4}")?;
        }
        let last: Vec<f32> = lp.i(ids.len() - 1)?.to_vec1()?;
        if let Some(ans) = &answer {
            let a = tok.encode(ans)?;
            let Some(&first) = a.first() else {
                bail!("--answer is empty")
            };
            let rank = last.iter().filter(|&&x| x > last[first as usize]).count();
            writeln!(
                out,
                "Answer {:?} (first token {:?}): log-prob {:.4}, prob {:.2}%, rank {}",
                ans,
                tok.decode(&[first])?,
                last[first as usize],
                100.0 * last[first as usize].exp(),
                rank
            )?;
        }
        writeln!(out, "Top {top_k} next tokens:")?;
        for (rank, (id, l)) in metrics::top_k(&last, top_k).into_iter().enumerate() {
            writeln!(
                out,
                "  {rank:>3}. {:<20} prob {:6.2}%  log-prob {:.4}",
                format!("{:?}", tok.decode(&[id])?),
                100.0 * l.exp(),
                l
            )?;
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
    let filter = match &names {
        Some(r) => NameFilter::regex(r)?,
        None => NameFilter::All,
    };
    let prompts = pargs.prompts()?;
    let (model, tok, _) = margs.load().context("loading the model")?;
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let bos = pargs.prepend_bos(&model);
    let tokens = tok.to_tokens(&refs, bos, model.device())?;
    let bar = lab::args::spinner(&format!("running {} prompt(s)", prompts.len()));
    let (_, mut cache) = model.run_with_cache(&tokens, filter)?;
    bar.finish_and_clear();
    cache.set_tokens(&tokens, tok.lengths(&refs, bos)?)?;
    if cache.is_empty() {
        bail!(
            "--names {:?} matches no hook point; run `hooklens hooks` to list them",
            names.unwrap_or_default()
        );
    }
    cache
        .save(&out)
        .with_context(|| format!("writing {}", out.display()))?;
    writeln!(
        std::io::stdout(),
        "wrote {} activations ({:.1} MB, tokens {:?}, with `tokens` and `lengths`) to {}",
        cache.len(),
        cache.size_bytes() as f64 / 1e6,
        tokens.dims(),
        out.display()
    )?;
    Ok(())
}
