//! Metrics on model outputs: next-token loss, top-k, logit differences.

use crate::error::{Error, Result};
use candle_core::{IndexOp, Tensor};

/// Mean cross-entropy of predicting `ids[i + 1]` from position `i`, given log-probs [pos, vocab].
pub fn mean_next_token_loss(log_probs: &Tensor, ids: &[u32]) -> Result<f32> {
    if ids.len() < 2 {
        return Err(Error::Invalid("the loss needs at least two tokens".into()));
    }
    let mut total = 0f32;
    for (i, &next) in ids[1..].iter().enumerate() {
        total -= log_probs.i((i, next as usize))?.to_scalar::<f32>()?;
    }
    Ok(total / (ids.len() - 1) as f32)
}

/// The `k` largest entries of `values` as (index, value), largest first.
pub fn top_k(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<(u32, f32)> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    idx.sort_by(|a, b| b.1.total_cmp(&a.1));
    idx.truncate(k);
    idx
}

/// Logit difference `logits[.., pos, a] - logits[.., pos, b]` for logits [batch, pos, vocab]
/// at the last position, averaged over the batch: the usual patching metric.
pub fn logit_diff(logits: &Tensor, a: u32, b: u32) -> Result<f32> {
    let p = logits.dim(1)?;
    let last = logits.i((.., p - 1))?;
    let d = (last.i((.., a as usize))? - last.i((.., b as usize))?)?;
    Ok(d.mean_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_scalar::<f32>()?)
}
