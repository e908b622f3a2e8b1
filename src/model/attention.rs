//! Multi-head attention with every TransformerLens hook point: grouped-query heads, rotary
//! positions (all of each head, or its leading dimensions), QK-norm, a scale other than
//! √d_head, soft-capped scores and sliding windows.
//!
//! Grouped-query attention: `hook_k`, `hook_v` and `hook_rot_k` carry the model's *key/value*
//! heads, [batch, pos, n_key_value_heads, d_head] (TransformerLens's `attn._k`/`attn._v` form);
//! each is shared by `n_heads / n_key_value_heads` consecutive query heads. `hook_q`,
//! `hook_attn_scores`, `hook_pattern`, `hook_z` and `hook_result` are per query head.

use super::{kernels, linear, norm::upcast, Norm, Packed};
use crate::config::{ModelConfig, Normalization, Positional};
use crate::error::Result;
use crate::hook_points::{BlockHook, HookPoint};
use crate::hooks::Hooks;
use crate::matmul::{broadcast_matmul, matmul};
use crate::weights::Weights;
use candle_core::{Tensor, D};

/// Queries per block when attention is computed block by block (see `attend_in_blocks`).
const QUERY_BLOCK: usize = 128;

/// One attention layer. Weights are stored flat for fast matmuls; the per-head
/// TransformerLens views (`W_Q` [H, d_model, d_head], ...) are derived without copies.
#[derive(Debug, Clone)]
pub struct Attention {
    /// W_Q, W_K and W_V side by side, [d_model, (H + 2·H_kv) * d_head]: one product gives all
    /// three (hooks then read each as its own tensor).
    pub w_qkv: Tensor,
    /// Views of `w_qkv`: [d_model, H * d_head], [d_model, H_kv * d_head] twice.
    pub w_q: Tensor,
    pub w_k: Tensor,
    pub w_v: Tensor,
    /// [H * d_head, d_model]
    pub w_o: Tensor,
    /// b_Q, b_K, b_V side by side (zeros for those the checkpoint lacks), if it has any.
    pub b_qkv: Option<Tensor>,
    /// [d_model]
    pub b_o: Option<Tensor>,
    /// `w_qkv` and `w_o` packed for the forward's products.
    pub(super) packed: [Option<Packed>; 2],
    /// QK-norm (Qwen3): RMSNorm over d_head of each query and key head.
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    n_heads: usize,
    n_kv: usize,
    d_head: usize,
    /// Leading dimensions of each head that are rotated; 0 without rotary embeddings.
    rotary_dim: usize,
    /// q·k is divided by this.
    attn_scale: f64,
    soft_cap: Option<f64>,
    /// Sliding window: the number of keys each query sees, its own included.
    window: Option<usize>,
    layer: usize,
}

/// Keys and values of earlier positions, kept between generation steps.
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    /// [batch, H_kv, pos, d_head] after rotation.
    pub k: Option<Tensor>,
    pub v: Option<Tensor>,
}

