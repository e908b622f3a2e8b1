//! Loading by Hub id from the standard Hugging Face cache layout, offline. (Its own test binary:
//! it sets process-wide environment variables.)

mod common;

use candle_core::{DType, Device, Tensor};
use hooklens::{load_model, Error, Hooks, LoadOptions};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One offline cache for the whole binary (the environment is process-wide).
fn hub() -> &'static Path {
    static HUB: OnceLock<PathBuf> = OnceLock::new();
    HUB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        std::env::set_var("HF_HUB_CACHE", &dir);
        std::env::set_var("HF_HUB_OFFLINE", "1");
        dir
    })
}

/// A snapshot folder for `id`: models--{org}--{name}/refs/main holds the commit;
/// snapshots/{commit}/ holds the files.
fn snapshot(id: &str) -> PathBuf {
    snapshot_at(id, "main", "0123456789abcdef0123456789abcdef01234567")
}

/// The snapshot of branch `revision` at `commit`.
fn snapshot_at(id: &str, revision: &str, commit: &str) -> PathBuf {
    let repo = hub().join(format!("models--{}", id.replace('/', "--")));
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join(revision), commit).unwrap();
    snap
}

#[test]
fn hub_id_resolves_from_the_offline_cache() {
    let snap = snapshot("hooklens/gpt2-random");
    let fixture = common::gpt2_dir();
    for f in [
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
    ] {
        std::fs::copy(fixture.path().join(f), snap.join(f)).unwrap();
    }

    let (model, tok, _) =
        load_model(Some("hooklens/gpt2-random"), &LoadOptions::default()).unwrap();
    assert_eq!(model.cfg.n_layers, 3);
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);

    // Offline, a model that is not cached is a clear error, not a download attempt.
    let e = load_model(Some("hooklens/not-cached"), &LoadOptions::default())
        .err()
        .unwrap();
    assert!(
        matches!(e, Error::Hub(_)) && e.to_string().contains("HF_HUB_OFFLINE"),
        "{e}"
    );
}

