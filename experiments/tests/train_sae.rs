//! The `train_sae` binary as a user meets it: trains on a store into a SAELens folder that the
//! `sae` binary measures; a run killed with SIGKILL resumes to byte-identical weights and the
//! same loss table; on the fly from the model; bad input is a clear error.

use std::path::Path;
use std::process::Command;

mod common;
use common::{gpt2_random_with_bytes_tokenizer, ok, run};

const CAPTURE: &str = env!("CARGO_BIN_EXE_capture");
const TRAIN: &str = env!("CARGO_BIN_EXE_train_sae");
const SAE: &str = env!("CARGO_BIN_EXE_sae");

fn weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("sae/sae_weights.safetensors")).unwrap()
}

#[test]
fn train_sae_trains_resumes_to_the_same_weights_and_feeds_the_sae_binary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        CAPTURE,
        &["--run", "s", "--hooks", "blocks.1.hook_resid_post"],
        d,
    );
    let common = [
        "--store",
        "outputs/capture/s",
        "--expansion-factor",
        "2",
        "--k",
        "8",
        "--batch",
        "64",
        "--train-tokens",
        "64000",
        "--checkpoint-every",
        "25",
        "--dead-steps",
        "30",
    ];
    ok(TRAIN, &[&common[..], &["--run", "full"]].concat(), d);
    let full = d.join("outputs/train_sae/full");
    let losses = |run: &Path| lab::parquet::read_parquet(&run.join("losses.parquet")).unwrap();
    let table = losses(&full);
    assert_eq!(table.height(), 1000, "64000 tokens in steps of 64");
    let ev = table.column("explained_variance").unwrap().f64().unwrap();
    assert!(ev.get(999).unwrap() > 0.9, "{:?}", ev.get(999));
    assert!(full.join("losses.png").is_file());

    // SIGKILL after the first checkpoint, then --resume.
    let mut child = Command::new(TRAIN)
        .args([&common[..], &["--run", "killed"]].concat())
        .current_dir(d)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let killed = d.join("outputs/train_sae/killed");
    let t0 = std::time::Instant::now();
    while !killed.join("checkpoint.safetensors").exists() {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint written");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !killed.join("manifest.json").exists(),
        "the run finished before it was killed; make it longer"
    );
    ok(
        TRAIN,
        &[&common[..], &["--run", "killed", "--resume"]].concat(),
        d,
    );
    assert!(weights(&killed) == weights(&full), "resumed weights differ");
    assert_eq!(losses(&killed), table);
    // Resuming with other arguments is refused, naming them.
    let (code, err) = run(
        TRAIN,
        &[
            &common[..],
            &["--run", "full", "--resume", "--aux-coefficient", "0.5"],
        ]
        .concat(),
        d,
    );
    assert_ne!(code, 0);
    assert!(err.contains("--aux-coefficient was 1.0, now 0.5"), "{err}");

    // The saved folder is an SAE the sae binary measures on the same store.
    ok(
        SAE,
        &[
            "--sae",
            "outputs/train_sae/full/sae",
            "--store",
            "outputs/capture/s",
            "--run",
            "m",
        ],
        d,
    );
    let m = lab::parquet::read_parquet(&d.join("outputs/sae/m/metrics.parquet")).unwrap();
    let ev = m
        .column("explained_variance")
        .unwrap()
        .f32()
        .unwrap()
        .get(0)
        .unwrap();
    assert!(ev > 0.9, "explained variance over the store {ev}");
}

