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

impl Normalization {
    /// The kind before weight processing folded its weights away (`LNPre` -> `LN`, ...).
    pub fn unfolded(self) -> Self {
        match self {
            Normalization::LNPre => Normalization::LN,
            Normalization::RMSPre => Normalization::RMS,
            other => other,
        }
    }
}

/// How positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Positional {
    /// A learned `W_pos` added to the token embedding (GPT-2).
    Standard,
    /// Rotary embeddings applied to queries and keys (llama).
    Rotary,
    /// The fixed sine/cosine table of the original transformer, added like a learned `W_pos`.
    Sinusoidal,
}

/// Which keys an attention layer sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttnType {
    /// Every earlier key (causal).
    Global,
    /// Only the last `window_size` keys, the query's own included (sliding window).
    Local,
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
    /// Leading dimensions of each head that rotary embeddings rotate (GPT-NeoX's
    /// `rotary_pct`); `None`: all of `d_head`.
    #[serde(default)]
    pub rotary_dim: Option<usize>,
    /// Attention and MLP both read `resid_pre` and add to it (GPT-NeoX's
    /// `use_parallel_residual`): no `hook_resid_mid`.
    #[serde(default)]
    pub parallel_attn_mlp: bool,
    /// A second norm on each sublayer's output before it joins the residual stream
    /// (Gemma 2): `ln1_post` and `ln2_post`.
    #[serde(default)]
    pub use_normalization_before_and_after: bool,
    /// RMSNorm over each query and key head before the rotation (Qwen3): `attn.q_norm`,
    /// `attn.k_norm`.
    #[serde(default)]
    pub use_qk_norm: bool,
    /// What q·k is divided by; `None`: √d_head (Gemma 2: √query_pre_attn_scalar).
    #[serde(default)]
    pub attn_scale: Option<f64>,
    /// Attention scores become `c·tanh(scores / c)` before the mask (Gemma 2).
    #[serde(default)]
    pub attn_scores_soft_cap: Option<f64>,
    /// Logits become `c·tanh(logits / c)` (Gemma 2).
    #[serde(default)]
    pub output_logits_soft_cap: Option<f64>,
    /// Keys a `Local` layer sees (sliding window, Mistral, Gemma 2).
    #[serde(default)]
    pub window_size: Option<usize>,
    /// Per layer, global or local attention; empty: every layer global.
    #[serde(default)]
    pub attn_types: Vec<AttnType>,
    /// The rotary base of `Local` layers (Gemma 3's `rope_local_base_freq`); `None`: they
    /// share the global layers' rotation.
    #[serde(default)]
    pub rotary_base_local: Option<f64>,
    /// Linear rope scaling: global layers' positions are divided by this factor (Gemma 3's
    /// `rope_scaling` of type `linear`).
    #[serde(default)]
    pub rotary_linear_factor: Option<f64>,
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
        let cfg =
            match arch.as_str() {
                "HookedTransformer" => serde_json::from_value(v["hooklens"].clone())
                    .map_err(|e| Error::Config(format!("hooklens config: {e}")))?,
                "GPT2LMHeadModel" | "gpt2" => Self::from_gpt2(&v)?,
                "GPTNeoXForCausalLM" | "gpt_neox" => Self::from_neox(&v)?,
                "LlamaForCausalLM" | "llama" => Self::from_llama(&v, "LlamaForCausalLM")?,
                "MistralForCausalLM" | "mistral" => Self::from_llama(&v, "MistralForCausalLM")?,
                "Qwen2ForCausalLM" | "qwen2" => Self::from_llama(&v, "Qwen2ForCausalLM")?,
                "Qwen3ForCausalLM" | "qwen3" => Self::from_llama(&v, "Qwen3ForCausalLM")?,
                "Gemma2ForCausalLM" | "gemma2" => Self::from_llama(&v, "Gemma2ForCausalLM")?,
                "Gemma3ForCausalLM" | "gemma3_text" => Self::from_llama(&v, "Gemma3ForCausalLM")?,
                "Gemma3ForConditionalGeneration" | "gemma3" => return Err(Error::Unsupported(
                    "Gemma3ForConditionalGeneration (the multimodal checkpoint, whose text model \
                     sits under `language_model`): load a text-only Gemma3ForCausalLM checkpoint \
                     (such as gemma-3-270m or gemma-3-1b) or its GGUF"
                        .into(),
                )),
                other => {
                    return Err(Error::Unsupported(format!(
                        "architecture `{other}`; supported: {}",
                        SUPPORTED.join(", ")
                    )))
                }
            };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The axes every family but its own leaves off (no partial rotary, sequential sublayers,
    /// no extra norms, soft-caps or sliding windows), for struct-update syntax.
    pub fn plain() -> Self {
        Self {
            n_layers: 0,
            d_model: 0,
            n_heads: 0,
            d_head: 0,
            n_key_value_heads: 0,
            d_mlp: 0,
            d_vocab: 0,
            n_ctx: 0,
            act_fn: Activation::GeluNew,
            normalization_type: Normalization::LN,
            positional_embedding_type: Positional::Standard,
            rotary_base: 10000.0,
            gated_mlp: false,
            attn_only: false,
            eps: 1e-5,
            tie_word_embeddings: false,
            original_architecture: String::new(),
            default_prepend_bos: true,
            bos_token_id: None,
            eos_token_id: None,
            rotary_dim: None,
            parallel_attn_mlp: false,
            use_normalization_before_and_after: false,
            use_qk_norm: false,
            attn_scale: None,
            attn_scores_soft_cap: None,
            output_logits_soft_cap: None,
            window_size: None,
            attn_types: vec![],
            rotary_base_local: None,
            rotary_linear_factor: None,
        }
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
            d_head: head_width(d_model, n_heads, "n_embd", "n_head")?,
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
            ..Self::plain()
        })
    }

    /// llama and the families built on it: Mistral (sliding window), Qwen2 (Q/K/V biases, read
    /// from the checkpoint), Qwen3 (QK-norm), Gemma 2 (soft-caps, post-norms, GeGLU, ...) and
    /// Gemma 3 (Gemma 2's norms without soft-caps, QK-norm, a rotary base per layer type).
    fn from_llama(v: &Value, arch: &str) -> Result<Self> {
        let gemma = arch.starts_with("Gemma");
        let d_model = req(v, "hidden_size")?;
        let n_heads = req(v, "num_attention_heads")?;
        let n_layers = req(v, "num_hidden_layers")?;
        let act_name = v["hidden_activation"]
            .as_str()
            .or(v["hidden_act"].as_str())
            .unwrap_or(if gemma { "gelu_pytorch_tanh" } else { "silu" });
        let act = match act_name {
            "silu" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" => Activation::GeluNew,
            "gelu" => Activation::Gelu,
            other => return Err(Error::Unsupported(format!("{arch} activation `{other}`"))),
        };
        let rope = rope(v, arch)?;
        let d_head = match v["head_dim"].as_u64() {
            Some(d) => d as usize,
            None => head_width(d_model, n_heads, "hidden_size", "num_attention_heads")?,
        };
        let window_size = v["sliding_window"].as_u64().map(|x| x as usize);
        let attn_types = match window_size {
            Some(_) => local_layers(v, arch, n_layers)?,
            None => vec![],
        };
        let f = |key: &str| v[key].as_f64();
        Ok(Self {
            n_layers,
            d_model,
            n_heads,
            d_head,
            n_key_value_heads: v["num_key_value_heads"]
                .as_u64()
                .map_or(n_heads, |x| x as usize),
            d_mlp: req(v, "intermediate_size")?,
            d_vocab: req(v, "vocab_size")?,
            n_ctx: req(v, "max_position_embeddings")?,
            act_fn: act,
            normalization_type: Normalization::RMS,
            positional_embedding_type: Positional::Rotary,
            rotary_base: rope.base,
            gated_mlp: true,
            attn_only: false,
            eps: f("rms_norm_eps").unwrap_or(1e-6),
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(gemma),
            original_architecture: arch.into(),
            default_prepend_bos: true,
            bos_token_id: v["bos_token_id"].as_u64().map(|x| x as u32),
            eos_token_id: v["eos_token_id"].as_u64().map(|x| x as u32),
            rotary_dim: rope.partial.map(|p| (d_head as f64 * p) as usize),
            parallel_attn_mlp: false,
            use_normalization_before_and_after: gemma,
            use_qk_norm: matches!(arch, "Qwen3ForCausalLM" | "Gemma3ForCausalLM"),
            attn_scale: match gemma {
                true => Some(f("query_pre_attn_scalar").unwrap_or(d_head as f64).sqrt()),
                false => None,
            },
            attn_scores_soft_cap: f("attn_logit_softcapping"),
            output_logits_soft_cap: f("final_logit_softcapping"),
            window_size: window_size.filter(|_| !attn_types.is_empty()),
            attn_types,
            rotary_base_local: rope.local_base,
            rotary_linear_factor: rope.linear_factor,
        })
    }

    /// GPT-NeoX / Pythia: LayerNorm with biases, parallel attention and MLP, partial rotary.
    fn from_neox(v: &Value) -> Result<Self> {
        let d_model = req(v, "hidden_size")?;
        let n_heads = req(v, "num_attention_heads")?;
        let d_head = head_width(d_model, n_heads, "hidden_size", "num_attention_heads")?;
        let act = match v["hidden_act"].as_str().unwrap_or("gelu") {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluNew,
            "relu" => Activation::Relu,
            other => return Err(Error::Unsupported(format!("GPT-NeoX activation `{other}`"))),
        };
        let rope = rope(v, "GPTNeoXForCausalLM")?;
        if rope.local_base.is_some() || rope.linear_factor.is_some() {
            return Err(Error::Unsupported(
                "GPT-NeoX with per-layer or linearly scaled rotary embeddings".into(),
            ));
        }
        Ok(Self {
            n_layers: req(v, "num_hidden_layers")?,
            d_model,
            n_heads,
            d_head,
            n_key_value_heads: n_heads,
            d_mlp: req(v, "intermediate_size")?,
            d_vocab: req(v, "vocab_size")?,
            n_ctx: req(v, "max_position_embeddings")?,
            act_fn: act,
            normalization_type: Normalization::LN,
            positional_embedding_type: Positional::Rotary,
            rotary_base: rope.base,
            gated_mlp: false,
            attn_only: false,
            eps: v["layer_norm_eps"].as_f64().unwrap_or(1e-5),
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            original_architecture: "GPTNeoXForCausalLM".into(),
            default_prepend_bos: true,
            bos_token_id: v["bos_token_id"].as_u64().map(|x| x as u32),
            eos_token_id: v["eos_token_id"].as_u64().map(|x| x as u32),
            rotary_dim: Some((d_head as f64 * rope.partial.unwrap_or(1.0)) as usize),
            parallel_attn_mlp: v["use_parallel_residual"].as_bool().unwrap_or(true),
            ..Self::plain()
        })
    }

    /// The window of `layer`'s attention, if it is a sliding-window (local) layer.
    pub fn window(&self, layer: usize) -> Option<usize> {
        match self.attn_types.get(layer) {
            Some(AttnType::Local) => self.window_size,
            _ => None,
        }
    }

    /// The rotary base and linear position factor of `layer`: local layers may have their
    /// own base (Gemma 3), and linear scaling applies to the others.
    pub fn rope(&self, layer: usize) -> (f64, f64) {
        match (self.window(layer), self.rotary_base_local) {
            (Some(_), Some(base)) => (base, 1.0),
            _ => (self.rotary_base, self.rotary_linear_factor.unwrap_or(1.0)),
        }
    }

    /// Dimensions of each head that rotary embeddings rotate.
    pub fn rotary_dim(&self) -> usize {
        self.rotary_dim.unwrap_or(self.d_head)
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
        let rot = self.rotary_dim();
        if self.positional_embedding_type == Positional::Rotary
            && (!rot.is_multiple_of(2) || rot == 0 || rot > self.d_head)
        {
            return bad(format!(
                "rotary embeddings need an even rotary dimension in 2..=d_head ({}), got {rot}",
                self.d_head
            ));
        }
        if self.positional_embedding_type == Positional::Sinusoidal
            && !self.d_model.is_multiple_of(2)
        {
            return bad(format!(
                "sinusoidal positions need an even d_model, got {}",
                self.d_model
            ));
        }
        if !self.attn_types.is_empty() && self.attn_types.len() != self.n_layers {
            return bad(format!(
                "attn_types has {} entries for {} layers",
                self.attn_types.len(),
                self.n_layers
            ));
        }
        if self.attn_types.contains(&AttnType::Local) && self.window_size.is_none_or(|w| w == 0) {
            return bad("local attention layers need a positive window_size".into());
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

/// The architectures `from_hf_json` reads (Hugging Face's class names).
pub const SUPPORTED: &[&str] = &[
    "GPT2LMHeadModel",
    "GPTNeoXForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
];

/// A config's rotary embeddings.
struct Rope {
    base: f64,
    /// The fraction of each head rotated, if given.
    partial: Option<f64>,
    /// Local layers' own base (Gemma 3).
    local_base: Option<f64>,
    /// Linear scaling of the global layers' positions.
    linear_factor: Option<f64>,
}

/// The rotary embeddings, from the field names of older configs (`rope_theta`,
/// `rotary_emb_base`, `rotary_pct`, `partial_rotary_factor`, `rope_scaling`,
/// `rope_local_base_freq`) or transformers 5's `rope_parameters` (one set per layer type for
/// Gemma 3). Plain and linear rotary are read; other scaled variants (llama3, yarn, ...) are
/// refused: their frequencies differ, and loading them as plain rotary would silently change
/// the model.
fn rope(v: &Value, arch: &str) -> Result<Rope> {
    let per_type = &v["rope_parameters"]["full_attention"];
    let params = match per_type.is_object() {
        true => per_type,
        false => &v["rope_parameters"],
    };
    let scaling = &v["rope_scaling"];
    let field = |key: &str| params[key].as_f64().or(scaling[key].as_f64());
    let kind = params["rope_type"]
        .as_str()
        .or(scaling["rope_type"].as_str())
        .or(scaling["type"].as_str())
        .unwrap_or("default");
    let linear_factor = match kind {
        "default" => None,
        "linear" => Some(field("factor").ok_or_else(|| {
            Error::Config(format!("{arch}: linear rope scaling without a `factor`"))
        })?),
        _ => {
            return Err(Error::Unsupported(format!(
            "{arch} with rope type `{kind}` (plain and linear rotary embeddings are implemented)"
        )))
        }
    };
    let local = &v["rope_parameters"]["sliding_attention"];
    if !matches!(local["rope_type"].as_str(), None | Some("default")) {
        return Err(Error::Unsupported(format!(
            "{arch} with local rope type {} (plain rotary embeddings are implemented for local layers)",
            local["rope_type"]
        )));
    }
    let base = [
        &params["rope_theta"],
        &v["rope_theta"],
        &v["rotary_emb_base"],
    ]
    .into_iter()
    .find_map(Value::as_f64)
    .unwrap_or(10000.0);
    let partial = [
        &params["partial_rotary_factor"],
        &v["partial_rotary_factor"],
        &v["rotary_pct"],
    ]
    .into_iter()
    .find_map(Value::as_f64);
    let local_base = (local["rope_theta"].as_f64())
        .or(v["rope_local_base_freq"].as_f64())
        .or((arch == "Gemma3ForCausalLM").then_some(10000.0));
    Ok(Rope {
        base,
        partial,
        local_base,
        linear_factor,
    })
}

/// Which layers use sliding-window attention, for a config whose `sliding_window` is set:
/// transformers 5's `layer_types` where present; otherwise each family's rule (Mistral: every
/// layer; Gemma 2: even layers; Qwen: layers from `max_window_layers` on, and only with
/// `use_sliding_window`). An empty list means no local layer.
fn local_layers(v: &Value, arch: &str, n_layers: usize) -> Result<Vec<AttnType>> {
    if let Some(types) = v["layer_types"].as_array() {
        let kinds = types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(AttnType::Local),
                Some("full_attention") => Ok(AttnType::Global),
                other => Err(Error::Unsupported(format!(
                    "{arch} layer type {other:?} (expected sliding_attention or full_attention)"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok(match kinds.contains(&AttnType::Local) {
            true => kinds,
            false => vec![],
        });
    }
    let local = |f: &dyn Fn(usize) -> bool| {
        (0..n_layers)
            .map(|l| match f(l) {
                true => AttnType::Local,
                false => AttnType::Global,
            })
            .collect()
    };
    Ok(match arch {
        "MistralForCausalLM" => local(&|_| true),
        "Gemma2ForCausalLM" => local(&|l| l % 2 == 0),
        // Every `sliding_window_pattern`-th layer is global (older Gemma 3 configs).
        "Gemma3ForCausalLM" => {
            let every = v["sliding_window_pattern"].as_u64().unwrap_or(6).max(1) as usize;
            local(&|l| (l + 1) % every != 0)
        }
        "Qwen2ForCausalLM" | "Qwen3ForCausalLM"
            if v["use_sliding_window"].as_bool() == Some(true) =>
        {
            let from = v["max_window_layers"].as_u64().unwrap_or(0) as usize;
            local(&|l| l >= from)
        }
        _ => vec![],
    })
}

fn req(v: &Value, key: &str) -> Result<usize> {
    match &v[key] {
        Value::Null => Err(Error::Config(format!(
            "config.json lacks the integer field `{key}`"
        ))),
        x => x.as_u64().map(|x| x as usize).ok_or_else(|| {
            Error::Config(format!(
                "config.json field `{key}` is {x}: it must be a non-negative integer"
            ))
        }),
    }
}

/// Each head's width when the config gives only the model's: `heads` (the field `heads_key`)
/// must divide `d_model` (`model_key`).
fn head_width(d_model: usize, heads: usize, model_key: &str, heads_key: &str) -> Result<usize> {
    if heads == 0 || !d_model.is_multiple_of(heads) {
        return Err(Error::Config(format!(
            "config.json `{heads_key}` ({heads}) must divide `{model_key}` ({d_model}): each head \
             gets an equal share of the model's width"
        )));
    }
    Ok(d_model / heads)
}
