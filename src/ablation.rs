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

/// Hooks that zero-ablate `head` of `layer` (its `hook_z`) at every position.
pub fn zero_ablate_head<'a>(layer: usize, head: usize) -> Hooks<'a> {
    Hooks::none().add(HookPoint::Block(layer, BlockHook::Z), move |z, _| {
        Ok(Some(z.broadcast_mul(&head_mask(z, head)?)?))
    })
}
