//! GGUF files of Qwen2 and Qwen3: a GGUF copy of each tiny checkpoint, written by llama.cpp's
//! gguf package in llama.cpp's layout (tests/reference/make_gguf_fixtures.py), loads as the same
//! model as its safetensors original; the qwen3 file with the same tokenizer, the qwen2 file
//! (which names Qwen2's word split) with transformers' ids on that file.

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
    for family in ["qwen2", "qwen3"] {
        for processing in [Processing::none(), Processing::default()] {
            let opts = LoadOptions {
                processing,
                ..Default::default()
            };
            let dir = root().join("tests/fixtures").join(family);
            let file = root().join(format!("tests/fixtures/gguf/{family}.gguf"));
            let (a, tok_a, _) = load_model(Some(dir.to_str().unwrap()), &opts).unwrap();
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
                if family == "qwen3" {
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

/// Qwen2's word split (tokenizer.ggml.pre = qwen2): single digits, CRLF kept together.
#[test]
fn the_qwen2_word_split_gives_transformers_ids() {
    let file = root().join("tests/fixtures/gguf/qwen2.gguf");
    let (_, tok, _) = load_model(Some(file.to_str().unwrap()), &LoadOptions::default()).unwrap();
    assert_tokenizer_matches(&tok, "gguf_qwen2_tokenizer_ids.json");
}
