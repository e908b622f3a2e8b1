//! The `capture` binary as a user meets it: the store holds exactly what `hooklens cache`
//! records (f32), rounded as the stored dtype rounds (f16, bf16); a capture killed with
//! SIGKILL resumes to byte-identical shards; `--shard i/n` runs merge into the unsharded store;
//! bad input is a clear error.

use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{ok, run};

const CAPTURE: &str = env!("CARGO_BIN_EXE_capture");
const HOOKLENS: &str = env!("CARGO_BIN_EXE_hooklens");

fn shards(store: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(store.join("shards"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap();
    d.max_all().unwrap().to_scalar().unwrap()
}

/// The tiny corpus ten times over (as paragraphs): enough tokens that a capture takes a while.
fn big_corpus(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(lab::store::TINY_CORPUS).unwrap();
    let path = dir.join("big.txt");
    std::fs::write(&path, [text.as_str(); 10].join("\n\n")).unwrap();
    path
}

#[test]
fn the_store_holds_what_hooklens_cache_records() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hooks = "blocks.0.attn.hook_z,blocks.1.hook_resid_post";
    for dtype in ["f32", "f16", "bf16"] {
        let args = [
            "--run",
            dtype,
            "--store-dtype",
            dtype,
            "--hooks",
            hooks,
            "--shard-tokens",
            "1024",
        ];
        ok(CAPTURE, &args, d);
    }
    let store = hooklens::store::ActivationStore::open(&d.join("outputs/capture/f32")).unwrap();
    assert!(store.spec.shards >= 4, "{} shards", store.spec.shards);
    // Shard 1's contexts as prompts (bytes, BOS added by the model's default) through `hooklens
    // cache`, one batch as the capture ran them.
    let tok = hooklens::Tokenizer::bytes().unwrap();
    let ids = store.column(1, "token_id").unwrap();
    let c = store.spec.context_len;
    let contexts: Vec<&[u32]> = ids.chunks(c).collect();
    let prompts: Vec<String> = contexts
        .iter()
        .map(|r| tok.decode(&r[1..]).unwrap())
        .collect();
    let clean: Vec<usize> = (0..prompts.len())
        .filter(|&i| !prompts[i].contains(['\n', '\r']))
        .collect();
    assert!(
        clean.len() >= 2,
        "contexts without line breaks to pass as prompt lines"
    );
    let file = d.join("prompts.txt");
    let lines: Vec<&str> = clean.iter().map(|&i| prompts[i].as_str()).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let args = [
        "cache",
        "--prompt-file",
        "prompts.txt",
        "--names",
        "hook_z|resid_post",
        "--out",
        "cache.safetensors",
    ];
    ok(HOOKLENS, &args, d);
    let cache = candle_core::safetensors::load(d.join("cache.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(cache["tokens"].dims(), &[clean.len(), c]);
    for (name, width) in [
        ("blocks.0.attn.hook_z", 64),
        ("blocks.1.hook_resid_post", 64),
    ] {
        // [prompts, pos, ...] -> [prompts·pos, width]
        let want = cache[name].reshape((clean.len() * c, width)).unwrap();
        let rows = |store: &hooklens::store::ActivationStore| {
            let x = store
                .read(1, name)
                .unwrap()
                .reshape((contexts.len(), c, width))
                .unwrap();
            let idx = Tensor::new(
                clean.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                &Device::Cpu,
            )
            .unwrap();
            x.index_select(&idx, 0)
                .unwrap()
                .reshape((clean.len() * c, width))
                .unwrap()
        };
        let diff = max_diff(&rows(&store), &want);
        assert_eq!(
            diff, 0.0,
            "{name} f32: the store differs from the cache by {diff}"
        );
        for (dtype, dt) in [("f16", DType::F16), ("bf16", DType::BF16)] {
            let half =
                hooklens::store::ActivationStore::open(&d.join("outputs/capture").join(dtype))
                    .unwrap();
            let rounded = want.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap();
            let diff = max_diff(&rows(&half), &rounded);
            assert_eq!(
                diff, 0.0,
                "{name} {dtype}: not the f32 values rounded to {dtype}"
            );
        }
    }
}

#[test]
fn a_killed_capture_resumes_to_identical_shards_and_shards_merge() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let corpus = big_corpus(d);
    let corpus = corpus.to_str().unwrap();
    let common = [
        "--corpus",
        corpus,
        "--shard-tokens",
        "2048",
        "--hooks",
        "blocks.0.attn.hook_z,blocks.1.hook_resid_post",
    ];
    ok(CAPTURE, &[&common[..], &["--run", "full"]].concat(), d);
    let full = shards(&d.join("outputs/capture/full"));
    assert!(full.len() >= 10, "{} shards", full.len());

    // SIGKILL as soon as the first shard is in place, then --resume.
    let mut child = Command::new(CAPTURE)
        .args([&common[..], &["--run", "killed"]].concat())
        .current_dir(d)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let killed = d.join("outputs/capture/killed");
    let first = killed.join("shards/000000.safetensors");
    let t0 = std::time::Instant::now();
    while !first.exists() {
        assert!(t0.elapsed().as_secs() < 120, "no shard written");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = shards(&killed).len();
    assert!(
        before < full.len(),
        "the capture finished before it was killed; make it longer"
    );
    assert!(!killed.join("manifest.json").exists());
    let (code, err) = run(CAPTURE, &[&common[..], &["--run", "killed"]].concat(), d);
    assert_ne!(code, 0);
    assert!(
        err.contains("incomplete") && err.contains("--resume"),
        "{err}"
    );
    ok(
        CAPTURE,
        &[&common[..], &["--run", "killed", "--resume"]].concat(),
        d,
    );
    assert!(
        shards(&killed) == full,
        "resumed shards differ from the uninterrupted run's"
    );

    // Three array jobs, merged.
    for i in 0..3 {
        ok(
            CAPTURE,
            &[
                &common[..],
                &["--run", "sharded", "--shard", &format!("{i}/3")],
            ]
            .concat(),
            d,
        );
    }
    ok(
        CAPTURE,
        &[&common[..], &["--run", "sharded", "--merge"]].concat(),
        d,
    );
    let merged = d.join("outputs/capture/sharded");
    assert!(
        shards(&merged) == full,
        "merged shards differ from the unsharded run's"
    );
    let spec = |p: &Path| std::fs::read_to_string(p.join("store.json")).unwrap();
    assert_eq!(spec(&merged), spec(&d.join("outputs/capture/full")));
    assert!(merged.join("tokens.parquet").exists() && merged.join("means.safetensors").exists());
    // Resuming with other arguments is refused, naming them.
    let (code, err) = run(
        CAPTURE,
        &[&common[..], &["--run", "full", "--resume", "--seed", "3"]].concat(),
        d,
    );
    assert_ne!(code, 0);
    assert!(err.contains("--seed was 0, now 3"), "{err}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("empty.txt"), "\n\n").unwrap();
    std::fs::write(d.join("bad.txt"), b"fine\n\xff\n").unwrap();
    std::fs::write(
        d.join("docs.jsonl"),
        "{\"text\": \"a\"}\n{\"body\": \"b\"}\n",
    )
    .unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--corpus", "empty.txt"], "empty.txt: holds no text"),
        (&["--corpus", "bad.txt"], "bad.txt line 2: not valid UTF-8"),
        (
            &["--corpus", "docs.jsonl"],
            "docs.jsonl line 2: no string field `text`",
        ),
        (&["--corpus", "missing.txt"], "missing.txt"),
        (
            &["--context-len", "129"],
            "--context-len 129: is longer than the model's context of 128",
        ),
        (
            &["--hooks", "blocks.0.attn.hook_pattern"],
            "no row per token",
        ),
        (
            &["--hooks", "blocks.0.hook_resid_pots"],
            "did you mean blocks.0.hook_resid_post",
        ),
        (
            &["--hooks", "blocks.7.hook_resid_post"],
            "layer 7 is out of range",
        ),
        (&["--tokens", "100000000"], "the corpus has only"),
        (&["--max-memory", "1M"], "--max-memory"),
        (&["--max-memory", "lots"], "is not a size"),
    ];
    for (args, want) in cases {
        let (code, err) = run(CAPTURE, args, d);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(
        !d.join("outputs").exists()
            || std::fs::read_dir(d.join("outputs/capture"))
                .map_or(true, |mut r| r.next().is_none()),
        "failed runs left folders behind"
    );
}

#[test]
fn dashboards_read_a_store_and_check_its_model() {
    const DASHBOARDS: &str = env!("CARGO_BIN_EXE_dashboards");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        CAPTURE,
        &["--run", "s", "--hooks", "blocks.0.hook_resid_post"],
        d,
    );
    let args = [
        "--store",
        "outputs/capture/s",
        "--run",
        "d",
        "--units",
        "0..8,40",
        "--top-k",
        "5",
        "--bins",
        "12",
    ];
    ok(DASHBOARDS, &args, d);
    let out = d.join("outputs/dashboards/d");
    for f in [
        "units.parquet",
        "top_examples.parquet",
        "histograms.parquet",
        "logit_effects.parquet",
        "dashboard.html",
        "manifest.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let units = lab::parquet::read_parquet(&out.join("units.parquet")).unwrap();
    assert_eq!(units.height(), 9);
    let hist = lab::parquet::read_parquet(&out.join("histograms.parquet")).unwrap();
    assert_eq!(hist.height(), 9 * 12);
    let page = std::fs::read_to_string(out.join("dashboard.html")).unwrap();
    // Nothing fetched: no external sources (the SVG namespace URI is a name, not a fetch).
    assert!(
        page.contains("blocks.0.hook_resid_post")
            && !page.contains("src=\"http")
            && !page.contains("fetch(")
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &["--store", "outputs/capture/s", "--units", "0..65"],
            "--units \"0..65\"",
        ),
        (
            &[
                "--store",
                "outputs/capture/s",
                "--hook",
                "blocks.1.hook_resid_post",
            ],
            "does not hold blocks.1.hook_resid_post",
        ),
        (
            &["--store", "outputs/capture/s", "--model", "gpt2-random"],
            "model",
        ),
        (&["--store", "outputs/nothing"], "not an activation store"),
    ];
    for (args, want) in cases {
        let (code, err) = run(DASHBOARDS, args, d);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn the_sae_binary_measures_and_browses_an_sae_over_a_store() {
    const SAE: &str = env!("CARGO_BIN_EXE_sae");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixture = |n: &str| format!("{}/../tests/fixtures/saes/{n}", env!("CARGO_MANIFEST_DIR"));
    ok(
        CAPTURE,
        &["--run", "s", "--hooks", "blocks.0.hook_resid_post"],
        d,
    );
    let args = [
        "--sae",
        &fixture("topk"),
        "--store",
        "outputs/capture/s",
        "--run",
        "t",
        "--features",
        "0..10",
        "--ce-contexts",
        "4",
    ];
    ok(SAE, &args, d);
    let out = d.join("outputs/sae/t");
    let m = lab::parquet::read_parquet(&out.join("metrics.parquet")).unwrap();
    let l0 = m.column("l0").unwrap().f32().unwrap().get(0).unwrap();
    assert!((l0 - 8.0).abs() < 1e-4, "a TopK-8 SAE has L0 8, got {l0}");
    for f in [
        "density.parquet",
        "similar.parquet",
        "units.parquet",
        "top_examples.parquet",
        "logit_effects.parquet",
        "dashboard.html",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert_eq!(
        lab::parquet::read_parquet(&out.join("units.parquet"))
            .unwrap()
            .height(),
        10
    );
    // Neuronpedia's feature JSON: its field names, histogram arrays of one length.
    let np: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("neuronpedia.json")).unwrap())
            .unwrap();
    let features = np["features"].as_array().unwrap();
    assert_eq!(features.len(), 10);
    for f in features {
        for key in [
            "index",
            "maxActApprox",
            "frac_nonzero",
            "pos_str",
            "pos_values",
            "neg_str",
            "neg_values",
            "freq_hist_data_bar_heights",
            "freq_hist_data_bar_values",
            "topkCosSimIndices",
            "topkCosSimValues",
            "activations",
        ] {
            assert!(!f[key].is_null(), "{key} missing");
        }
        let len = |k: &str| f[k].as_array().unwrap().len();
        assert_eq!(
            len("freq_hist_data_bar_heights"),
            len("freq_hist_data_bar_values")
        );
        assert_eq!(
            (len("pos_str"), len("pos_values"), len("neg_str")),
            (10, 10, 10)
        );
        let a = &f["activations"][0];
        let peak = a["maxValueTokenIndex"].as_u64().unwrap() as usize;
        assert_eq!(
            a["values"][peak].as_f64().unwrap() as f32,
            a["maxValue"].as_f64().unwrap() as f32
        );
        assert_eq!(
            a["tokens"].as_array().unwrap().len(),
            a["values"].as_array().unwrap().len()
        );
    }
    // An SAE whose hook the store does not hold.
    ok(
        CAPTURE,
        &["--run", "z", "--hooks", "blocks.1.attn.hook_z"],
        d,
    );
    let (code, err) = run(
        SAE,
        &["--sae", &fixture("topk"), "--store", "outputs/capture/z"],
        d,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("does not hold blocks.0.hook_resid_post"),
        "{err}"
    );
}
