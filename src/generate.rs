//! Text generation: greedy or sampled (temperature, top-k, top-p, seeded), with a KV cache so
//! each new token costs one position. Hooks fire on every forward pass.

use crate::error::{Error, Result};
use crate::hook_points::HookPoint;
use crate::hooks::Hooks;
use crate::model::{HookedTransformer, LayerKv};
use candle_core::{DType, IndexOp, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick each next token.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep only the k most likely tokens before sampling.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches p.
    pub top_p: Option<f64>,
    pub seed: u64,
    /// Reuse keys and values of earlier positions (false recomputes the whole prefix each step).
    pub use_kv_cache: bool,
    /// Stop after the end-of-sequence token.
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            use_kv_cache: true,
            stop_at_eos: true,
        }
    }
}

impl GenerateOptions {
    /// Refuses settings that are out of range or would have no effect, naming the parameter
    /// (its field name; other parameters a message mentions are in backticks).
    pub fn validate(&self, d_vocab: usize) -> Result<()> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(Error::bad_parameter(
                "temperature",
                t,
                "must be a finite number >= 0 (0 is greedy)",
            ));
        }
        if let Some(k) = self.top_k {
            if k == 0 || k > d_vocab {
                return Err(Error::bad_parameter(
                    "top_k",
                    k,
                    format!("must lie in 1..={d_vocab} (the vocabulary size)"),
                ));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::bad_parameter("top_p", p, "must lie in (0, 1]"));
            }
        }
        if t == 0.0 && (self.top_k.is_some() || self.top_p.is_some()) {
            let (name, value) = match (self.top_k, self.top_p) {
                (Some(k), _) => ("top_k", k.to_string()),
                (_, p) => ("top_p", p.unwrap_or_default().to_string()),
            };
            return Err(Error::bad_parameter(
                name,
                value,
                "only shapes sampling, and `temperature` 0 is greedy; give a `temperature` above 0 or leave `top_k` and `top_p` out",
            ));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::bad_parameter(
                "max_new_tokens",
                0,
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Continues `prompt` (token ids) and returns the new ids.
///
/// ```no_run
/// # fn main() -> hooklens::Result<()> {
/// use hooklens::{generate::{generate, GenerateOptions}, load_model, Hooks, LoadOptions};
/// let (model, tok, _) = load_model(Some("smollm2"), &LoadOptions::default())?;
/// let ids = tok.encode_prompt("The capital of France is", false)?;
/// let new = generate(&model, &ids, &GenerateOptions::default(), &mut Hooks::none())?;
/// println!("{}", tok.decode(&new)?);
/// # Ok(()) }
/// ```
pub fn generate(
    model: &HookedTransformer,
    prompt: &[u32],
    opts: &GenerateOptions,
    hooks: &mut Hooks,
) -> Result<Vec<u32>> {
    generate_streaming(model, prompt, opts, hooks, |_| Ok(()))
}

/// [`generate`], calling `on_token` with each new id as soon as it is chosen.
pub fn generate_streaming(
    model: &HookedTransformer,
    prompt: &[u32],
    opts: &GenerateOptions,
    hooks: &mut Hooks,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    opts.validate(model.cfg.d_vocab)?;
    if prompt.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    let n_ctx = model.cfg.n_ctx;
    if prompt.len() > n_ctx {
        return Err(Error::PromptTooLong {
            len: prompt.len(),
            n_ctx,
        });
    }
    if prompt.len() + opts.max_new_tokens > n_ctx {
        return Err(Error::bad_parameter(
            "max_new_tokens",
            opts.max_new_tokens,
            format!(
                "the prompt's {} tokens plus the new ones must fit the model's context of {n_ctx}; use at most {}",
                prompt.len(),
                n_ctx - prompt.len()
            ),
        ));
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut kv = vec![LayerKv::default(); model.cfg.n_layers];
    let mut ids = prompt.to_vec();
    let mut new = Vec::new();
    for step in 0..opts.max_new_tokens {
        let logits = if opts.use_kv_cache {
            // The first step feeds the whole prompt; later steps only the newest token.
            let fresh = if step == 0 {
                &ids[..]
            } else {
                &ids[ids.len() - 1..]
            };
            let t = Tensor::new(fresh, model.device())?.unsqueeze(0)?;
            model.forward_with_kv(&t, &mut kv, hooks)?
        } else {
            let t = Tensor::new(&ids[..], model.device())?.unsqueeze(0)?;
            last_logits(model, &t, hooks)?
        };
        let last: Vec<f32> = logits
            .i((0, logits.dim(1)? - 1))?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        let next = pick(&last, opts, &mut rng);
        ids.push(next);
        new.push(next);
        on_token(next)?;
        if opts.stop_at_eos && Some(next) == model.cfg.eos_token_id {
            break;
        }
    }
    // A hook at a position the generation never reached did nothing: say so.
    hooks.check_all_fired()?;
    Ok(new)
}

/// Picks a token from `logits`: argmax at temperature 0, otherwise a sample from the
/// temperature-scaled distribution restricted by top-k and top-p.
pub fn pick(logits: &[f32], opts: &GenerateOptions, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32)
    };
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let mut cand: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l as f64 / opts.temperature))
        .collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let Some(k) = opts.top_k {
        cand.truncate(k.max(1));
    }
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|(_, l)| (l - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(top_p) = opts.top_p {
        let mut acc = 0.0;
        let keep = probs.iter().take_while(|&&p| {
            let before = acc;
            acc += p;
            before < top_p
        });
        let n = keep.count().max(1);
        cand.truncate(n);
        probs.truncate(n);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut u: f64 = rng.random();
    for ((id, _), p) in cand.iter().zip(&probs) {
        if u < *p {
            return *id;
        }
        u -= p;
    }
    cand.last().map_or_else(argmax, |c| c.0)
}

/// The logits of the last position only [1, 1, d_vocab] (transformers' `logits_to_keep=1`):
/// unembedding every position of the prefix is a large part of a short forward over a 50k
/// vocabulary. A hook or cache on `ln_final` sees every position, so then all are unembedded.
fn last_logits(model: &HookedTransformer, tokens: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
    if hooks.wants(HookPoint::LnFinalScale) || hooks.wants(HookPoint::LnFinalNormalized) {
        return model.forward(tokens, hooks);
    }
    let resid = model.forward_range(tokens, 0, Some(model.cfg.n_layers), hooks)?;
    let p = resid.dim(1)?;
    model.unembed(&resid.narrow(1, p - 1, 1)?, hooks)
}