/// The family fixtures as the Hub ships such models: the config fields the real checkpoints
/// use (written before transformers 5: `rotary_pct`, `rope_theta`, no `layer_types`, ...),
/// buffers left in old checkpoints, weights in shards with an index. Each must load by id to the
/// same config and logits as the fixture written by transformers 5.
#[test]
fn family_checkpoints_load_by_id_as_the_hub_lays_them_out() {
    let fixture_cfg = |family: &str| -> serde_json::Value {
        let p = common::root()
            .join("tests/fixtures")
            .join(family)
            .join("config.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let dims = |c: &serde_json::Value| {
        json!({
            "hidden_size": c["hidden_size"], "intermediate_size": c["intermediate_size"],
            "num_hidden_layers": c["num_hidden_layers"], "num_attention_heads": c["num_attention_heads"],
            "max_position_embeddings": c["max_position_embeddings"], "vocab_size": c["vocab_size"],
            "bos_token_id": 0, "eos_token_id": 0,
        })
    };
    let merge = |mut a: serde_json::Value, b: serde_json::Value| {
        for (k, v) in b.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    };
    // (family, Hub id, config as the Hub has it, shards, extra buffers)
    let neox = fixture_cfg("neox");
    let gemma = fixture_cfg("gemma2");
    let qwen2 = fixture_cfg("qwen2");
    let qwen3 = fixture_cfg("qwen3");
    let mistral = fixture_cfg("mistral");
    let cases = [
        (
            "neox",
            "EleutherAI/pythia-70m",
            merge(
                dims(&neox),
                json!({
                    "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
                    "hidden_act": "gelu", "layer_norm_eps": 1e-5, "rotary_emb_base": 500,
                    "rotary_pct": 0.25, "tie_word_embeddings": false, "torch_dtype": "float16",
                    "transformers_version": "4.24.0", "use_cache": true, "use_parallel_residual": true,
                }),
            ),
            1,
            true,
        ),
        (
            "gemma2",
            "google/gemma-2-2b",
            merge(
                dims(&gemma),
                json!({
                    "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
                    "attention_bias": false, "attn_logit_softcapping": 5.0,
                    "cache_implementation": "hybrid", "final_logit_softcapping": 5.0, "head_dim": 16,
                    "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
                    "num_key_value_heads": 2, "pad_token_id": 0, "query_pre_attn_scalar": 24,
                    "rms_norm_eps": 1e-6, "rope_theta": 1000.0, "sliding_window": 5,
                    "torch_dtype": "float32", "transformers_version": "4.42.4",
                }),
            ),
            3,
            false,
        ),
        (
            "qwen2",
            "Qwen/Qwen2.5-0.5B",
            merge(
                dims(&qwen2),
                json!({
                    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                    "hidden_act": "silu", "max_window_layers": 24, "num_key_value_heads": 2,
                    "rms_norm_eps": 1e-6, "rope_theta": 1000.0, "sliding_window": 32768,
                    "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_mrope": false,
                    "use_sliding_window": false,
                }),
            ),
            2,
            false,
        ),
        (
            "qwen3",
            "Qwen/Qwen3-0.6B",
            merge(
                dims(&qwen3),
                json!({
                    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                    "attention_bias": false, "head_dim": 16, "hidden_act": "silu",
                    "max_window_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
                    "rope_scaling": null, "rope_theta": 1000, "sliding_window": null,
                    "tie_word_embeddings": true, "use_sliding_window": false,
                }),
            ),
            1,
            false,
        ),
        (
            "mistral",
            "mistralai/Mistral-7B-v0.1",
            merge(
                dims(&mistral),
                json!({
                    "architectures": ["MistralForCausalLM"], "model_type": "mistral",
                    "hidden_act": "silu", "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
                    "rope_theta": 1000.0, "sliding_window": 5, "tie_word_embeddings": false,
                    "torch_dtype": "bfloat16",
                }),
            ),
            2,
            false,
        ),
    ];
    for (family, id, config, shards, buffers) in cases {
        let fix = common::root().join("tests/fixtures").join(family);
        let snap = snapshot(id);
        std::fs::write(snap.join("config.json"), config.to_string()).unwrap();
        std::fs::copy(fix.join("tokenizer.json"), snap.join("tokenizer.json")).unwrap();
        let mut all =
            candle_core::safetensors::load(fix.join("model.safetensors"), &Device::Cpu).unwrap();
        if buffers {
            // Pythia's older checkpoints carry the causal mask and rotary frequencies.
            for l in 0..3 {
                let p = format!("gpt_neox.layers.{l}.attention.");
                let mask = Tensor::ones((1, 1, 8, 8), DType::U8, &Device::Cpu).unwrap();
                all.insert(format!("{p}bias"), mask);
                all.insert(
                    format!("{p}masked_bias"),
                    Tensor::new(-1e9f32, &Device::Cpu).unwrap(),
                );
                all.insert(
                    format!("{p}rotary_emb.inv_freq"),
                    Tensor::ones(2, DType::F32, &Device::Cpu).unwrap(),
                );
            }
        }
        write_shards(&snap, all, shards);

        let opts = LoadOptions::default();
        let (by_id, _, _) = load_model(Some(id), &opts).unwrap();
        let (direct, tok, _) = load_model(Some(fix.to_str().unwrap()), &opts).unwrap();
        let mut want = direct.cfg.clone();
        // transformers 5 writes ids it does not know as null; the Hub configs have them.
        want.bos_token_id = by_id.cfg.bos_token_id;
        want.eos_token_id = by_id.cfg.eos_token_id;
        assert_eq!(by_id.cfg, want, "{id}: config differs from the fixture's");
        let t = tok
            .to_tokens(
                &["A prompt longer than any sliding window here."],
                true,
                &Device::Cpu,
            )
            .unwrap();
        let a = by_id.forward(&t, &mut Hooks::none()).unwrap();
        let b = direct.forward(&t, &mut Hooks::none()).unwrap();
        assert!(common::max_abs_diff(&a, &b) < 1e-6, "{id}: logits differ");
    }
}

/// Pythia's training checkpoints are branches of one repo: `id@step3000` loads that branch.
#[test]
fn a_revision_after_the_id_loads_that_branch() {
    let id = "EleutherAI/pythia-14m";
    let fix = common::root().join("tests/fixtures/neox");
    let all = candle_core::safetensors::load(fix.join("model.safetensors"), &Device::Cpu).unwrap();
    // main: the fixture; step3000: every weight halved.
    let halved: HashMap<String, Tensor> = all
        .iter()
        .map(|(k, t)| (k.clone(), (t * 0.5).unwrap()))
        .collect();
    for (rev, commit, tensors) in [
        ("main", "1111111111111111111111111111111111111111", all),
        (
            "step3000",
            "2222222222222222222222222222222222222222",
            halved,
        ),
    ] {
        let snap = snapshot_at(id, rev, commit);
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(fix.join(f), snap.join(f)).unwrap();
        }
        write_shards(&snap, tensors, 1);
    }
    let opts = LoadOptions::default();
    let (main, tok, _) = load_model(Some(id), &opts).unwrap();
    let (step, _, _) = load_model(Some(&format!("{id}@step3000")), &opts).unwrap();
    let t = tok
        .to_tokens(&["def add(a, b)"], true, &Device::Cpu)
        .unwrap();
    let embed = |m: &hooklens::HookedTransformer| m.w_e.clone();
    let d = common::max_abs_diff(&(embed(&main) * 0.5).unwrap(), &embed(&step));
    assert!(d < 1e-7, "step3000 is the halved checkpoint");
    let a = main.forward(&t, &mut Hooks::none()).unwrap();
    let b = step.forward(&t, &mut Hooks::none()).unwrap();
    assert!(common::max_abs_diff(&a, &b) > 1e-2, "the branches differ");
    for bad in [format!("{id}@step9"), format!("{id}@"), "@main".to_string()] {
        let e = load_model(Some(&bad), &opts).err().unwrap().to_string();
        assert!(e.contains(&bad) || e.contains("revision"), "{bad}: {e}");
    }
}

/// Writes `tensors` into `n` shards with an index (one `model.safetensors` when `n` is 1).
fn write_shards(dir: &Path, tensors: HashMap<String, Tensor>, n: usize) {
    if n == 1 {
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        return;
    }
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len().div_ceil(n)).enumerate() {
        let shard = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        let part: HashMap<_, _> = chunk
            .iter()
            .map(|&k| (k.clone(), tensors[k].clone()))
            .collect();
        candle_core::safetensors::save(&part, dir.join(&shard)).unwrap();
        for &k in chunk {
            weight_map.insert(k.clone(), shard.clone().into());
        }
    }
    let index = json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}
