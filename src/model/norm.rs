//! LayerNorm and RMSNorm, with TransformerLens's `hook_scale` and `hook_normalized`.

use crate::config::Normalization;
use crate::error::Result;
use crate::hooks::{HookPoint, Hooks};
use crate::weights::Weights;
use candle_core::{Tensor, D};

/// One normalisation layer (`ln1`, `ln2` or `ln_final`).
#[derive(Debug, Clone)]
pub struct Norm {
    kind: Normalization,
    w: Option<Tensor>,
    b: Option<Tensor>,
    eps: f64,
}

impl Norm {
    /// Loads `{prefix}.w` / `{prefix}.b` as the kind requires (the folded kinds have neither).
    pub fn load(
        w: &Weights,
        prefix: &str,
        kind: Normalization,
        d_model: usize,
        eps: f64,
    ) -> Result<Self> {
        let (w_t, b_t) = match kind {
            Normalization::LN => (
                Some(w.get(&format!("{prefix}.w"), &[d_model])?),
                Some(w.get(&format!("{prefix}.b"), &[d_model])?),
            ),
            Normalization::RMS => (Some(w.get(&format!("{prefix}.w"), &[d_model])?), None),
            _ => (None, None),
        };
        Ok(Self {
            kind,
            w: w_t,
            b: b_t,
            eps,
        })
    }

    /// Normalises the last dimension of `x` [batch, pos, d_model].
    pub fn forward(
        &self,
        x: &Tensor,
        scale_hook: HookPoint,
        normalized_hook: HookPoint,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let x = match self.kind {
            Normalization::None => return Ok(x.clone()),
            Normalization::LN | Normalization::LNPre => {
                x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?
            }
            Normalization::RMS | Normalization::RMSPre => x.clone(),
        };
        let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?;
        let scale = hooks.apply(scale_hook, scale)?;
        // As in TransformerLens, hook_normalized sees x / scale before the weight and bias.
        let mut y = hooks.apply(normalized_hook, x.broadcast_div(&scale)?)?;
        if let Some(w) = &self.w {
            y = y.broadcast_mul(w)?;
        }
        if let Some(b) = &self.b {
            y = y.broadcast_add(b)?;
        }
        Ok(y)
    }
}