impl Attention {
    pub fn load(w: &Weights, layer: usize, cfg: &ModelConfig) -> Result<Self> {
        let p = |n: &str| format!("blocks.{layer}.attn.{n}");
        let (d, h, kv, dh) = (cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head);
        // [H, d_model, d_head] -> [d_model, H * d_head]
        let flat_in = |t: Tensor, heads: usize| -> Result<Tensor> {
            Ok(t.transpose(0, 1)?.contiguous()?.reshape((d, heads * dh))?)
        };
        let w_qkv = Tensor::cat(
            &[
                flat_in(w.get(&p("W_Q"), &[h, d, dh])?, h)?,
                flat_in(w.get(&p("W_K"), &[kv, d, dh])?, kv)?,
                flat_in(w.get(&p("W_V"), &[kv, d, dh])?, kv)?,
            ],
            1,
        )?;
        let biases = [("b_Q", h), ("b_K", kv), ("b_V", kv)]
            .map(|(name, heads)| w.get_opt(&p(name), &[heads, dh]));
        let [b_q, b_k, b_v] = biases;
        let (b_q, b_k, b_v) = (b_q?, b_k?, b_v?);
        let b_qkv = match (&b_q, &b_k, &b_v) {
            (None, None, None) => None,
            _ => {
                let flat = |b: &Option<Tensor>, heads: usize| -> Result<Tensor> {
                    Ok(match b {
                        Some(b) => b.flatten_all()?,
                        None => Tensor::zeros(heads * dh, w_qkv.dtype(), w_qkv.device())?,
                    })
                };
                Some(Tensor::cat(
                    &[flat(&b_q, h)?, flat(&b_k, kv)?, flat(&b_v, kv)?],
                    0,
                )?)
            }
        };
        // Weight processing leaves these norms alone: nothing linear reads their output.
        let qk_norm = |name: &str| -> Result<Option<Norm>> {
            cfg.use_qk_norm
                .then(|| Norm::load(w, &p(name), Normalization::RMS, dh, cfg.eps))
                .transpose()
        };
        let w_o = w.get(&p("W_O"), &[h, dh, d])?.reshape((h * dh, d))?;
        Ok(Self {
            packed: [Packed::new(&w_qkv)?, Packed::new(&w_o)?],
            w_q: w_qkv.narrow(1, 0, h * dh)?,
            w_k: w_qkv.narrow(1, h * dh, kv * dh)?,
            w_v: w_qkv.narrow(1, (h + kv) * dh, kv * dh)?,
            w_qkv,
            w_o,
            b_qkv,
            b_o: w.get_opt(&p("b_O"), &[d])?,
            q_norm: qk_norm("q_norm")?,
            k_norm: qk_norm("k_norm")?,
            n_heads: h,
            n_kv: kv,
            d_head: dh,
            rotary_dim: match cfg.positional_embedding_type {
                Positional::Rotary => cfg.rotary_dim(),
                _ => 0,
            },
            attn_scale: cfg.attn_scale.unwrap_or((dh as f64).sqrt()),
            soft_cap: cfg.attn_scores_soft_cap,
            window: cfg.window(layer),
            layer,
        })
    }

    /// The sliding window of this layer, if it is a local-attention layer.
    pub fn window(&self) -> Option<usize> {
        self.window
    }

