//! One model configuration for every family, described by axes (norm, positions, activation,
//! gating, heads) with TransformerLens's field names, parsed from a Hugging Face `config.json`.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How the residual stream is normalised before each sublayer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Normalization {
    /// LayerNorm with weight and bias.
    LN,
    /// LayerNorm whose weight and bias were folded into the next layer (centre and scale only).
    LNPre,
    /// RMSNorm with weight.
    RMS,
    /// RMSNorm whose weight was folded into the next layer.
    RMSPre,
    /// No normalisation at all.
    None,
}

/// How positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Positional {
    /// A learned `W_pos` added to the token embedding (GPT-2).
    Standard,
    /// Rotary embeddings applied to queries and keys (llama).
    Rotary,
}

/// The MLP non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// GPT-2's tanh approximation of GELU (`gelu_new`).
    GeluNew,
    /// Exact GELU.
    Gelu,
    Relu,
    /// SiLU, used in gated (SwiGLU) MLPs.
    Silu,
}

/// The shape and kind of a transformer, in TransformerLens's vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub d_head: usize,
    /// Key/value heads for grouped-query attention; equal to `n_heads` otherwise.
    pub n_key_value_heads: usize,
    /// MLP width; 0 for attention-only models.
    pub d_mlp: usize,
    pub d_vocab: usize,
    pub n_ctx: usize,
    pub act_fn: Activation,
    pub normalization_type: Normalization,
    pub positional_embedding_type: Positional,
    pub rotary_base: f64,
    pub gated_mlp: bool,
    pub attn_only: bool,
    pub eps: f64,
    /// Whether the checkpoint's unembedding is the token embedding (transposed).
    pub tie_word_embeddings: bool,
    /// The Hugging Face architecture this config came from, e.g. `GPT2LMHeadModel`.
    pub original_architecture: String,
    pub default_prepend_bos: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl ModelConfig {
    /// Parses a Hugging Face `config.json` (GPT-2, llama) or a hooklens one.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("config.json is not valid JSON: {e}")))?;
        let arch = v["architectures"][0]
            .as_str()
            .or_else(|| v["model_type"].as_str())
            .unwrap_or("")
            .to_string();
        let cfg = match arch.as_str() {
            "HookedTransformer" => serde_json::from_value(v["hooklens"].clone())
                .map_err(|e| Error::Config(format!("hooklens config: {e}")))?,
            "GPT2LMHeadModel" | "gpt2" => Self::from_gpt2(&v)?,
            "LlamaForCausalLM" | "llama" => Self::from_llama(&v)?,
            other => {
                return Err(Error::Unsupported(format!(
                    "architecture `{other}`; supported: GPT2LMHeadModel, LlamaForCausalLM"
                )))
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The hooklens `config.json` for this config (read back by [`Self::from_hf_json`]).
    pub fn to_hf_json(&self) -> String {
        let v = serde_json::json!({"architectures": ["HookedTransformer"], "hooklens": self});
        serde_json::to_string_pretty(&v).expect("config serialises")
    }

    fn from_gpt2(v: &Value) -> Result<Self> {
        let d_model = req(v, "n_embd")?;
        let n_heads = req(v, "n_head")?;
        let act = match v["activation_function"].as_str().unwrap_or("gelu_new") {
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluNew,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            other => return Err(Error::Unsupported(format!("GPT-2 activation `{other}`"))),
        };
        Ok(Self {
            n_layers: req(v, "n_layer")?,
            d_model,
            n_heads,
            d_head: d_model / n_heads.max(1),
            n_key_value_heads: n_heads,
            d_mlp: v["n_inner"].as_u64().map_or(4 * d_model, |x| x as usize),
            d_vocab: req(v, "vocab_size")?,
            n_ctx: req(v, "n_positions")?,
            act_fn: act,
            normalization_type: Normalization::LN,
            positional_embedding_type: Positional::Standard,
            rotary_base: 10000.0,
            gated_mlp: false,
            attn_only: false,
            eps: v["layer_norm_epsilon"].as_f64().unwrap_or(1e-5),
            tie_word_embeddings: true,
            original_architecture: "GPT2LMHeadModel".into(),
            default_prepend_bos: true,
            bos_token_id: v["bos_token_id"].as_u64().map(|x| x as u32),
            eos_token_id: v["eos_token_id"].as_u64().map(|x| x as u32),
        })
    }

    fn from_llama(v: &Value) -> Result<Self> {
        let d_model = req(v, "hidden_size")?;
        let n_heads = req(v, "num_attention_heads")?;
        let act = match v["hidden_act"].as_str().unwrap_or("silu") {
            "silu" => Activation::Silu,
            other => return Err(Error::Unsupported(format!("llama activation `{other}`"))),
        };
        Ok(Self {
            n_layers: req(v, "num_hidden_layers")?,
            d_model,
            n_heads,
            d_head: v["head_dim"]
                .as_u64()
                .map_or(d_model / n_heads.max(1), |x| x as usize),
            n_key_value_heads: v["num_key_value_heads"]
                .as_u64()
                .map_or(n_heads, |x| x as usize),
            d_mlp: req(v, "intermediate_size")?,
            d_vocab: req(v, "vocab_size")?,
            n_ctx: req(v, "max_position_embeddings")?,
            act_fn: act,
            normalization_type: Normalization::RMS,
            positional_embedding_type: Positional::Rotary,
            rotary_base: v["rope_theta"].as_f64().unwrap_or(10000.0),
            gated_mlp: true,
            attn_only: false,
            eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            original_architecture: "LlamaForCausalLM".into(),
            default_prepend_bos: true,
            bos_token_id: v["bos_token_id"].as_u64().map(|x| x as u32),
            eos_token_id: v["eos_token_id"].as_u64().map(|x| x as u32),
        })
    }

    /// Checks that the numbers describe a model that can exist.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.n_layers == 0 || self.d_model == 0 || self.n_heads == 0 || self.d_vocab == 0 {
            return bad("n_layers, d_model, n_heads and d_vocab must be positive".into());
        }
        if self.n_key_value_heads == 0 || !self.n_heads.is_multiple_of(self.n_key_value_heads) {
            return bad(format!(
                "n_heads ({}) must be a multiple of n_key_value_heads ({})",
                self.n_heads, self.n_key_value_heads
            ));
        }
        if self.positional_embedding_type == Positional::Rotary && !self.d_head.is_multiple_of(2) {
            return bad(format!(
                "rotary embeddings need an even d_head, got {}",
                self.d_head
            ));
        }
        if !self.attn_only && self.d_mlp == 0 {
            return bad("d_mlp must be positive unless the model is attention-only".into());
        }
        Ok(())
    }

    /// Query heads that share one key/value head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_key_value_heads
    }
}

fn req(v: &Value, key: &str) -> Result<usize> {
    v[key]
        .as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| Error::Config(format!("config.json lacks the integer field `{key}`")))
}
