//! Ablation building blocks: masks and hooks that remove a head's or a neuron's contribution.

use crate::error::Result;
use crate::hooks::{BlockHook, HookPoint, Hooks};
use candle_core::{Tensor, D};

/// A mask shaped to broadcast over `z` [batch, pos, H, d_head] that is 1 everywhere except 0
/// on `head`.
pub fn head_mask(z: &Tensor, head: usize) -> Result<Tensor> {
    let n_heads = z.dim(D::Minus2)?;
    let v: Vec<f32> = (0..n_heads)
        .map(|h| if h == head { 0.0 } else { 1.0 })
        .collect();
    Ok(Tensor::from_vec(v, (n_heads, 1), z.device())?.to_dtype(z.dtype())?)
}

/// Hooks that zero-ablate each (layer, head) in `heads` (its `hook_z`) at every position.
///
/// ```
/// // Knock out L1H0 and L1H2 together.
/// let hooks = hooklens::ablation::zero_ablate_heads(&[(1, 0), (1, 2)]);
/// ```
pub fn zero_ablate_heads<'a>(heads: &[(usize, usize)]) -> Hooks<'a> {
    heads.iter().fold(Hooks::none(), |hooks, &(layer, head)| {
        hooks.add(HookPoint::Block(layer, BlockHook::Z), move |z, _| {
            Ok(Some(z.broadcast_mul(&head_mask(z, head)?)?))
        })
    })
}