    /// `x` [batch, pos, d_model] (normalised) -> attention output [batch, pos, d_model].
    /// `rope` is (cos, sin) [pos, rotary_dim] for these positions; `mask` is the additive
    /// causal (or sliding-window) mask [pos, past + pos]; `kv` holds earlier positions when
    /// generating.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: Option<&(Tensor, Tensor)>,
        mask: &Tensor,
        kv: Option<&mut LayerKv>,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let hp = |h| HookPoint::Block(self.layer, h);
        let (b, p, _) = x.dims3()?;
        let (h, dh, n_kv) = (self.n_heads, self.d_head, self.n_kv);
        // [batch, pos, (H + 2·H_kv)·d_head]: one product, then each part on its own.
        let qkv = linear(x, &self.w_qkv, self.packed[0].as_ref(), self.b_qkv.as_ref())?;
        // [batch, pos, H + 2·H_kv, d_head]
        let heads = qkv.reshape((b, p, h + 2 * n_kv, dh))?;
        // [batch, pos, heads, d_head]: a view, which the rotation and the attention read where
        // it lies; copied out for a hook (a copy in this thread was 1 % of SmolLM2's forward).
        let mut part = |hook: BlockHook, start: usize, count: usize| -> Result<Tensor> {
            let part = heads.narrow(2, start, count)?;
            match hooks.wants(hp(hook)) {
                true => hooks.apply(hp(hook), part.contiguous()?),
                false => Ok(part),
            }
        };
        let mut q = part(BlockHook::Q, 0, h)?;
        let mut k = part(BlockHook::K, h, n_kv)?;
        let v = part(BlockHook::V, h + n_kv, n_kv)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            use BlockHook::{KNormNormalized, KNormScale, KNormed, QNormNormalized, QNormScale};
            let qn = qn.forward(&q, hp(QNormScale), hp(QNormNormalized), hooks)?;
            q = hooks.apply(hp(BlockHook::QNormed), qn)?;
            let kn = kn.forward(&k, hp(KNormScale), hp(KNormNormalized), hooks)?;
            k = hooks.apply(hp(KNormed), kn)?;
        }
        if self.rotary_dim > 0 {
            let (cos, sin) = rope.expect("rotary models pass cos/sin");
            q = hooks.apply(hp(BlockHook::RotQ), self.rotate(&q, cos, sin)?)?;
            k = hooks.apply(hp(BlockHook::RotK), self.rotate(&k, cos, sin)?)?;
        }
        // [batch, heads, pos, d_head]
        // Views, not copies: the matmuls read a [batch, pos, heads, d_head] tensor as
        // [batch, heads, pos, d_head] in place (row stride heads·d_head).
        let q = q.transpose(1, 2)?;
        let mut k = k.transpose(1, 2)?;
        let mut v = v.transpose(1, 2)?;
        if let Some(kv) = kv {
            if let (Some(pk), Some(pv)) = (&kv.k, &kv.v) {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            kv.k = Some(k.clone());
            kv.v = Some(v.clone());
        }
        // Scores, softmax and pattern in f32 for half-precision models (as TransformerLens):
        // q.k overflows f16 and rounds badly in bf16. Their hooks see f32.
        let (q32, k32) = (upcast(&q)?, upcast(&k)?);
        let scale = 1.0 / self.attn_scale;
        let offset = k.dim(2)? - p;
        let unread = self.fused_softmax(hooks) && !hooks.wants(hp(BlockHook::Pattern));
        let fused = match unread {
            // The key/value heads as they are: the kernel reads each for its query heads.
            true => super::fused_attention::attend(
                &q32,
                &k32,
                &v,
                offset,
                scale,
                self.window,
                QUERY_BLOCK,
            )?,
            false => None,
        };
        let z = match fused {
            Some(z) => z, // [batch, pos, H, d_head]
            None => {
                let (k32, v) = (self.repeat_kv(k32)?, self.repeat_kv(v)?);
                let blocked =
                    unread && kernels::applies(&q32) && kernels::applies(&v) && p > QUERY_BLOCK;
                let z = match blocked {
                    true => self.attend_in_blocks(&q32, &k32, &v, offset, scale)?,
                    false => self.attend(&q32, &k32, &v, mask, scale, hooks)?,
                };
                z.transpose(1, 2)?.contiguous()? // [batch, pos, H, d_head]
            }
        };
        let z = hooks.apply(hp(BlockHook::Z), z)?;
        let out = if hooks.wants(hp(BlockHook::Result)) {
            // Per-head outputs [batch, pos, H, d_model]: z[.., h, :] @ W_O[h].
            let w_o = self.w_o.reshape((h, dh, ()))?;
            let zh = z.transpose(1, 2)?.contiguous()?; // [batch, H, pos, d_head]
            let result = broadcast_matmul(&zh, &w_o)?.transpose(1, 2)?.contiguous()?;
            let out = hooks.apply(hp(BlockHook::Result), result)?.sum(2)?;
            match &self.b_o {
                Some(b_o) => out.broadcast_add(b_o)?,
                None => out,
            }
        } else {
            linear(
                &z.reshape((b, p, h * dh))?,
                &self.w_o,
                self.packed[1].as_ref(),
                self.b_o.as_ref(),
            )?
        };
        Ok(out)
    }

    /// pattern · v [batch, H, p, d_head] from q [batch, H, p, d_head] and k, v [batch, H,
    /// offset + p, d_head], through `hook_attn_scores` and `hook_pattern`.
    fn attend(
        &self,
        q32: &Tensor,
        k32: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        scale: f64,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let hp = |h| HookPoint::Block(self.layer, h);
        let raw = matmul(q32, &k32.t()?)?;
        let pattern = if kernels::applies(&raw) && self.fused_softmax(hooks) {
            // Nothing reads the scores: scale, mask and softmax in one pass.
            let (p, n) = mask.dims2()?;
            kernels::causal_softmax(raw, scale, n - p, self.window)?
        } else {
            let mut scores = (&raw * scale)?;
            if let Some(c) = self.soft_cap {
                scores = ((scores / c)?.tanh()? * c)?;
            }
            let scores = scores.broadcast_add(&mask.to_dtype(raw.dtype())?)?;
            let scores = hooks.apply(hp(BlockHook::AttnScores), scores)?;
            // The fused softmax has no backward pass; use the composed one when training.
            match scores.track_op() {
                true => candle_nn::ops::softmax(&scores, D::Minus1)?,
                false => candle_nn::ops::softmax_last_dim(&scores)?,
            }
        };
        let pattern = hooks.apply(hp(BlockHook::Pattern), pattern)?;
        let pattern = pattern.to_dtype(v.dtype())?;
        matmul(&pattern, v)
    }

    /// Whether scale, mask and softmax may run as one kernel: no soft-cap between them and no
    /// hook on the scores.
    fn fused_softmax(&self, hooks: &Hooks) -> bool {
        self.soft_cap.is_none() && !hooks.wants(HookPoint::Block(self.layer, BlockHook::AttnScores))
    }

    /// [`Self::attend`] for blocks of [`QUERY_BLOCK`] queries when nothing reads the scores or
    /// the pattern: a block's queries see only the keys up to its last position, so the masked
    /// triangle is neither computed nor multiplied (5/8 of the full products' work at 512
    /// tokens), and each block's pattern is small enough to stay in cache.
    fn attend_in_blocks(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        offset: usize,
        scale: f64,
    ) -> Result<Tensor> {
        let p = q.dim(2)?;
        let mut zs = vec![];
        for start in (0..p).step_by(QUERY_BLOCK) {
            let len = QUERY_BLOCK.min(p - start);
            let keys = offset + start + len;
            let q = q.narrow(2, start, len)?; // [batch, H, len, d_head]
            let k = k.narrow(2, 0, keys)?; // [batch, H, keys, d_head]
            let scores = matmul(&q, &k.t()?)?; // [batch, H, len, keys]
            let pattern = kernels::causal_softmax(scores, scale, offset + start, self.window)?;
            zs.push(matmul(&pattern, &v.narrow(2, 0, keys)?)?); // [batch, H, len, d_head]
        }
        Ok(Tensor::cat(&zs, 2)?)
    }

    /// Rotates the leading `rotary_dim` dimensions of each head of `x` [batch, pos, heads,
    /// d_head], leaving the rest (GPT-NeoX's partial rotary) as they are.
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let r = self.rotary_dim;
        if r == self.d_head {
            return apply_rotary(x, cos, sin);
        }
        let rotated = apply_rotary(&x.narrow(D::Minus1, 0, r)?.contiguous()?, cos, sin)?;
        let pass = x.narrow(D::Minus1, r, self.d_head - r)?;
        Ok(Tensor::cat(&[&rotated, &pass], D::Minus1)?)
    }

    /// Repeats each key/value head for the query heads that share it: [b, H_kv, p, d] -> [b, H, p, d].
    fn repeat_kv(&self, x: Tensor) -> Result<Tensor> {
        let g = self.n_heads / self.n_kv;
        if g == 1 {
            return Ok(x);
        }
        let (b, kv, p, d) = x.dims4()?;
        Ok(x.unsqueeze(2)?
            .expand((b, kv, g, p, d))?
            .reshape((b, kv * g, p, d))?)
    }
}

