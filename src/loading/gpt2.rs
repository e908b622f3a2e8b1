//! GPT-2 (`GPT2LMHeadModel`) checkpoint names -> canonical TransformerLens weights.
//! Conv1D weights are stored [in, out]; `c_attn` packs Q, K and V side by side.

use super::RawTensors;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::weights::Weights;
use candle_core::Tensor;

/// Checkpoint tensors deliberately not read: the causal-mask buffers older checkpoints carry,
/// and the output layer, which GPT-2 ties to the token embedding.
pub const IGNORED: &[&str] = &["h.*.attn.bias", "h.*.attn.masked_bias", "lm_head.weight"];

pub fn to_canonical(raw: &RawTensors, cfg: &ModelConfig) -> Result<Weights> {
    let (d, h, dh, m, v) = (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab);
    let mut w = Weights::default();
    let w_e = raw.get("wte.weight", &[v, d])?;
    w.insert("embed.W_E", w_e.clone());
    w.insert("pos_embed.W_pos", raw.get("wpe.weight", &[cfg.n_ctx, d])?);
    for l in 0..cfg.n_layers {
        let src = |n: &str| format!("h.{l}.{n}");
        let dst = |n: &str| format!("blocks.{l}.{n}");
        w.insert(dst("ln1.w"), raw.get(&src("ln_1.weight"), &[d])?);
        w.insert(dst("ln1.b"), raw.get(&src("ln_1.bias"), &[d])?);
        let qkv = raw.get(&src("attn.c_attn.weight"), &[d, 3 * d])?;
        let qkv_b = raw.get(&src("attn.c_attn.bias"), &[3 * d])?;
        for (i, name) in ["Q", "K", "V"].iter().enumerate() {
            // [d_model, H * d_head] -> [H, d_model, d_head]
            let wi = qkv
                .narrow(1, i * d, d)?
                .reshape((d, h, dh))?
                .transpose(0, 1)?
                .contiguous()?;
            w.insert(dst(&format!("attn.W_{name}")), wi);
            w.insert(
                dst(&format!("attn.b_{name}")),
                qkv_b.narrow(0, i * d, d)?.reshape((h, dh))?,
            );
        }
        w.insert(
            dst("attn.W_O"),
            raw.get(&src("attn.c_proj.weight"), &[d, d])?
                .reshape((h, dh, d))?,
        );
        w.insert(dst("attn.b_O"), raw.get(&src("attn.c_proj.bias"), &[d])?);
        w.insert(dst("ln2.w"), raw.get(&src("ln_2.weight"), &[d])?);
        w.insert(dst("ln2.b"), raw.get(&src("ln_2.bias"), &[d])?);
        w.insert(dst("mlp.W_in"), raw.get(&src("mlp.c_fc.weight"), &[d, m])?);
        w.insert(dst("mlp.b_in"), raw.get(&src("mlp.c_fc.bias"), &[m])?);
        w.insert(
            dst("mlp.W_out"),
            raw.get(&src("mlp.c_proj.weight"), &[m, d])?,
        );
        w.insert(dst("mlp.b_out"), raw.get(&src("mlp.c_proj.bias"), &[d])?);
    }
    w.insert("ln_final.w", raw.get("ln_f.weight", &[d])?);
    w.insert("ln_final.b", raw.get("ln_f.bias", &[d])?);
    // GPT-2 ties the unembedding to the embedding and has no unembedding bias.
    w.insert("unembed.W_U", w_e.t()?);
    w.insert("unembed.b_U", Tensor::zeros(v, w_e.dtype(), w_e.device())?);
    Ok(w)
}
