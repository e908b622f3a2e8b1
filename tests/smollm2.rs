//! SmolLM2-135M (llama: RMSNorm, rotary, SwiGLU, grouped-query attention) from its real GGUF
//! weights, against transformers and TransformerLens 4.3 on the same dequantized weights
//! (tests/reference/make_smollm2_reference.py), plus generation behaviour.

mod common;

use candle_core::{Device, IndexOp, Tensor};
use common::*;
use hooklens::generate::{generate, GenerateOptions};
use hooklens::{Error, Hooks, NameFilter};
use std::collections::HashMap;

const PROMPTS: usize = 3;

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        root().join("tests/reference/smollm2_ref.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn check(processed: bool) {
    let (model, _) = smollm2(processed);
    let n = check_reference(model, &reference(), PROMPTS, processed);
    assert!(n >= 28 * PROMPTS, "only {n} activations compared");
}

#[test]
fn unprocessed_matches_transformers_and_transformerlens() {
    check(false);
}

#[test]
fn processed_matches_transformerlens_compatibility_mode() {
    check(true);
}

#[test]
fn tokenizer_ids_match_hugging_face() {
    let (_, tok) = smollm2(true);
    assert_tokenizer_matches(tok, "smollm2_tokenizer_ids.json");
}

#[test]
fn grouped_query_hook_shapes() {
    let (model, tok) = smollm2(true);
    assert_eq!(
        (
            model.cfg.n_heads,
            model.cfg.n_key_value_heads,
            model.cfg.d_head
        ),
        (9, 3, 64)
    );
    let t = tok
        .to_tokens(&["Hello there"], false, model.device())
        .unwrap();
    let (_, cache) = model
        .run_with_cache(&t, NameFilter::regex("blocks\\.0\\.").unwrap())
        .unwrap();
    assert_eq!(
        cache.get_by_name("blocks.0.attn.hook_q").unwrap().dims(),
        &[1, 2, 9, 64]
    );
    assert_eq!(
        cache.get_by_name("blocks.0.attn.hook_k").unwrap().dims(),
        &[1, 2, 3, 64]
    );
    assert_eq!(
        cache
            .get_by_name("blocks.0.attn.hook_rot_k")
            .unwrap()
            .dims(),
        &[1, 2, 3, 64]
    );
    assert_eq!(
        cache
            .get_by_name("blocks.0.attn.hook_pattern")
            .unwrap()
            .dims(),
        &[1, 9, 2, 2]
    );
    assert_eq!(
        cache
            .get_by_name("blocks.0.mlp.hook_pre_linear")
            .unwrap()
            .dims(),
        &[1, 2, 1536]
    );
    assert_eq!(
        cache.get_by_name("blocks.0.mlp.hook_post").unwrap().dims(),
        &[1, 2, 1536]
    );
}

#[test]
fn greedy_generation_matches_transformers_with_and_without_kv_cache() {
    let (model, tok) = smollm2(true);
    check_greedy(model, tok, &reference(), PROMPTS);
}

#[test]
fn behaviour_paris_and_counting() {
    let (model, tok) = smollm2(true);
    let opts = GenerateOptions {
        max_new_tokens: 6,
        ..Default::default()
    };
    let cont = |p: &str| {
        tok.decode(
            &generate(
                model,
                &tok.encode_prompt(p, false).unwrap(),
                &opts,
                &mut Hooks::none(),
            )
            .unwrap(),
        )
        .unwrap()
    };
    assert!(cont("The capital of France is").starts_with(" Paris"));
    assert!(cont("One, two, three, four,").starts_with(" five, six"));
}

