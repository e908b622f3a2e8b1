//! The MLP sublayer: plain (GPT-2) or gated (SwiGLU, llama), with neuron hooks at d_mlp width.

use super::{linear, Packed};
use crate::config::{Activation, ModelConfig};
use crate::error::Result;
use crate::hook_points::{BlockHook, HookPoint};
use crate::hooks::Hooks;
use crate::weights::Weights;
use candle_core::{Tensor, D};

#[derive(Debug, Clone)]
pub struct Mlp {
    /// [d_model, d_mlp]; in a gated MLP a view of `w_gate_in`.
    pub w_in: Tensor,
    pub b_in: Option<Tensor>,
    /// [d_model, d_mlp], gated MLPs only: a view of `w_gate_in`.
    pub w_gate: Option<Tensor>,
    /// [d_mlp, d_model]
    pub w_out: Tensor,
    pub b_out: Option<Tensor>,
    /// Gated MLPs: W_gate and W_in side by side, [d_model, 2 · d_mlp], so that one product
    /// gives both (as W_Q, W_K and W_V in attention); b_in after zeros, if there is a b_in.
    w_gate_in: Option<(Tensor, Option<Tensor>)>,
    /// The first product's weight (`w_gate_in`, or `w_in` if not gated) and `w_out`, packed
    /// for the forward's products.
    pub(super) packed: [Option<Packed>; 2],
    act: Activation,
    layer: usize,
}

impl Mlp {
    pub fn load(w: &Weights, layer: usize, cfg: &ModelConfig) -> Result<Self> {
        let p = |n: &str| format!("blocks.{layer}.mlp.{n}");
        let (d, m) = (cfg.d_model, cfg.d_mlp);
        let w_in = w.get(&p("W_in"), &[d, m])?;
        let b_in = w.get_opt(&p("b_in"), &[m])?;
        let w_out = w.get(&p("W_out"), &[m, d])?;
        let (w_in, w_gate, w_gate_in) = match cfg.gated_mlp {
            true => {
                let both = Tensor::cat(&[&w.get(&p("W_gate"), &[d, m])?, &w_in], 1)?;
                let b = match &b_in {
                    Some(b) => Some(Tensor::cat(&[&b.zeros_like()?, b], 0)?),
                    None => None,
                };
                let (gate, w_in) = (both.narrow(1, 0, m)?, both.narrow(1, m, m)?);
                (w_in, Some(gate), Some((both, b)))
            }
            false => (w_in, None, None),
        };
        let first = w_gate_in.as_ref().map_or(&w_in, |(both, _)| both);
        Ok(Self {
            packed: [Packed::new(first)?, Packed::new(&w_out)?],
            w_in,
            b_in,
            w_gate,
            w_out,
            b_out: w.get_opt(&p("b_out"), &[d])?,
            w_gate_in,
            act: cfg.act_fn,
            layer,
        })
    }

    /// `x` [batch, pos, d_model] (already normalised) -> MLP output [batch, pos, d_model].
    pub fn forward(&self, x: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let hp = |h| HookPoint::Block(self.layer, h);
        let [p_first, p_out] = self.packed.each_ref().map(Option::as_ref);
        let post = match &self.w_gate_in {
            Some((w, b)) => {
                // [batch, pos, 2 · d_mlp]: each position's gate pre-activations, then W_in's.
                let both = linear(x, w, p_first, b.as_ref())?;
                let (at_gate, at_up) = (hp(BlockHook::MlpPre), hp(BlockHook::MlpPreLinear));
                let fused = self.act == Activation::Silu && super::kernels::applies(&both);
                if fused && !hooks.wants(at_gate) && !hooks.wants(at_up) {
                    super::kernels::silu_gate(&both)?
                } else {
                    // Hooks read (and may replace) each half as a tensor of its own.
                    let m = self.w_in.dim(1)?;
                    let gate = hooks.apply(at_gate, both.narrow(D::Minus1, 0, m)?.contiguous()?)?;
                    let up = hooks.apply(at_up, both.narrow(D::Minus1, m, m)?.contiguous()?)?;
                    (activate(&gate, self.act)? * up)?
                }
            }
            None => {
                let pre = hooks.apply(
                    hp(BlockHook::MlpPre),
                    linear(x, &self.w_in, p_first, self.b_in.as_ref())?,
                )?;
                activate(&pre, self.act)?
            }
        };
        let post = hooks.apply(hp(BlockHook::MlpPost), post)?;
        linear(&post, &self.w_out, p_out, self.b_out.as_ref())
    }
}

fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        // candle's `gelu` is the tanh approximation, which is GPT-2's gelu_new.
        Activation::GeluNew if super::kernels::applies(x) => super::kernels::gelu_new(x)?,
        Activation::GeluNew => x.gelu()?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::Relu => x.relu()?,
        Activation::Silu if super::kernels::applies(x) => super::kernels::silu(x)?,
        Activation::Silu => x.silu()?,
    })
}
