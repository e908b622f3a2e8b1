//! GGUF files of every family but GPT-2: a GGUF copy of each tiny checkpoint, written by
//! llama.cpp's gguf package in llama.cpp's layout (tests/reference/make_gguf_fixtures.py), loads
//! as the same model as its safetensors original (for Gemma and Mistral, the original as the
//! file describes it: queries scaled by 1/√head_dim, Gemma 3's fixed layer pattern and local
//! rotary base; a llama without a sliding window);
//! with the same tokenizer, except the qwen2 file (which names Qwen2's word split), held to
//! transformers' ids on that file.

mod common;

use candle_core::{DType, Device};
use common::*;
use hooklens::{load_model, Hooks, LoadOptions, Processing};

#[test]
fn a_gguf_and_a_safetensors_copy_give_one_model() {
    let texts = [
        "The capital of France is Paris, and of Italy",
        "def add(a, b):\n    return a + b  # sum",
        "Numbers: 0 1 12 123 1234 and  spaces\t\ttabs",
    ];
    for family in ["qwen2", "qwen3", "gemma2", "gemma3", "mistral", "neox"] {
        let dir = as_gguf_describes(family);
        for processing in [Processing::none(), Processing::default()] {
            let opts = LoadOptions {
                processing,
                ..Default::default()
            };
            let file = root().join(format!("tests/fixtures/gguf/{family}.gguf"));
            let (a, tok_a, _) = load_model(Some(dir.path().to_str().unwrap()), &opts).unwrap();
            let (b, tok_b, _) = load_model(Some(file.to_str().unwrap()), &opts).unwrap();
            // GGUF stores the epsilon as f32.
            let mut cfg = b.cfg.clone();
            assert!(
                (cfg.eps - a.cfg.eps).abs() < 1e-12,
                "{family}: eps {}",
                cfg.eps
            );
            cfg.eps = a.cfg.eps;
            assert_eq!(cfg, a.cfg, "{family}");
            for t in texts {
                if family != "qwen2" {
                    assert_eq!(tok_b.encode(t).unwrap(), tok_a.encode(t).unwrap(), "{t:?}");
                }
                let tokens = tok_a.to_tokens(&[t], true, &Device::Cpu).unwrap();
                let run = |m: &hooklens::HookedTransformer| {
                    let logits = m.forward(&tokens, &mut Hooks::none()).unwrap();
                    logits.to_dtype(DType::F32).unwrap()
                };
                let (x, y) = (run(&a), run(&b));
                let d = max_abs_diff(&x, &y) / max_abs(&x).max(1.0);
                assert!(d < 1e-5, "{family}: logits differ by {d} of their scale");
            }
        }
    }
}

/// A copy of the family's checkpoint with its config changed to what llama.cpp's file of it
/// describes.
fn as_gguf_describes(family: &str) -> tempfile::TempDir {
    let src = root().join("tests/fixtures").join(family);
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    match family {
        "gemma2" => cfg["query_pre_attn_scalar"] = cfg["head_dim"].clone(),
        "gemma3" => {
            cfg["query_pre_attn_scalar"] = cfg["head_dim"].clone();
            // Three layers of a sixth-layer-global pattern are all local, at base 10,000.
            cfg["layer_types"] = serde_json::json!([
                "sliding_attention",
                "sliding_attention",
                "sliding_attention"
            ]);
            cfg["rope_parameters"]["sliding_attention"]["rope_theta"] = 10_000.0.into();
        }
        "mistral" => {
            cfg["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
            cfg["sliding_window"] = serde_json::Value::Null;
        }
        _ => {}
    }
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    dir
}

/// Qwen2's word split (tokenizer.ggml.pre = qwen2): single digits, CRLF kept together.
#[test]
fn the_qwen2_word_split_gives_transformers_ids() {
    let file = root().join("tests/fixtures/gguf/qwen2.gguf");
    let (_, tok, _) = load_model(Some(file.to_str().unwrap()), &LoadOptions::default()).unwrap();
    assert_tokenizer_matches(&tok, "gguf_qwen2_tokenizer_ids.json");
}

/// A word split hooklens does not know is refused, not replaced by GPT-2's.
#[test]
fn an_unknown_word_split_is_refused_by_name() {
    let mut bytes = std::fs::read(root().join("tests/fixtures/gguf/qwen2.gguf")).unwrap();
    let key = b"tokenizer.ggml.pre";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // Then the value's type (u32), its length (u64) and "qwen2".
    let value = at + 4 + 8;
    assert_eq!(&bytes[value..value + 5], b"qwen2");
    bytes[value + 4] = b'9';
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen9.gguf");
    std::fs::write(&path, bytes).unwrap();
    let e = load_model(Some(path.to_str().unwrap()), &LoadOptions::default())
        .err()
        .unwrap();
    assert!(matches!(e, hooklens::Error::Unsupported(_)), "{e}");
    assert!(
        e.to_string().contains("`qwen9` (tokenizer.ggml.pre)"),
        "{e}"
    );
}
