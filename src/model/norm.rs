//! LayerNorm and RMSNorm, with TransformerLens's `hook_scale` and `hook_normalized`.

use crate::config::Normalization;
use crate::error::Result;
use crate::hook_points::HookPoint;
use crate::hooks::Hooks;
use crate::weights::Weights;
use candle_core::{DType, Tensor, D};

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

    /// The weight applied after normalising, if any (none once folded).
    pub fn weight(&self) -> Option<&Tensor> {
        self.w.as_ref()
    }

    /// The bias added after the weight, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.b.as_ref()
    }

    /// Normalises the last dimension of `x` [batch, pos, d_model]. Half-precision input is
    /// normalised in f32, as TransformerLens does: the mean of squares of a large residual
    /// stream overflows f16 (SmolLM2's reaches the thousands). `hook_scale` and
    /// `hook_normalized` then see f32; the result is cast back to `x`'s dtype.
    pub fn forward(
        &self,
        x: &Tensor,
        scale_hook: HookPoint,
        normalized_hook: HookPoint,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        if self.kind == Normalization::None {
            return Ok(x.clone());
        }
        let center = matches!(self.kind, Normalization::LN | Normalization::LNPre);
        if super::kernels::applies(x) && !hooks.wants(scale_hook) && !hooks.wants(normalized_hook) {
            let (w, b) = (self.w.as_ref(), self.b.as_ref());
            return super::kernels::norm(x, center, self.eps, w, b);
        }
        let dtype = x.dtype();
        let x = upcast(x)?;
        let x = match center {
            true => x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?,
            false => x,
        };
        let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?;
        let scale = hooks.apply(scale_hook, scale)?;
        // As in TransformerLens, hook_normalized sees x / scale before the weight and bias.
        let mut y = hooks.apply(normalized_hook, x.broadcast_div(&scale)?)?;
        if let Some(w) = &self.w {
            y = y.broadcast_mul(&upcast(w)?)?;
        }
        if let Some(b) = &self.b {
            y = y.broadcast_add(&upcast(b)?)?;
        }
        Ok(y.to_dtype(dtype)?)
    }
}

/// `x` in f32 if it is f16 or bf16; other dtypes (f32, f64) unchanged.
pub fn upcast(x: &Tensor) -> Result<Tensor> {
    Ok(match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    })
}
