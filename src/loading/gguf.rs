//! GGUF files (llama.cpp): config and tokenizer from the metadata, tensors dequantized to f32 and
//! renamed to the Hugging Face llama names, so GGUF and safetensors share one conversion.

use super::RawTensors;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tokenizer::{Split, Tokenizer};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Quantisation types this loader dequantizes.
const SUPPORTED: [GgmlDType; 13] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// A GGUF file's config, tokenizer and tensors (dequantized, under HF llama names).
pub fn read_gguf(path: &Path) -> Result<(ModelConfig, Tokenizer, RawTensors)> {
    let corrupt = |reason: String| Error::CorruptFile {
        path: path.into(),
        reason,
    };
    let mut f = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingFile {
            path: path.into(),
            hint: "check the path".into(),
        },
        _ => Error::io(path, e),
    })?;
    let content = Content::read(&mut f).map_err(|e| {
        let msg = e.to_string();
        match msg.contains("unknown dtype") {
            true => Error::Unsupported(format!("{}: a tensor uses a quantization type candle cannot read ({msg}); supported: {SUPPORTED:?}", path.display())),
            false => corrupt(format!("not a readable GGUF file: {msg}")),
        }
    })?;
    let md = &content.metadata;
    let get = |k: &str| {
        md.get(k)
            .ok_or_else(|| corrupt(format!("metadata lacks `{k}`")))
    };
    let arch = get("general.architecture")?
        .to_string()
        .map_err(|e| corrupt(e.to_string()))?
        .clone();
    let family = match arch.as_str() {
        "llama" => "LlamaForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        "gemma2" => "Gemma2ForCausalLM",
        "gemma3" => "Gemma3ForCausalLM",
        "gptneox" => "GPTNeoXForCausalLM",
        _ => {
            return Err(Error::Unsupported(format!(
                "GGUF architecture `{arch}`; supported: llama, qwen2, qwen3, gemma2, gemma3, \
                 gptneox"
            )))
        }
    };
    let gemma = arch.starts_with("gemma");
    let tokens = get("tokenizer.ggml.tokens")?
        .to_vec()
        .map_err(|e| corrupt(e.to_string()))?;
    let id = |k: &str| md.get(k).and_then(value_u64).map(|x| x as u32);
    let (bos, eos) = (
        id("tokenizer.ggml.bos_token_id"),
        id("tokenizer.ggml.eos_token_id"),
    );
    // The metadata as the Hugging Face config.json it came from (the names transformers maps
    // them to), so that GGUF and safetensors share one config reader and its defaults.
    let mut hf = serde_json::json!({
        "architectures": [family],
        "vocab_size": tokens.len(),
        "tie_word_embeddings": !content.tensor_infos.contains_key("output.weight"),
        "bos_token_id": bos,
        "eos_token_id": eos,
    });
    for (key, field) in [
        ("embedding_length", "hidden_size"),
        ("block_count", "num_hidden_layers"),
        ("feed_forward_length", "intermediate_size"),
        ("context_length", "max_position_embeddings"),
        ("attention.head_count", "num_attention_heads"),
        ("attention.head_count_kv", "num_key_value_heads"),
        ("attention.key_length", "head_dim"),
        ("attention.sliding_window", "sliding_window"),
        ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
        ("attention.layer_norm_epsilon", "layer_norm_eps"),
        ("rope.freq_base", "rope_theta"),
        ("attn_logit_softcapping", "attn_logit_softcapping"),
        ("final_logit_softcapping", "final_logit_softcapping"),
    ] {
        let Some(v) = md.get(&format!("{arch}.{key}")) else {
            continue;
        };
        hf[field] = match (value_u64(v), value_f64(v)) {
            (Some(n), _) => n.into(),
            (None, Some(x)) => x.into(),
            _ => return Err(corrupt(format!("{arch}.{key} is not a number"))),
        };
    }
    let text = |k: &str| {
        md.get(&format!("{arch}.{k}"))
            .and_then(|v| v.to_string().ok())
    };
    if arch == "gptneox" {
        let flag = md.get("gptneox.use_parallel_residual");
        hf["use_parallel_residual"] = flag.and_then(|v| v.to_bool().ok()).unwrap_or(true).into();
        let rotated = md.get("gptneox.rope.dimension_count").and_then(value_u64);
        let n = |k: &str| hf[k].as_u64().unwrap_or(0) as f64;
        if let Some(r) = rotated {
            let d_head = n("hidden_size") / n("num_attention_heads").max(1.0);
            hf["partial_rotary_factor"] = (r as f64 / d_head).into();
        }
    }
    if let Some(kind) = text("rope.scaling.type").filter(|k| *k != "none") {
        let factor = md
            .get(&format!("{arch}.rope.scaling.factor"))
            .and_then(value_f64);
        hf["rope_scaling"] = serde_json::json!({"rope_type": kind, "factor": factor});
    }
    if gemma {
        // What llama.cpp scales Gemma's queries by: 1/√head_dim, but 1/√(d_model / heads) for
        // the 27B models (46 layers of Gemma 2, 62 of Gemma 3), as their checkpoints'
        // query_pre_attn_scalar says.
        let n = |k: &str| hf[k].as_u64().unwrap_or(0);
        let big = (arch == "gemma2" && n("num_hidden_layers") == 46)
            || (arch == "gemma3" && n("num_hidden_layers") == 62);
        hf["query_pre_attn_scalar"] = match big {
            true => (n("hidden_size") / n("num_attention_heads").max(1)).into(),
            false => hf["head_dim"].clone(),
        };
    }
    let mut cfg = ModelConfig::from_hf_json(&hf.to_string()).map_err(|e| match e {
        Error::Config(m) => corrupt(format!("metadata: {m}")),
        e => e,
    })?;
    cfg.default_prepend_bos = md
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    let (n_heads, n_kv) = (cfg.n_heads, cfg.n_key_value_heads);
    let tokenizer = tokenizer_from_metadata(md, &arch, bos, eos).map_err(|e| match e {
        Error::Unsupported(_) => e,
        e => corrupt(format!("tokenizer metadata: {e}")),
    })?;

    let mut tensors = HashMap::new();
    for (name, info) in &content.tensor_infos {
        if !SUPPORTED.contains(&info.ggml_dtype) {
            return Err(Error::Unsupported(format!(
                "{name} is quantized as {:?}; supported: {SUPPORTED:?}",
                info.ggml_dtype
            )));
        }
        // Unknown tensors keep their GGUF name, so the unused-tensor check names them.
        let hf = match arch.as_str() {
            "gptneox" => neox_name(name),
            _ => hf_name(name, gemma),
        };
        let hf = hf.unwrap_or_else(|| name.clone());
        let q = content
            .tensor(&mut f, name, &Device::Cpu)
            .map_err(|e| corrupt(format!("{name}: {e}")))?;
        let mut t = q.dequantize(&Device::Cpu)?;
        // llama.cpp stores Gemma's norms as 1 + w (its RMSNorm multiplies by the weight); the
        // checkpoint's w is what the Hugging Face conversion reads. Only llama permutes Q/K.
        if gemma && name.ends_with("norm.weight") {
            t = (t - 1.0)?;
        } else if arch == "llama" && name.ends_with("attn_q.weight") {
            t = unpermute_rotary(&t, n_heads)?;
        } else if arch == "llama" && name.ends_with("attn_k.weight") {
            t = unpermute_rotary(&t, n_kv)?;
        } else if name.contains("attn_qkv.") {
            t = interleave_qkv(&t, n_heads)?;
        }
        tensors.insert(hf, t);
    }
    Ok((cfg, tokenizer, RawTensors::from_map(tensors, path)))
}

