//! The binaries as a user meets them: every meaningless parameter is refused with a message that
//! names it and its valid range, failed runs leave nothing on disk, a closed pipe ends quietly,
//! and the cache file carries the tokens.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

mod common;

/// Runs binary `bin` with `args` in `dir`; returns (exit code, stdout, stderr).
fn run(bin: &str, args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Asserts that `args` fail cleanly (exit code 1 or clap's 2, never a panic's 101), that the
/// message names every string in `named`, and that the working folder stays empty.
fn refused(bin: &str, args: &[&str], named: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(bin, args, dir.path());
    assert!(
        code == 1 || code == 2,
        "{args:?}: exit code {code}, stderr {err}"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for n in named {
        assert!(
            err.contains(n),
            "{args:?}: the message should name {n:?}: {err}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{args:?} left {left:?} behind");
}

const HOOKLENS: &str = env!("CARGO_BIN_EXE_hooklens");
const INDUCTION: &str = env!("CARGO_BIN_EXE_induction_heads");
const TRAIN: &str = env!("CARGO_BIN_EXE_train_embedded");

#[test]
fn generate_refuses_meaningless_sampling_parameters() {
    let g = |extra: &[&'static str]| [&["generate", "--prompt", "abc"][..], extra].concat();
    refused(
        HOOKLENS,
        &g(&["--temperature", "-1"]),
        &["--temperature -1", ">= 0"],
    );
    refused(
        HOOKLENS,
        &g(&["--temperature", "NaN"]),
        &["--temperature NaN"],
    );
    refused(
        HOOKLENS,
        &g(&["--temperature", "1", "--top-p", "0"]),
        &["--top-p 0", "(0, 1]"],
    );
    refused(
        HOOKLENS,
        &g(&["--temperature", "1", "--top-p", "1.5"]),
        &["--top-p 1.5"],
    );
    refused(
        HOOKLENS,
        &g(&["--temperature", "1", "--top-k", "0"]),
        &["--top-k 0", "1..=257"],
    );
    refused(
        HOOKLENS,
        &g(&["--temperature", "1", "--top-k", "1000"]),
        &["--top-k 1000", "1..=257"],
    );
    refused(
        HOOKLENS,
        &g(&["--top-k", "5"]),
        &["--top-k", "--temperature"],
    );
    refused(HOOKLENS, &g(&["--seed", "3"]), &["--seed", "--temperature"]);
    // The context overflow blames --max-new-tokens, not the prompt.
    refused(
        HOOKLENS,
        &g(&["--max-new-tokens", "1000000"]),
        &["--max-new-tokens 1000000", "at most 124"],
    );
    refused(
        HOOKLENS,
        &g(&["--max-new-tokens", "0"]),
        &["--max-new-tokens 0"],
    );
}

#[test]
fn run_refuses_bad_flags() {
    let r = |extra: &[&'static str]| [&["run", "--prompt", "abc"][..], extra].concat();
    refused(
        HOOKLENS,
        &r(&["--top-k", "1000"]),
        &["--top-k 1000", "1..=257"],
    );
    refused(HOOKLENS, &r(&["--top-k", "0"]), &["--top-k"]);
    refused(
        HOOKLENS,
        &r(&["--prepend-bos", "--no-prepend-bos"]),
        &["--prepend-bos", "--no-prepend-bos"],
    );
    refused(HOOKLENS, &["run"], &["--prompt"]);
    refused(HOOKLENS, &r(&["--model", "./nowhere"]), &["nowhere"]);
}

#[test]
fn induction_refuses_bad_ranges_and_run_names_and_leaves_nothing() {
    let i = |extra: &[&'static str]| [&["--outputs", "out"][..], extra].concat();
    refused(
        INDUCTION,
        &i(&["--token-min", "300"]),
        &["--token-min 300", "0..257"],
    );
    refused(
        INDUCTION,
        &i(&["--token-max", "1000"]),
        &["--token-max 1000", "257"],
    );
    refused(
        INDUCTION,
        &i(&["--token-min", "60", "--token-max", "50"]),
        &["--token-max 50", "--token-min 60"],
    );
    refused(
        INDUCTION,
        &i(&["--half", "100"]),
        &["--half 100", "--half 63"],
    );
    refused(INDUCTION, &i(&["--half", "0"]), &["--half"]);
    refused(INDUCTION, &i(&["--batch", "0"]), &["--batch"]);
    refused(
        INDUCTION,
        &i(&["--run", "../../x"]),
        &["--run", "plain folder name"],
    );
    refused(
        INDUCTION,
        &i(&["--run", "r", "--resume"]),
        &["--resume", "no run"],
    );
}

#[test]
fn train_embedded_refuses_bad_settings_and_never_overwrites_by_default() {
    refused(TRAIN, &["--lr", "0"], &["--lr 0"]);
    refused(TRAIN, &["--steps", "0"], &["--steps"]);
    refused(
        TRAIN,
        &["--long-seq-len", "500"],
        &["--long-seq-len", "500", "7..=128"],
    );
    refused(TRAIN, &["--seq-len", "3"], &["--seq-len", "7..=128"]);
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("model.safetensors"), b"keep").unwrap();
    let (code, _, err) = run(TRAIN, &["--out", "m"], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        std::fs::read(model.join("model.safetensors")).unwrap(),
        b"keep"
    );
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let mut child = Command::new(HOOKLENS)
        .args(["hooks"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: the rest of the output meets a closed pipe.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(first.contains("hook points"), "{first}");
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_successful_run_completes_its_folder_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(INDUCTION, &["--outputs", "out", "--run", "a"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("best induction head: L1H2"), "{out}");
    let run_dir = dir.path().join("out/induction_heads/a");
    assert!(run_dir.join("manifest.json").is_file());
    let (code, _, err) = run(INDUCTION, &["--outputs", "out", "--run", "a"], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("already exists") && err.contains("--resume"),
        "{err}"
    );
}

#[test]
fn a_run_folder_has_one_writer_and_a_stale_lock_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("out/induction_heads");
    std::fs::create_dir_all(&runs).unwrap();
    // Held by a live process (this test's): refused, naming it; the lock stays.
    let lock = runs.join(".b.lock");
    std::fs::write(&lock, std::process::id().to_string()).unwrap();
    let (code, _, err) = run(INDUCTION, &["--outputs", "out", "--run", "b"], dir.path());
    assert_eq!(code, 1, "{err}");
    let pid = std::process::id().to_string();
    assert!(
        err.contains("being written by process") && err.contains(&pid),
        "{err}"
    );
    assert!(lock.is_file() && !runs.join("b").exists());
    // Left by a process that is gone: taken over with a note, and removed when done.
    std::fs::write(&lock, "4000000000").unwrap();
    let (code, _, err) = run(INDUCTION, &["--outputs", "out", "--run", "b"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stale lock"), "{err}");
    assert!(!lock.exists() && runs.join("b/manifest.json").is_file());
}

#[test]
fn a_byte_order_mark_is_not_read_as_text_and_the_manifest_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plain.txt"), "abcd abcd\n").unwrap();
    std::fs::write(dir.path().join("bom.txt"), "\u{feff}abcd abcd\n").unwrap();
    for (name, file) in [("plain", "plain.txt"), ("bom", "bom.txt")] {
        let args = ["--outputs", "out", "--run", name, "--prompt-file", file];
        let (code, _, err) = run(LENS, &args, dir.path());
        assert_eq!(code, 0, "{err}");
    }
    let runs = dir.path().join("out/logit_lens");
    let table = |run: &str| std::fs::read(runs.join(run).join("lens.parquet")).unwrap();
    assert_eq!(table("plain"), table("bom"));
    let manifest =
        |run: &str| std::fs::read_to_string(runs.join(run).join("manifest.json")).unwrap();
    assert!(manifest("bom").contains("bom_stripped_from"));
    assert!(!manifest("plain").contains("bom_stripped_from"));
}

#[test]
fn the_cache_file_records_tokens_and_real_lengths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.txt"), "abc abc\nab\n").unwrap();
    let args = [
        "cache",
        "--prompt-file",
        "p.txt",
        "--names",
        "hook_z",
        "--out",
        "c.safetensors",
    ];
    let (code, _, err) = run(HOOKLENS, &args, dir.path());
    assert_eq!(code, 0, "{err}");
    let t =
        candle_core::safetensors::load(dir.path().join("c.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let lengths: Vec<u32> = t["lengths"].to_vec1().unwrap();
    assert_eq!(lengths, vec![8, 3], "BOS + the bytes of each line");
    assert_eq!(t["tokens"].dims(), &[2, 8]);
    assert_eq!(t["blocks.1.attn.hook_z"].dims()[..2], [2, 8]);
    // A second run does not overwrite it.
    let (code, _, err) = run(HOOKLENS, &args, dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("--force"), "{err}");
}

const LENS: &str = env!("CARGO_BIN_EXE_logit_lens");
const DLA: &str = env!("CARGO_BIN_EXE_dla");

#[test]
fn lens_and_dla_refuse_bad_input_and_leave_nothing() {
    let o = |extra: &[&'static str]| [&["--outputs", "out"][..], extra].concat();
    refused(
        LENS,
        &o(&["--prompt", "abc", "--target", "xy"]),
        &["--target \"xy\" is 2 tokens"],
    );
    refused(LENS, &o(&["--prompt", ""]), &["empty"]);
    refused(
        LENS,
        &o(&["--prompt", "abc", "--top-k", "300"]),
        &["--top-k 300"],
    );
    refused(
        DLA,
        &o(&["--prompt", "abc", "--answer", "xy", "--wrong", "z"]),
        &["answer \"xy\" is 2 tokens"],
    );
    refused(DLA, &o(&["--prompt", "abc"]), &["--answer", "--wrong"]);
    // An OS error is said once, after the path.
    let dir = tempfile::tempdir().unwrap();
    let (_, _, err) = run(LENS, &["--prompt-file", "nowhere.txt"], dir.path());
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    refused(
        DLA,
        &o(&["--prompt", "abc", "--answer", "c", "--wrong", "c"]),
        &["the same token"],
    );
    refused(
        env!("CARGO_BIN_EXE_ablate"),
        &o(&["--reference", "Cargo.toml", "--ablation", "zero"]),
        &["--reference has no effect"],
    );
    refused(DLA, &o(&["--ioi", "3"]), &["IOI", "single tokens"]);
    refused(
        DLA,
        &o(&["--model", "nowhere.gguf", "--ioi", "2"]),
        &["nowhere.gguf"],
    );
}

#[test]
fn lens_and_dla_write_their_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(LENS, &["--outputs", "out", "--run", "r"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("final_post") && out.contains("rank      0"),
        "{out}"
    );
    for f in [
        "lens.parquet",
        "top_tokens.png",
        "target.png",
        "manifest.json",
    ] {
        assert!(dir.path().join("out/logit_lens/r").join(f).is_file(), "{f}");
    }
    let (code, out, err) = run(DLA, &["--outputs", "out", "--run", "r"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sum of the 11 contributions"), "{out}");
    for f in [
        "dla.parquet",
        "top_components.png",
        "heads.png",
        "manifest.json",
    ] {
        assert!(dir.path().join("out/dla/r").join(f).is_file(), "{f}");
    }
}

#[test]
fn circuits_writes_its_run_and_refuses_bad_flags() {
    const CIRCUITS: &str = env!("CARGO_BIN_EXE_circuits");
    refused(
        CIRCUITS,
        &["--outputs", "out", "--top-singular", "0"],
        &["--top-singular"],
    );
    refused(
        CIRCUITS,
        &["--outputs", "out", "--model", "missing.gguf"],
        &["missing.gguf"],
    );
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(CIRCUITS, &["--outputs", "out", "--run", "r"], dir.path());
    assert_eq!(code, 0, "{err}");
    // The induction circuit: previous-token head L0H1 writes into the induction head's keys.
    assert!(
        out.contains("strongest K-composition: L0H1 -> L1H2"),
        "{out}"
    );
    for f in [
        "heads.parquet",
        "composition.parquet",
        "composition_k.png",
        "copying_scores.png",
        "manifest.json",
    ] {
        assert!(dir.path().join("out/circuits/r").join(f).is_file(), "{f}");
    }
}

#[test]
fn circuits_on_a_one_layer_model_says_there_is_no_composition() {
    const CIRCUITS: &str = env!("CARGO_BIN_EXE_circuits");
    let dir = tempfile::tempdir().unwrap();
    // The random GPT-2 cut to its first layer.
    let model = common::gpt2_random_with_bytes_tokenizer(dir.path());
    let weights = model.join("model.safetensors");
    let cpu = candle_core::Device::Cpu;
    let mut tensors = candle_core::safetensors::load(&weights, &cpu).unwrap();
    tensors.retain(|k, _| !k.starts_with("transformer.h.1.") && !k.starts_with("transformer.h.2."));
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let config = model.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    c["n_layer"] = 1.into();
    std::fs::write(&config, c.to_string()).unwrap();
    let args = ["--model", model.to_str().unwrap(), "--run", "r"];
    let (code, out, err) = run(CIRCUITS, &args, dir.path());
    assert_eq!(code, 0, "{err}");
    for kind in ["Q", "K", "V"] {
        let line = format!("no {kind}-composition: a model of one layer has no later head");
        assert!(out.contains(&line), "{out}");
    }
    assert!(!out.contains("strongest"), "{out}");
}

#[test]
fn hooks_lists_each_family_s_hook_points() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // (family, names it must list, names it must not)
    let cases: [(&str, &[&str], &[&str]); 4] = [
        (
            "neox",
            &["blocks.2.attn.hook_rot_q", "blocks.0.ln2.hook_scale"],
            &["hook_resid_mid", "hook_pos_embed", "mlp.hook_pre_linear"],
        ),
        (
            "gemma2",
            &[
                "blocks.0.ln1_post.hook_scale",
                "blocks.2.ln2_post.hook_normalized",
                "blocks.1.mlp.hook_pre_linear",
            ],
            &["q_norm", "hook_pos_embed"],
        ),
        (
            "qwen3",
            &[
                "blocks.0.attn.q_norm.hook_scale",
                "blocks.1.attn.hook_k_normed",
                "blocks.2.hook_resid_mid",
            ],
            &["ln1_post"],
        ),
        (
            "mistral",
            &["blocks.2.attn.hook_rot_k"],
            &["q_norm", "ln1_post"],
        ),
    ];
    for (family, has, lacks) in cases {
        let dir = root.join("tests/fixtures").join(family);
        let (code, out, err) = run(HOOKLENS, &["hooks", "--model", dir.to_str().unwrap()], root);
        assert_eq!(code, 0, "{family}: {err}");
        for n in has {
            assert!(out.contains(n), "{family}: {n} missing from\n{out}");
        }
        for n in lacks {
            assert!(!out.contains(n), "{family}: {n} listed in\n{out}");
        }
    }
}

#[test]
fn an_unsupported_architecture_is_named_with_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = r#"{"architectures": ["BertForMaskedLM"], "hidden_size": 8}"#;
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    refused(
        HOOKLENS,
        &["hooks", "--model", dir.path().to_str().unwrap()],
        &[
            "BertForMaskedLM",
            "GPTNeoXForCausalLM",
            "Gemma2ForCausalLM",
            "Qwen3ForCausalLM",
        ],
    );
}

#[test]
fn caching_ten_times_the_prompts_holds_no_more_memory() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::gpt2_random_with_bytes_tokenizer(dir.path());
    let prompt = "When Mary and John went to the store,";
    let peak = |n: usize| -> f64 {
        let file = format!("p{n}.txt");
        std::fs::write(dir.path().join(&file), format!("{prompt}\n").repeat(n)).unwrap();
        let out = std::process::Command::new(HOOKLENS)
            .args([
                "cache",
                "--model",
                model.to_str().unwrap(),
                "--prompt-file",
                &file,
            ])
            .args([
                "--names",
                "hook_resid_post|hook_pattern",
                "--tokens-per-pass",
                "400",
            ])
            .args(["--out", &format!("c{n}.safetensors")])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t = candle_core::safetensors::load(
            dir.path().join(format!("c{n}.safetensors")),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert_eq!(t["blocks.1.hook_resid_post"].dim(0).unwrap(), n);
        let mb = text
            .split("peak memory ")
            .nth(1)
            .and_then(|s| s.split(' ').next());
        mb.and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("{text}"))
    };
    // 38 tokens a prompt (bytes and BOS): 10 prompts a pass; 100 prompts' logits alone are 760 MB.
    let (small, big) = (peak(10), peak(100));
    eprintln!("cache: peak {small} MB over 10 prompts, {big} MB over 100");
    assert!(big < 1.25 * small + 8.0, "{big} MB vs {small} MB");
}
