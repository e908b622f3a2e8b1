//! The `hooklens` command's subcommands, each its arguments and one function: list hook
//! points, run a prompt (TransformerLens's `test_prompt`), cache activations, generate.

use crate::args::{ModelArgs, PromptArgs};
use anyhow::{bail, Context, Result};
use candle_core::{DType, IndexOp, D};
use clap::Args;
use hooklens::analysis::metrics;
use hooklens::generate::{generate_streaming, GenerateOptions};
use hooklens::NameFilter;
use std::io::Write;
use std::path::PathBuf;

/// `hooklens hooks`: every hook point with its shape on a prompt.
#[derive(Args)]
pub struct HooksArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt whose shapes are shown.
    #[arg(long, default_value = "Hello world")]
    pub prompt: String,
}

/// `hooklens run`: the top-k next tokens with probabilities, and the loss.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// How many next-token candidates to show (at most the vocabulary size).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,
    /// An expected answer: its log-prob and rank are shown.
    #[arg(long)]
    pub answer: Option<String>,
}

/// `hooklens cache`: activations to a .safetensors file keyed by hook name.
#[derive(Args)]
pub struct CacheArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Keep only hook points whose name matches this regular expression.
    #[arg(long)]
    pub names: Option<String>,
    /// Output file.
    #[arg(long, default_value = "outputs/cache.safetensors")]
    pub out: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Token positions per forward pass (prompts × padded length; at least one prompt). The
    /// prompts run in passes written straight to the file, so memory holds one pass.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub tokens_per_pass: u64,
}

/// `hooklens generate`: continue a prompt, greedy or sampled.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// How many tokens to add (at most; generation stops early at end-of-sequence).
    #[arg(long, default_value_t = 20)]
    pub max_new_tokens: usize,
    /// Sampling temperature, >= 0; 0 is greedy (argmax), higher is more random.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Sample only among the k most likely tokens (1..=vocabulary size; needs --temperature > 0).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to p, in (0, 1]
    /// (nucleus sampling; needs --temperature > 0).
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f64>,
    /// Seed of the sampling RNG (needs --temperature > 0; default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Recompute the whole prefix each step instead of using the KV cache.
    #[arg(long)]
    pub no_kv_cache: bool,
}

/// Streams the continuation of each prompt to stdout.
pub fn generate(a: GenerateArgs) -> Result<()> {
    if a.seed.is_some() && a.temperature == 0.0 {
        bail!("--seed only matters when sampling; give a --temperature above 0 or leave it out");
    }
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed.unwrap_or(0),
        use_kv_cache: !a.no_kv_cache,
        stop_at_eos: true,
    };
    let (margs, pargs) = (a.model, a.prompt);
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

/// Prints every hook point (the optional `attn.hook_result` included) with its shape.
pub fn hooks(a: HooksArgs) -> Result<()> {
    let (margs, prompt) = (a.model, a.prompt.as_str());
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

/// Prints each prompt's tokens, loss, top next tokens and the answer's rank.
pub fn run(a: RunArgs) -> Result<()> {
    let (margs, pargs, top_k, answer) = (a.model, a.prompt, a.top_k as usize, a.answer);
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

/// Writes the activations of the prompts (padded to one length) with their tokens and
/// lengths, pass by pass.
pub fn cache(a: CacheArgs) -> Result<()> {
    let (margs, pargs, names, out) = (a.model, a.prompt, a.names, a.out);
    if out.exists() && !a.force {
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
    if !model.hook_points().iter().any(|p| filter.matches(p)) {
        bail!(
            "--names {:?} matches no hook point; run `hooklens hooks` to list them",
            names.unwrap_or_default()
        );
    }
    let bar = crate::args::progress_bar(prompts.len() as u64, "caching", "prompts")?;
    // A pass holds at least one whole prompt.
    let per_pass = (a.tokens_per_pass as usize).max(tokens.dim(1)?);
    let file = hooklens::cache_file::write_cache(
        &model,
        &tokens,
        &tok.lengths(&refs, bos)?,
        &filter,
        per_pass,
        &out,
        &mut |n| bar.inc(n as u64),
    )
    .with_context(|| format!("writing {}", out.display()))?;
    bar.finish_and_clear();
    writeln!(
        std::io::stdout(),
        "wrote {} activations ({:.1} MB, tokens {:?}, with `tokens` and `lengths`) to {} \
         (peak memory {:.0} MB)",
        file.tensors.len() - 2,
        file.bytes as f64 / 1e6,
        tokens.dims(),
        out.display(),
        crate::store::memory().1 as f64 / 1e6
    )?;
    Ok(())
}