/// llama.cpp's tensor names -> Hugging Face llama (or Gemma) names, weights and biases.
fn hf_name(gguf: &str, gemma: bool) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let (module, kind) = name.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// llama.cpp's GPT-NeoX tensor names -> Hugging Face's.
fn neox_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => "gpt_neox.embed_in.weight",
        "output.weight" => "embed_out.weight",
        "output_norm.weight" => "gpt_neox.final_layer_norm.weight",
        "output_norm.bias" => "gpt_neox.final_layer_norm.bias",
        _ => "",
    };
    if !fixed.is_empty() {
        return Some(fixed.into());
    }
    let (layer, name) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let (module, kind) = name.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "attn_qkv" => "attention.query_key_value",
        "attn_output" => "attention.dense",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_up" => "mlp.dense_h_to_4h",
        "ffn_down" => "mlp.dense_4h_to_h",
        _ => return None,
    };
    Some(format!("gpt_neox.layers.{layer}.{hf}.{kind}"))
}

/// llama.cpp stores GPT-NeoX's fused Q/K/V rows as all queries, all keys, all values; the
/// checkpoint interleaves them per head: [3, heads, d_head, ...] -> [heads, 3, d_head, ...].
fn interleave_qkv(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rest: usize = dims[1..].iter().product();
    let d_head = dims[0] / 3 / heads;
    Ok(t.reshape((3, heads, d_head * rest))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape(dims)?)
}

