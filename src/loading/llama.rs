//! llama (`LlamaForCausalLM`) checkpoint names -> canonical TransformerLens weights, for llama
//! and the families that share its names: Mistral, Qwen2 (Q/K/V biases), Qwen3 (`q_norm`,
//! `k_norm`) and Gemma 2 and 3 (four norms a block, each a (1 + w) RMSNorm, and embeddings
//! scaled by √d_model; Gemma 3's QK-norm too). torch `Linear` weights are stored [out, in]; queries and keys in the rotate-half
//! layout.

use super::RawTensors;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::weights::Weights;

/// Checkpoint tensors deliberately not read: rotary frequency buffers (recomputed from the
/// config). A tied checkpoint's `lm_head.weight` is skipped by [`to_canonical`].
pub const IGNORED: &[&str] = &["model.layers.*.self_attn.rotary_emb.inv_freq"];

pub fn to_canonical(raw: &RawTensors, cfg: &ModelConfig) -> Result<Weights> {
    let (d, h, kv, dh, m, v) = (
        cfg.d_model,
        cfg.n_heads,
        cfg.n_key_value_heads,
        cfg.d_head,
        cfg.d_mlp,
        cfg.d_vocab,
    );
    let gemma = cfg.original_architecture.starts_with("Gemma");
    // Gemma's RMSNorm multiplies by (1 + w); as in TransformerLens, the 1 is added here.
    let norm_w = |name: &str, len: usize| -> Result<_> {
        let t = raw.get(name, &[len])?;
        Ok(if gemma { (t + 1.0)? } else { t })
    };
    let mut w = Weights::default();
    let w_e = raw.get("model.embed_tokens.weight", &[v, d])?;
    // Gemma scales the token embeddings by √d_model (TransformerLens folds it into W_E); the
    // tied unembedding below is the unscaled matrix.
    match gemma {
        true => w.insert("embed.W_E", (&w_e * (d as f64).sqrt())?),
        false => w.insert("embed.W_E", w_e.clone()),
    }
    for l in 0..cfg.n_layers {
        let src = |n: &str| format!("model.layers.{l}.{n}");
        let dst = |n: &str| format!("blocks.{l}.{n}");
        // [heads * d_head, d_model] -> [heads, d_model, d_head]
        let per_head = |name: &str, heads: usize| -> Result<_> {
            Ok(raw
                .get(&src(name), &[heads * dh, d])?
                .reshape((heads, dh, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        w.insert(dst("ln1.w"), norm_w(&src("input_layernorm.weight"), d)?);
        w.insert(dst("attn.W_Q"), per_head("self_attn.q_proj.weight", h)?);
        w.insert(dst("attn.W_K"), per_head("self_attn.k_proj.weight", kv)?);
        w.insert(dst("attn.W_V"), per_head("self_attn.v_proj.weight", kv)?);
        // Qwen2's biases (and any llama-family checkpoint with attention_bias).
        for (x, heads) in [("q", h), ("k", kv), ("v", kv)] {
            let name = src(&format!("self_attn.{x}_proj.bias"));
            if raw.has(&name) {
                let b = raw.get(&name, &[heads * dh])?.reshape((heads, dh))?;
                w.insert(dst(&format!("attn.b_{}", x.to_uppercase())), b);
            }
        }
        if raw.has(&src("self_attn.o_proj.bias")) {
            w.insert(
                dst("attn.b_O"),
                raw.get(&src("self_attn.o_proj.bias"), &[d])?,
            );
        }
        if cfg.use_qk_norm {
            w.insert(
                dst("attn.q_norm.w"),
                norm_w(&src("self_attn.q_norm.weight"), dh)?,
            );
            w.insert(
                dst("attn.k_norm.w"),
                norm_w(&src("self_attn.k_norm.weight"), dh)?,
            );
        }
        // [d_model, H * d_head] -> [H, d_head, d_model]
        let w_o = raw.get(&src("self_attn.o_proj.weight"), &[d, h * dh])?;
        w.insert(dst("attn.W_O"), w_o.t()?.contiguous()?.reshape((h, dh, d))?);
        if gemma {
            let n = |name: &str| norm_w(&src(name), d);
            w.insert(dst("ln1_post.w"), n("post_attention_layernorm.weight")?);
            w.insert(dst("ln2.w"), n("pre_feedforward_layernorm.weight")?);
            w.insert(dst("ln2_post.w"), n("post_feedforward_layernorm.weight")?);
        } else {
            w.insert(
                dst("ln2.w"),
                norm_w(&src("post_attention_layernorm.weight"), d)?,
            );
        }
        w.insert(
            dst("mlp.W_gate"),
            raw.get(&src("mlp.gate_proj.weight"), &[m, d])?
                .t()?
                .contiguous()?,
        );
        w.insert(
            dst("mlp.W_in"),
            raw.get(&src("mlp.up_proj.weight"), &[m, d])?
                .t()?
                .contiguous()?,
        );
        w.insert(
            dst("mlp.W_out"),
            raw.get(&src("mlp.down_proj.weight"), &[d, m])?
                .t()?
                .contiguous()?,
        );
    }
    w.insert("ln_final.w", norm_w("model.norm.weight", d)?);
    let w_u = match (cfg.tie_word_embeddings, raw.has("lm_head.weight")) {
        (false, true) => raw.get("lm_head.weight", &[v, d])?,
        (true, true) => {
            // A copy of the embedding the config says to tie to.
            raw.skip("lm_head.weight");
            w_e
        }
        (true, false) => w_e,
        (false, false) => {
            return Err(crate::error::Error::MissingWeight(
                "lm_head.weight (the config says the unembedding is not tied)".into(),
            ))
        }
    };
    // A view: the model keeps W_U in this [d_vocab, d_model] layout (see HookedTransformer::new).
    w.insert("unembed.W_U", w_u.t()?);
    Ok(w)
}
