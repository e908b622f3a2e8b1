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
            "--top-k",
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

/// The columns of [`lens_frame`] and what they mean (for the run manifest).
pub const LENS_COLUMNS: &[(&str, &str)] = &[
    ("prompt", "index of the prompt in the batch, from 0"),
    ("layer", "stack entry: {l}_pre = residual stream entering layer l, {l}_mid = between its attention and MLP, final_post = the model's output stream"),
    ("layer_index", "the entry's index in the stack, from 0"),
    ("position", "position in the prompt, from 0"),
    ("token", "the prompt's token at that position"),
    ("rank", "0 = the lens's most likely next token, 1 = the second, ..."),
    ("token_id", "id of the ranked token"),
    ("token_str", "the ranked token as text"),
    ("log_prob", "its log-probability under the lens (nats)"),
    ("target_id", "the --target token's id (null without --target)"),
    ("target_rank", "the target's rank: how many tokens the lens rates strictly higher (0 = top)"),
    ("target_log_prob", "the target's log-probability under the lens"),
    ("entropy", "entropy of the lens distribution (nats)"),
];

/// A tidy table of logit-lens cells: one row per (prompt, entry, position, top-k rank); see
/// [`LENS_COLUMNS`]. `tokens` are the prompts' ids, used to show the token at each position.
pub fn lens_frame(
    cells: &[LensCell],
    tokens: &[Vec<u32>],
    tok: &crate::Tokenizer,
    target: Option<u32>,
) -> Result<polars::prelude::DataFrame> {
    use polars::prelude::*;
    let n: usize = cells.iter().map(|c| c.top.len()).sum();
    let mut prompt = Vec::with_capacity(n);
    let (mut layer, mut layer_index, mut position, mut token) = (vec![], vec![], vec![], vec![]);
    let (mut rank, mut token_id, mut token_str, mut log_prob) = (vec![], vec![], vec![], vec![]);
    let (mut target_id, mut target_rank, mut target_lp, mut entropy) =
        (vec![], vec![], vec![], vec![]);
    for c in cells {
        let here = tokens
            .get(c.batch)
            .and_then(|t| t.get(c.pos))
            .map(|&id| tok.decode(&[id]))
            .transpose()?
            .unwrap_or_default();
        for (r, &(id, lp)) in c.top.iter().enumerate() {
            prompt.push(c.batch as u32);
            layer.push(c.label.clone());
            layer_index.push(c.entry as u32);
            position.push(c.pos as u32);
            token.push(here.clone());
            rank.push(r as u32);
            token_id.push(id);
            token_str.push(tok.decode(&[id])?);
            log_prob.push(lp);
            target_id.push(target);
            target_rank.push(c.target.map(|t| t.0));
            target_lp.push(c.target.map(|t| t.1));
            entropy.push(c.entropy);
        }
    }
    df!(
        "prompt" => prompt, "layer" => layer, "layer_index" => layer_index,
        "position" => position, "token" => token, "rank" => rank, "token_id" => token_id,
        "token_str" => token_str, "log_prob" => log_prob, "target_id" => target_id,
        "target_rank" => target_rank, "target_log_prob" => target_lp, "entropy" => entropy
    )
    .map_err(|e| Error::Invalid(format!("building the logit-lens table: {e}")))
}
