//! The MLP sublayer: plain (GPT-2) or gated (SwiGLU, llama), with neuron hooks at d_mlp width.

use super::{linear, Packed};
use crate::config::{Activation, ModelConfig};
use crate::error::Result;
use crate::hook_points::{BlockHook, HookPoint};
use crate::hooks::Hooks;
use crate::weights::Weights;
use candle_core::Tensor;

#[derive(Debug, Clone)]
pub struct Mlp {
    /// [d_model, d_mlp]
    pub w_in: Tensor,
    pub b_in: Option<Tensor>,
    /// [d_model, d_mlp], gated MLPs only.
    pub w_gate: Option<Tensor>,
    /// [d_mlp, d_model]
    pub w_out: Tensor,
    pub b_out: Option<Tensor>,
    /// `w_in`, `w_gate` and `w_out` packed for the forward's products.
    pub(super) packed: [Option<Packed>; 3],
    act: Activation,
    layer: usize,
}

impl Mlp {
    pub fn load(w: &Weights, layer: usize, cfg: &ModelConfig) -> Result<Self> {
        let p = |n: &str| format!("blocks.{layer}.mlp.{n}");
        let (d, m) = (cfg.d_model, cfg.d_mlp);
        let w_in = w.get(&p("W_in"), &[d, m])?;
        let w_gate = match cfg.gated_mlp {
            true => Some(w.get(&p("W_gate"), &[d, m])?),
            false => None,
        };
        let w_out = w.get(&p("W_out"), &[m, d])?;
        Ok(Self {
            packed: [
                Packed::new(&w_in)?,
                w_gate.as_ref().map(Packed::new).transpose()?.flatten(),
                Packed::new(&w_out)?,
            ],
            w_in,
            b_in: w.get_opt(&p("b_in"), &[m])?,
            w_gate,
            w_out,
            b_out: w.get_opt(&p("b_out"), &[d])?,
            act: cfg.act_fn,
            layer,
        })
    }

    /// `x` [batch, pos, d_model] (already normalised) -> MLP output [batch, pos, d_model].
    pub fn forward(&self, x: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let hp = |h| HookPoint::Block(self.layer, h);
        let [p_in, p_gate, p_out] = self.packed.each_ref().map(Option::as_ref);
        let post = match &self.w_gate {
            Some(w_gate) => {
                let pre = hooks.apply(hp(BlockHook::MlpPre), linear(x, w_gate, p_gate, None)?)?;
                let pre_linear = hooks.apply(
                    hp(BlockHook::MlpPreLinear),
                    linear(x, &self.w_in, p_in, self.b_in.as_ref())?,
                )?;
                match self.act {
                    Activation::Silu if super::kernels::applies(&pre) => {
                        super::kernels::silu_gate(&pre, &pre_linear)?
                    }
                    _ => (activate(&pre, self.act)? * pre_linear)?,
                }
            }
            None => {
                let pre = hooks.apply(
                    hp(BlockHook::MlpPre),
                    linear(x, &self.w_in, p_in, self.b_in.as_ref())?,
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
