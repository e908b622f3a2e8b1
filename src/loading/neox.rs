//! GPT-NeoX / Pythia (`GPTNeoXForCausalLM`) checkpoint names -> canonical TransformerLens
//! weights. torch `Linear` weights are stored [out, in]; `query_key_value` packs Q, K and V per
//! head: its rows are [head, (q | k | v), d_head].

use super::RawTensors;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::weights::Weights;

/// Checkpoint tensors deliberately not read: the causal-mask and rotary-frequency buffers older
/// checkpoints carry (recomputed from the config).
pub const IGNORED: &[&str] = &[
    "gpt_neox.layers.*.attention.bias",
    "gpt_neox.layers.*.attention.masked_bias",
    "gpt_neox.layers.*.attention.rotary_emb.inv_freq",
];

pub fn to_canonical(raw: &RawTensors, cfg: &ModelConfig) -> Result<Weights> {
    let (d, h, dh, m, v) = (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab);
    let mut w = Weights::default();
    let w_e = raw.get("gpt_neox.embed_in.weight", &[v, d])?;
    w.insert("embed.W_E", w_e.clone());
    for l in 0..cfg.n_layers {
        let src = |n: &str| format!("gpt_neox.layers.{l}.{n}");
        let dst = |n: &str| format!("blocks.{l}.{n}");
        w.insert(dst("ln1.w"), raw.get(&src("input_layernorm.weight"), &[d])?);
        w.insert(dst("ln1.b"), raw.get(&src("input_layernorm.bias"), &[d])?);
        // [H * 3 * d_head, d_model] -> [H, 3, d_head, d_model]
        let qkv = raw
            .get(&src("attention.query_key_value.weight"), &[3 * d, d])?
            .reshape((h, 3, dh, d))?;
        let qkv_b = raw
            .get(&src("attention.query_key_value.bias"), &[3 * d])?
            .reshape((h, 3, dh))?;
        for (i, name) in ["Q", "K", "V"].iter().enumerate() {
            // [H, d_head, d_model] -> [H, d_model, d_head]
            let wi = qkv
                .narrow(1, i, 1)?
                .squeeze(1)?
                .transpose(1, 2)?
                .contiguous()?;
            w.insert(dst(&format!("attn.W_{name}")), wi);
            let bi = qkv_b.narrow(1, i, 1)?.squeeze(1)?.contiguous()?; // [H, d_head]
            w.insert(dst(&format!("attn.b_{name}")), bi);
        }
        // [d_model, H * d_head] -> [H, d_head, d_model]
        let w_o = raw.get(&src("attention.dense.weight"), &[d, d])?;
        w.insert(dst("attn.W_O"), w_o.t()?.contiguous()?.reshape((h, dh, d))?);
        w.insert(
            dst("attn.b_O"),
            raw.get(&src("attention.dense.bias"), &[d])?,
        );
        w.insert(
            dst("ln2.w"),
            raw.get(&src("post_attention_layernorm.weight"), &[d])?,
        );
        w.insert(
            dst("ln2.b"),
            raw.get(&src("post_attention_layernorm.bias"), &[d])?,
        );
        let lin = |name: &str, out: usize, inp: usize| -> Result<_> {
            Ok(raw.get(&src(name), &[out, inp])?.t()?.contiguous()?)
        };
        w.insert(dst("mlp.W_in"), lin("mlp.dense_h_to_4h.weight", m, d)?);
        w.insert(
            dst("mlp.b_in"),
            raw.get(&src("mlp.dense_h_to_4h.bias"), &[m])?,
        );
        w.insert(dst("mlp.W_out"), lin("mlp.dense_4h_to_h.weight", d, m)?);
        w.insert(
            dst("mlp.b_out"),
            raw.get(&src("mlp.dense_4h_to_h.bias"), &[d])?,
        );
    }
    w.insert(
        "ln_final.w",
        raw.get("gpt_neox.final_layer_norm.weight", &[d])?,
    );
    w.insert(
        "ln_final.b",
        raw.get("gpt_neox.final_layer_norm.bias", &[d])?,
    );
    let w_u = match (cfg.tie_word_embeddings, raw.has("embed_out.weight")) {
        (_, true) => raw.get("embed_out.weight", &[v, d])?,
        (true, false) => w_e,
        (false, false) => {
            return Err(Error::MissingWeight(
                "embed_out.weight (the config says the unembedding is not tied)".into(),
            ))
        }
    };
    // A view: the model keeps W_U in this [d_vocab, d_model] layout (see HookedTransformer::new).
    w.insert("unembed.W_U", w_u.t()?);
    Ok(w)
}
