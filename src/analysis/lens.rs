//! The logit lens, as TransformerLens 4.3's `logit_lens` computes it: every entry of the
//! accumulated residual stream goes through the real final norm (statistics recomputed per
//! entry), `W_U` and `b_U`, and is read as a next-token distribution.

use super::metrics::top_k;
use super::resid::{Positions, ResidOpts};
use crate::cache::ActivationCache;
use crate::error::{Error, Result};
use crate::model::{upcast, HookedTransformer};
use candle_core::{IndexOp, D};

/// What the lens reads at one stack entry, batch row and position.
#[derive(Debug, Clone, PartialEq)]
pub struct LensCell {
    /// The stack entry's label (`0_pre`, `3_mid`, `final_post`) and its index in the stack.
    pub label: String,
    pub entry: usize,
    pub batch: usize,
    /// The position in the sequence.
    pub pos: usize,
    /// The `k` most likely tokens with their log-probs, most likely first.
    pub top: Vec<(u32, f32)>,
    /// Entropy of the distribution, in nats.
    pub entropy: f32,
    /// The target token's rank (0 = top: the number of tokens with a strictly larger logit) and
    /// log-prob, when a target was given.
    pub target: Option<(u32, f32)>,
}

/// Logit-lens settings: the top `k` tokens to keep, an optional `target` token, the positions
/// to read and whether to include `resid_mid` entries.
#[derive(Debug, Clone)]
pub struct LensOpts {
    pub k: usize,
    pub target: Option<u32>,
    pub pos: Positions,
    pub incl_mid: bool,
}

/// Rows of the stack unembedded at once: [rows, d_vocab] is the largest tensor held, never
/// [entries, pos, d_vocab].
const ROWS_PER_CHUNK: usize = 64;

/// The logit lens over `cache` (which must hold every `hook_resid_pre`, the last
/// `hook_resid_post`, and `hook_resid_mid` with `incl_mid`): one [`LensCell`] per stack entry,
/// batch row and position, in that order.
pub fn logit_lens(
    model: &HookedTransformer,
    cache: &ActivationCache,
    opts: &LensOpts,
) -> Result<Vec<LensCell>> {
    let d_vocab = model.cfg.d_vocab;
    if opts.k == 0 || opts.k > d_vocab {
        return Err(Error::bad_parameter(
            "top_k",
            opts.k,
            format!("must lie in 1..={d_vocab} (the vocabulary size)"),
        ));
    }
    if let Some(t) = opts.target.filter(|&t| t as usize >= d_vocab) {
        return Err(Error::Invalid(format!(
            "target token id {t} is outside the vocabulary (d_vocab {d_vocab})"
        )));
    }
    let ropts = ResidOpts {
        apply_ln: true,
        pos: opts.pos,
        ..Default::default()
    };
    let acc = cache.accumulated_resid(model, &ropts, opts.incl_mid)?;
    let (c, b, p, d) = acc.stack.dims4()?;
    let first_pos = match opts.pos {
        Positions::All => 0,
        Positions::Last => cache_len(cache)? - 1,
        Positions::At(q) => q,
    };
    let rows = acc.stack.reshape((c * b * p, d))?;
    let (w_u, b_u) = (
        upcast(&model.w_u)?,
        model.b_u.as_ref().map(upcast).transpose()?,
    );
    let mut cells = Vec::with_capacity(c * b * p);
    for start in (0..c * b * p).step_by(ROWS_PER_CHUNK) {
        let n = ROWS_PER_CHUNK.min(c * b * p - start);
        let mut logits = rows.narrow(0, start, n)?.matmul(&w_u)?; // [n, d_vocab]
        if let Some(b_u) = &b_u {
            logits = logits.broadcast_add(b_u)?;
        }
        // As the model's own output (Gemma 2): the last entry reads as its real prediction.
        let logits = model.soft_cap_logits(logits)?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let entropy: Vec<f32> = (log_probs.exp()? * &log_probs)?
            .sum(D::Minus1)?
            .neg()?
            .to_vec1()?;
        for (i, &entropy) in entropy.iter().enumerate() {
            let row = start + i;
            let lp: Vec<f32> = log_probs.i(i)?.to_vec1()?;
            let target = opts.target.map(|t| {
                let v = lp[t as usize];
                (lp.iter().filter(|&&x| x > v).count() as u32, v)
            });
            let entry = row / (b * p);
            cells.push(LensCell {
                label: acc.labels[entry].clone(),
                entry,
                batch: row / p % b,
                pos: first_pos + row % p,
                top: top_k(&lp, opts.k),
                entropy,
                target,
            });
        }
    }
    Ok(cells)
}

fn cache_len(cache: &ActivationCache) -> Result<usize> {
    let resid = cache.get(crate::HookPoint::block(0, crate::BlockHook::ResidPre))?;
    Ok(resid.dim(1)?)
}

/// Token positions per forward pass of [`logit_lens_on`]: what bounds its memory (the cached
/// residual stream of one chunk of prompts) whatever the number of prompts.
pub const LENS_TOKENS_PER_PASS: usize = 4096;

/// [`logit_lens`] on `tokens` [batch, pos]: forward passes over chunks of the prompts (at most
/// [`LENS_TOKENS_PER_PASS`] tokens each) caching the residual stream the lens reads (every
/// `hook_resid_pre`, the last `hook_resid_post`, and with `incl_mid` every `hook_resid_mid`).
pub fn logit_lens_on(
    model: &HookedTransformer,
    tokens: &candle_core::Tensor,
    opts: &LensOpts,
) -> Result<Vec<LensCell>> {
    let n = model.cfg.n_layers;
    let mut points: Vec<crate::HookPoint> = (0..n)
        .map(|l| crate::HookPoint::block(l, crate::BlockHook::ResidPre))
        .collect();
    points.push(crate::HookPoint::block(n - 1, crate::BlockHook::ResidPost));
    if opts.incl_mid && !model.cfg.attn_only {
        points.extend((0..n).map(|l| crate::HookPoint::block(l, crate::BlockHook::ResidMid)));
    }
    let (b, p) = tokens.dims2()?;
    let mut cells = vec![];
    for rows in crate::data::prompt_chunks(b, p, LENS_TOKENS_PER_PASS.max(p))? {
        let chunk = tokens.narrow(0, rows.start, rows.len())?;
        let filter = crate::NameFilter::Points(points.clone());
        let (_, cache) = model.run_with_cache(&chunk, filter)?;
        let part = logit_lens(model, &cache, opts)?;
        cells.extend(part.into_iter().map(|c| LensCell {
            batch: c.batch + rows.start,
            ..c
        }));
    }
    // Stack entry, then batch row, then position, as [`logit_lens`] orders them.
    cells.sort_by_key(|c| (c.entry, c.batch, c.pos));
    Ok(cells)
}