/// Rotary embedding in the rotate-half layout (Hugging Face's), on `x` [batch, pos, heads, d_head]
/// with `cos`/`sin` [pos, d_head].
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if kernels::applies(x) {
        return kernels::rotary(x, cos, sin);
    }
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    let cos = cos.unsqueeze(1)?.to_dtype(x.dtype())?; // [pos, 1, d_head]
    let sin = sin.unsqueeze(1)?.to_dtype(x.dtype())?;
    Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
}

/// cos and sin tables [n_pos, d_head] for positions `start..start + n_pos` (`d_head`: the
/// rotated dimensions, which set the frequencies), the positions divided by `factor` (linear
/// rope scaling; 1 without).
pub fn rotary_tables(
    start: usize,
    n_pos: usize,
    d_head: usize,
    (base, factor): (f64, f64),
    device: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    let half = d_head / 2;
    // In f32 as transformers computes them (then divided by the factor): at a thousand
    // positions, inverse frequencies exact to f64 turn the angles by up to 1e-4 against the
    // reference implementation's.
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / d_head as f32) / factor as f32)
        .collect();
    let inv = Tensor::from_vec(inv, (1, half), device)?;
    let pos: Vec<f32> = (start..start + n_pos).map(|p| p as f32).collect();
    let pos = Tensor::from_vec(pos, (n_pos, 1), device)?;
    let freqs = pos.broadcast_mul(&inv)?;
    let freqs = Tensor::cat(&[&freqs, &freqs], 1)?;
    Ok((freqs.cos()?, freqs.sin()?))
}