#[test]
fn sampling_is_seeded_and_hooks_fire_during_generation() {
    let (model, tok) = smollm2(true);
    let ids = tok.encode_prompt("Once upon a time", false).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 5,
        temperature: 0.9,
        top_k: Some(40),
        top_p: Some(0.9),
        seed: 7,
        ..Default::default()
    };
    let a = generate(model, &ids, &opts, &mut Hooks::none()).unwrap();
    assert_eq!(a, generate(model, &ids, &opts, &mut Hooks::none()).unwrap());
    let mut calls = 0;
    {
        let mut hooks = Hooks::none().add("blocks.3.hook_resid_post".parse().unwrap(), |_, _| {
            calls += 1;
            Ok(None)
        });
        generate(
            model,
            &ids,
            &GenerateOptions {
                max_new_tokens: 4,
                ..Default::default()
            },
            &mut hooks,
        )
        .unwrap();
    }
    assert_eq!(calls, 4, "one forward pass per new token");
}

#[test]
fn bad_gguf_files() {
    let dir = tempfile::tempdir().unwrap();
    // Not a GGUF file at all.
    let p = dir.path().join("fake.gguf");
    std::fs::write(&p, b"this is not a gguf file").unwrap();
    let e = hooklens::load_model(Some(p.to_str().unwrap()), &Default::default())
        .err()
        .unwrap();
    assert!(matches!(e, Error::CorruptFile { .. }), "{e}");
    // The real file cut short: metadata reads, tensors run off the end.
    let bytes = std::fs::read(smollm2_path()).unwrap();
    let p = dir.path().join("truncated.gguf");
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    let e = hooklens::load_model(Some(p.to_str().unwrap()), &Default::default())
        .err()
        .unwrap();
    assert!(matches!(e, Error::CorruptFile { .. }), "{e}");
}

/// A minimal GGUF v3 file: one string metadata entry and one 32-element tensor of `dtype`.
fn tiny_gguf(arch: &str, dtype: u32) -> Vec<u8> {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    };
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes()); // string
    s(&mut b, arch);
    s(&mut b, "token_embd.weight");
    b.extend(1u32.to_le_bytes());
    b.extend(32u64.to_le_bytes());
    b.extend(dtype.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend([0u8; 128]);
    b
}

#[test]
fn unsupported_architecture_and_quantization() {
    let dir = tempfile::tempdir().unwrap();
    let load = |name: &str, bytes: Vec<u8>| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        hooklens::load_model(Some(p.to_str().unwrap()), &Default::default())
            .err()
            .unwrap()
    };
    let e = load("gpt2.gguf", tiny_gguf("gpt2", 0));
    assert!(
        matches!(e, Error::Unsupported(_)) && e.to_string().contains("gpt2"),
        "{e}"
    );
    // Type 20 is llama.cpp's IQ4_NL, which candle cannot dequantize.
    let e = load("iq4.gguf", tiny_gguf("llama", 20));
    assert!(
        matches!(e, Error::Unsupported(_)) && e.to_string().contains("quantization"),
        "{e}"
    );
}

#[test]
fn ioi_pairs_have_single_token_answers_on_smollm2() {
    let (model, tok) = smollm2(true);
    let pairs = hooklens::data::ioi_pairs(tok, 30, 1).unwrap();
    let t =
        hooklens::data::tokenize_pairs(&pairs, tok, model.cfg.default_prepend_bos, "ioi").unwrap();
    assert!(t.iter().all(|p| p.clean.len() == p.corrupted.len()));
    // The model prefers the indirect object on the clean prompts, on average.
    let batch = hooklens::data::PairBatch::new(&t, 0, model.device()).unwrap();
    let logits = model.forward(&batch.clean, &mut Hooks::none()).unwrap();
    let mut diff = 0f32;
    for (i, p) in t.iter().enumerate() {
        let last = logits.i((i, p.clean.len() - 1)).unwrap();
        let l: Vec<f32> = last.to_vec1().unwrap();
        diff += l[p.answer as usize] - l[p.wrong as usize];
    }
    diff /= t.len() as f32;
    eprintln!("SmolLM2 mean IOI logit difference (answer - wrong): {diff:.3}");
    assert!(diff > 0.0, "{diff}");
}