#[test]
fn train_sae_runs_on_the_fly_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fly = [
        "--hook",
        "blocks.1.hook_resid_post",
        "--batch",
        "64",
        "--k",
        "4",
    ];
    ok(TRAIN, &[&fly[..], &["--run", "fly"]].concat(), d);
    let sae = hooklens::sae::Sae::load(
        &d.join("outputs/train_sae/fly/sae"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!((sae.d_in, sae.d_sae), (64, 512));
    assert_eq!(sae.hook.to_string(), "blocks.1.hook_resid_post");
    for (args, needle) in [
        (vec!["--run", "a"], "--hook"),
        (
            vec!["--hook", "blocks.9.hook_resid_post", "--run", "b"],
            "layer 9",
        ),
        (
            vec![
                "--hook",
                "blocks.1.hook_resid_post",
                "--batch",
                "100000",
                "--run",
                "c",
            ],
            "--batch",
        ),
        (vec!["--store", "nowhere", "--run", "d"], "nowhere"),
        (
            vec![
                "--hook",
                "blocks.1.hook_resid_post",
                "--max-memory",
                "1M",
                "--run",
                "e",
            ],
            "--max-memory",
        ),
    ] {
        let (code, err) = run(TRAIN, &args, d);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Transcoders of a random GPT-2's first MLP (its input to its output), trained on a store:
/// each architecture SAELens saves, with and without a skip, loads as a transcoder that the
/// `sae` binary measures; flags of another architecture are refused.
#[test]
fn train_sae_trains_transcoders_and_refuses_flags_without_effect() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = gpt2_random_with_bytes_tokenizer(d);
    let model = model.to_str().unwrap();
    ok(
        CAPTURE,
        &[
            "--model",
            model,
            "--hooks",
            "blocks.0.ln2.hook_normalized,blocks.0.hook_mlp_out",
            "--context-len",
            "64",
            "--run",
            "s",
        ],
        d,
    );
    let tc = [
        "--store",
        "outputs/capture/s",
        "--hook",
        "blocks.0.ln2.hook_normalized",
        "--hook-out",
        "blocks.0.hook_mlp_out",
        "--batch",
        "64",
        "--expansion-factor",
        "2",
        "--normalize-activations",
    ];
    for (run, extra, architecture) in [
        (
            "bt",
            vec!["--architecture", "batchtopk", "--k", "8"],
            "jumprelu_transcoder",
        ),
        (
            "jr",
            vec![
                "--architecture",
                "jumprelu",
                "--l0-coefficient",
                "0.1",
                "--skip",
            ],
            "jumprelu_skip_transcoder",
        ),
        (
            "re",
            vec!["--architecture", "relu", "--l1-coefficient", "0.5"],
            "transcoder",
        ),
    ] {
        ok(TRAIN, &[&tc[..], &extra, &["--run", run]].concat(), d);
        let folder = d.join("outputs/train_sae").join(run).join("sae");
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("cfg.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["architecture"], architecture, "{run}");
        assert_eq!(cfg["metadata"]["hook_name_out"], "blocks.0.hook_mlp_out");
        let losses = lab::parquet::read_parquet(
            &d.join("outputs/train_sae").join(run).join("losses.parquet"),
        )
        .unwrap();
        let ev = losses.column("explained_variance").unwrap().f64().unwrap();
        let (first, last) = (ev.get(0).unwrap(), ev.get(ev.len() - 1).unwrap());
        assert!(last > first, "{run}: explained variance {first} -> {last}");
        let folder = folder.to_str().unwrap();
        let measured = format!("m{run}");
        ok(
            SAE,
            &[
                "--sae",
                folder,
                "--store",
                "outputs/capture/s",
                "--run",
                &measured,
            ],
            d,
        );
        let m = d
            .join("outputs/sae")
            .join(&measured)
            .join("metrics.parquet");
        let m = lab::parquet::read_parquet(&m).unwrap();
        let ev = m.column("explained_variance").unwrap().f32().unwrap();
        assert!(ev.get(0).unwrap() > 0.0, "{run}: {:?}", ev.get(0));
    }
    for (args, needle) in [
        (
            vec!["--architecture", "relu", "--k", "4"],
            "--k has no effect on --architecture relu",
        ),
        (
            vec!["--l0-coefficient", "1"],
            "--l0-coefficient has no effect on --architecture topk",
        ),
        (vec!["--architecture", "topk"], "TopK transcoder"),
    ] {
        let (code, err) = run(TRAIN, &[&tc[..], &args, &["--run", "x"]].concat(), d);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let (code, err) = run(
        TRAIN,
        &["--hook", "blocks.1.hook_resid_post", "--skip", "--run", "y"],
        d,
    );
    assert_ne!(code, 0);
    assert!(err.contains("skip"), "{err}");
}
