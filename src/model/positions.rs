//! The fixed sinusoidal position table of the original transformer (Vaswani et al., 2017).

use crate::error::Result;
use candle_core::{Device, Tensor};

/// The table [n_ctx, d_model]: entry (p, 2i) is sin(p / 10000^(2i/d_model)) and entry
/// (p, 2i + 1) is cos of the same angle. Added to the token embeddings like a learned `W_pos`
/// (`hook_pos_embed` carries it). Computed in f64, stored in f32.
pub fn sinusoidal_table(n_ctx: usize, d_model: usize, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..n_ctx)
        .flat_map(|p| {
            (0..d_model).map(move |i| {
                let angle = p as f64 / 10000f64.powf((i / 2 * 2) as f64 / d_model as f64);
                let x = if i % 2 == 0 { angle.sin() } else { angle.cos() };
                x as f32
            })
        })
        .collect();
    Ok(Tensor::from_vec(v, (n_ctx, d_model), device)?)
}
