//! A checkpoint with a NaN or an Inf in one weight: every binary exits 1 with a message that
//! names the tensor and the first hook point holding them, never panics or hangs, and writes
//! nothing; `--allow-nonfinite` writes the run anyway, marked in its manifest, and its plots
//! draw.

use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

mod common;
use common::{gpt2_random_with_bytes_tokenizer, run};

/// The random GPT-2 with `value` as one entry of layer 1's MLP input weights.
fn poisoned(dir: &Path, value: f32) -> PathBuf {
    let model = gpt2_random_with_bytes_tokenizer(dir);
    let file = model.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let name = "transformer.h.1.mlp.c_fc.weight";
    let w = &tensors[name];
    let mut v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
    v[5] = value;
    let poisoned = Tensor::from_vec(v, w.dims(), &Device::Cpu).unwrap();
    tensors.insert(name.into(), poisoned);
    candle_core::safetensors::save(&tensors, &file).unwrap();
    model
}

/// Each binary that loads a model, with the arguments of a small run.
fn binaries(model: &str) -> Vec<(&'static str, Vec<String>)> {
    let with = |bin: &'static str, extra: &[&str]| {
        let mut args = vec!["--model".to_string(), model.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        (bin, args)
    };
    vec![
        with(env!("CARGO_BIN_EXE_induction_heads"), &["--half", "20"]),
        with(env!("CARGO_BIN_EXE_logit_lens"), &["--prompt", "abcd"]),
        with(
            env!("CARGO_BIN_EXE_dla"),
            &["--prompt", "abcd", "--answer", "a", "--wrong", "b"],
        ),
        with(
            env!("CARGO_BIN_EXE_ablate"),
            &["--prompt", "abcdabcd", "--answer", "a", "--wrong", "b"],
        ),
        with(env!("CARGO_BIN_EXE_attention"), &["--prompt", "abcd"]),
        with(env!("CARGO_BIN_EXE_circuits"), &[]),
        with(env!("CARGO_BIN_EXE_neurons"), &[]),
        with(env!("CARGO_BIN_EXE_embeddings"), &[]),
        with(env!("CARGO_BIN_EXE_temperature"), &["--prompt", "abcd"]),
    ]
}

#[test]
fn nan_or_inf_weights_are_named_with_their_first_hook_point_and_nothing_is_written() {
    for value in [f32::NAN, f32::INFINITY] {
        let dir = tempfile::tempdir().unwrap();
        let model = poisoned(dir.path(), value);
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        for (bin, args) in binaries(model.to_str().unwrap()) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, err) = run(bin, &args, &work);
            assert_eq!(code, 1, "{bin} {args:?} ({value}): {err}");
            assert!(!err.contains("panicked"), "{bin}: {err}");
            for needle in ["NaN or Inf", "blocks.1.mlp.W_in", "blocks.1.mlp.hook_pre"] {
                assert!(
                    err.contains(needle),
                    "{bin} ({value}) should name {needle}: {err}"
                );
            }
            let left: Vec<_> = std::fs::read_dir(&work).unwrap().collect();
            assert!(left.is_empty(), "{bin} left {left:?}");
        }
    }
}

#[test]
fn allow_nonfinite_writes_the_run_marked_and_its_plots_draw() {
    let dir = tempfile::tempdir().unwrap();
    let model = poisoned(dir.path(), f32::NAN);
    let m = model.to_str().unwrap();
    for (bin, extra, run_dir) in [
        (
            env!("CARGO_BIN_EXE_logit_lens"),
            &["--prompt", "abcd"][..],
            "logit_lens",
        ),
        (
            env!("CARGO_BIN_EXE_induction_heads"),
            &["--half", "20"][..],
            "induction_heads",
        ),
        (
            env!("CARGO_BIN_EXE_ablate"),
            &["--prompt", "abcdabcd", "--answer", "a", "--wrong", "b"][..],
            "ablate",
        ),
    ] {
        let mut args = vec!["--model", m, "--allow-nonfinite", "--run", "nan"];
        args.extend(extra);
        let (code, err) = run(bin, &args, dir.path());
        assert_eq!(code, 0, "{bin} {args:?}: {err}");
        let manifest = dir
            .path()
            .join("outputs")
            .join(run_dir)
            .join("nan/manifest.json");
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
        assert_eq!(manifest["settings"]["allow_nonfinite"], true, "{bin}");
    }
}