/// Undoes llama.cpp's reordering of query/key rows (interleaved pairs for its rotary kernel)
/// back to Hugging Face's rotate-half layout: per head, rows (2i, 2i+1) return to (i, i + d/2).
fn unpermute_rotary(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let dh = rows / heads;
    Ok(w.reshape((heads, dh / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// The tokenizer stored in `tokenizer.ggml.*`: byte-level BPE (`gpt2`), or Gemma's
/// SentencePiece BPE (`llama` in a Gemma file).
fn tokenizer_from_metadata(
    md: &HashMap<String, Value>,
    arch: &str,
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<Tokenizer> {
    let err = |m: &str| Error::Tokenizer(m.to_string());
    let model = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .ok_or_else(|| err("no tokenizer.ggml.model"))?;
    let strings = |k: &str| -> Result<Vec<String>> {
        md.get(k)
            .ok_or_else(|| err(k))?
            .to_vec()?
            .iter()
            .map(|v| Ok(v.to_string()?.clone()))
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()?
            .iter()
            .map(|t| value_u64(t).map_or(1, |x| x as i64))
            .collect(),
        None => vec![1; tokens.len()],
    };
    match model.as_str() {
        "gpt2" => {}
        "llama" if arch.starts_with("gemma") => {
            let unk = md
                .get("tokenizer.ggml.unknown_token_id")
                .and_then(value_u64);
            let mut tok = Tokenizer::gemma_sentencepiece(tokens, &types, unk.map(|x| x as u32))?;
            tok.bos_token_id = bos;
            tok.eos_token_id = eos;
            return Ok(tok);
        }
        _ => {
            return Err(Error::Unsupported(format!(
                "GGUF tokenizer model `{model}` in a `{arch}` file; supported: gpt2 (byte-level \
                 BPE), and llama (SentencePiece) in Gemma files"
            )))
        }
    }
    let merges = strings("tokenizer.ggml.merges")?;
    // Control (3) and user-defined (4) tokens are matched whole, as Hugging Face's added tokens.
    let special: Vec<(u32, String)> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| (i as u32, t.clone()))
        .collect();
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map_or("default", |s| s.as_str());
    let split = match pre {
        "default" | "gpt2" | "gpt-2" => Split::Gpt2,
        "smollm" | "llama3" | "llama-bpe" => Split::Digits,
        "qwen2" => Split::Qwen2,
        _ => {
            return Err(Error::Unsupported(format!(
                "GGUF pre-tokenizer `{pre}` (tokenizer.ggml.pre); supported: default, gpt2, gpt-2, \
                 smollm, llama3, llama-bpe, qwen2"
            )))
        }
    };
    let mut tok = Tokenizer::byte_level_bpe(tokens, merges, &special, split)?;
    tok.bos_token_id = bos;
    tok.eos_token_id = eos;
    Ok(tok)
}

/// An integer value of any width; a negative one is none. A match, not `to_u64().or(...)`: each
/// failed conversion is a candle error that captures a backtrace under RUST_BACKTRACE=1 (Gemma
/// 3's 262,144 token types took 9 s of a 23 s load that way).
fn value_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

fn value_f64(v: &Value) -> Option<f64> {
    match *v {
        Value::F32(x) => Some(x.into()),
        Value::F64(x) => Some(x),
        _ => None,
    }
}
