//! Metrics on model outputs: next-token loss, top-k, logit differences.

use crate::error::{Error, Result};
use candle_core::{DType, IndexOp, Tensor, D};

/// Next-token cross-entropy (nats) at each position: entry [b, i] is the loss of predicting
/// `tokens[b, i + 1]` from `logits[b, i]`, so the result is [batch, pos - 1]. Half-precision
/// logits are upcast to f32 first; the computation is differentiable (the trainer's loss).
pub fn next_token_losses(logits: &Tensor, tokens: &Tensor) -> Result<Tensor> {
    let (b, p, _) = logits.dims3()?;
    if p < 2 || tokens.dims() != [b, p] {
        return Err(Error::Invalid(format!(
            "the next-token loss needs logits [batch, pos >= 2, vocab] and tokens [batch, pos]; got {:?} and {:?}",
            logits.dims(),
            tokens.dims()
        )));
    }
    let logits = match logits.dtype() {
        DType::F16 | DType::BF16 => logits.to_dtype(DType::F32)?,
        _ => logits.clone(),
    };
    let log_probs = candle_nn::ops::log_softmax(&logits.narrow(1, 0, p - 1)?, D::Minus1)?;
    // [batch, pos - 1, 1]: the id each position should predict.
    let next = tokens
        .narrow(1, 1, p - 1)?
        .to_dtype(DType::U32)?
        .unsqueeze(2)?
        .contiguous()?;
    Ok(log_probs.gather(&next, 2)?.squeeze(2)?.neg()?)
}

/// The mean of [`next_token_losses`] over batch and positions, as a scalar tensor.
pub fn mean_next_token_loss(logits: &Tensor, tokens: &Tensor) -> Result<Tensor> {
    Ok(next_token_losses(logits, tokens)?.mean_all()?)
}

/// The `k` largest entries of `values` as (index, value), largest first (ties: lower index
/// first).
pub fn top_k(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<(u32, f32)> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    // Partial selection first: a 50k-token vocabulary need not be sorted for five entries.
    if k < idx.len() {
        idx.select_nth_unstable_by(k, order);
        idx.truncate(k);
    }
    idx.sort_by(order);
    idx
}

/// Logit difference `logits[.., pos, a] - logits[.., pos, b]` for logits [batch, pos, vocab]
/// at the last position, averaged over the batch: the usual patching metric.
pub fn logit_diff(logits: &Tensor, a: u32, b: u32) -> Result<f32> {
    let p = logits.dim(1)?;
    let last = logits.i((.., p - 1))?;
    let d = (last.i((.., a as usize))? - last.i((.., b as usize))?)?;
    Ok(d.mean_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

/// softmax(logits / temperature): the distribution sampling at `temperature` draws from.
/// Low temperatures sharpen it towards the argmax, high ones flatten it towards uniform.
pub fn probs_at_temperature(logits: &[f32], temperature: f64) -> Result<Vec<f32>> {
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(Error::Invalid(format!(
            "temperature {temperature} must be a positive number (0 would be greedy decoding)"
        )));
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature).exp())
        .collect();
    let z: f64 = e.iter().sum();
    Ok(e.iter().map(|v| (v / z) as f32).collect())
}

/// One token's probability at one sampling temperature.
#[derive(Debug, Clone, PartialEq)]
pub struct TemperatureRow {
    pub temperature: f64,
    /// The token's rank by logit (0 = most likely at every temperature).
    pub rank: usize,
    pub id: u32,
    pub logit: f32,
    /// softmax(logits / T) for the token, over the whole vocabulary.
    pub prob: f32,
}

/// The `k` most likely next tokens of `logits` [d_vocab] at each of `temperatures`,
/// temperature-major.
pub fn temperature_rows(
    logits: &[f32],
    temperatures: &[f64],
    k: usize,
) -> Result<Vec<TemperatureRow>> {
    let top = top_k(logits, k);
    let mut rows = vec![];
    for &temperature in temperatures {
        let p = probs_at_temperature(logits, temperature)?;
        rows.extend(
            top.iter()
                .enumerate()
                .map(|(rank, &(id, logit))| TemperatureRow {
                    temperature,
                    rank,
                    id,
                    logit,
                    prob: p[id as usize],
                }),
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn next_token_loss_is_minus_the_log_prob_of_the_next_token() {
        // Two positions over a vocabulary of 3; position 0 predicts token 2.
        let logits = Tensor::new(&[[[0f32, 1., 2.], [5., 5., 5.]]], &Device::Cpu).unwrap();
        let tokens = Tensor::new(&[[0u32, 2]], &Device::Cpu).unwrap();
        let l = next_token_losses(&logits, &tokens).unwrap();
        assert_eq!(l.dims(), &[1, 1]);
        let want = -(2f32 - (1f32.exp() + 2f32.exp() + 1.0).ln());
        let got = l.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert!(next_token_losses(&logits.narrow(1, 0, 1).unwrap(), &tokens).is_err());
    }

    #[test]
    fn top_k_is_sorted_and_truncated() {
        assert_eq!(top_k(&[0.1, 3.0, -1.0, 2.0], 2), vec![(1, 3.0), (3, 2.0)]);
        assert_eq!(top_k(&[1.0], 5).len(), 1);
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let l = [2f32, 1.0, 0.0];
        let p1 = probs_at_temperature(&l, 1.0).unwrap();
        let z: f32 = l.iter().map(|v| v.exp()).sum();
        assert!((p1[0] - 2f32.exp() / z).abs() < 1e-6);
        let cold = probs_at_temperature(&l, 0.1).unwrap();
        let hot = probs_at_temperature(&l, 100.0).unwrap();
        assert!(cold[0] > 0.99 && (hot[0] - 1.0 / 3.0).abs() < 0.01);
        assert!(probs_at_temperature(&l, 0.0).is_err());
        assert!(probs_at_temperature(&l, f64::NAN).is_err());
    }

    #[test]
    fn logit_diff_reads_the_last_position() {
        let logits = Tensor::new(&[[[9f32, 9.], [1., 4.]]], &Device::Cpu).unwrap();
        assert_eq!(logit_diff(&logits, 1, 0).unwrap(), 3.0);
    }
}
