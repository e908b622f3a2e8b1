//! The sweep binaries (`ablate`, `patch`) as a user meets them: an interrupted sweep resumes to
//! a byte-identical table, shards merge to the unsharded table, and bad input is a clear error
//! that leaves nothing half-written.

use std::path::Path;
use std::process::Command;

mod common;
use common::{ok, run};

const ABLATE: &str = env!("CARGO_BIN_EXE_ablate");
const PATCH: &str = env!("CARGO_BIN_EXE_patch");

/// Every interventions of the embedded model in small batches: many progress-log lines.
const SWEEP: &[&str] = &[
    "--ablation",
    "zero,mean,resample",
    "--metric",
    "logit-diff,loss,prob",
    "--tokens-per-pass",
    "60",
];

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn an_interrupted_sweep_resumes_to_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    ok(ABLATE, &[&["--run", "full"], SWEEP].concat(), dir.path());
    let full = dir.path().join("outputs/ablate/full");
    let table = read(&full.join("ablate.parquet"));
    let log = String::from_utf8(read(&full.join("progress.jsonl"))).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 6, "{} batches", lines.len());

    // What a kill leaves: the arguments, part of the log with its last line cut short, no
    // table and no manifest.
    let cut = dir.path().join("outputs/ablate/cut");
    std::fs::create_dir_all(&cut).unwrap();
    std::fs::copy(full.join("args.json"), cut.join("args.json")).unwrap();
    let half = lines.len() / 2;
    let torn = &lines[half][..lines[half].len() / 2];
    std::fs::write(
        cut.join("progress.jsonl"),
        format!("{}\n{torn}", lines[..half].join("\n")),
    )
    .unwrap();
    ok(
        ABLATE,
        &[&["--run", "cut", "--resume"], SWEEP].concat(),
        dir.path(),
    );
    assert_eq!(
        read(&cut.join("ablate.parquet")),
        table,
        "resumed table differs"
    );
    let resumed = String::from_utf8(read(&cut.join("progress.jsonl"))).unwrap();
    assert_eq!(resumed.lines().count(), lines.len());

    // A real kill: SIGKILL as soon as the first batch is logged, then resume.
    let killed = dir.path().join("outputs/ablate/killed");
    let mut child = Command::new(ABLATE)
        .args([&["--run", "killed"], SWEEP].concat())
        .current_dir(dir.path())
        .spawn()
        .unwrap();
    let log = killed.join("progress.jsonl");
    while child.try_wait().unwrap().is_none()
        && std::fs::read_to_string(&log).map_or(true, |t| t.lines().count() == 0)
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().ok();
    child.wait().unwrap();
    ok(
        ABLATE,
        &[&["--run", "killed", "--resume"], SWEEP].concat(),
        dir.path(),
    );
    assert_eq!(read(&killed.join("ablate.parquet")), table);

    // Resuming with other arguments is refused, naming the difference, and changes nothing.
    let (code, err) = run(
        ABLATE,
        &["--run", "full", "--resume", "--ablation", "zero"],
        dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--ablation was") && err.contains("other arguments"),
        "{err}"
    );
    assert_eq!(read(&full.join("ablate.parquet")), table);
}

#[test]
fn three_shards_merge_to_the_unsharded_table() {
    let dir = tempfile::tempdir().unwrap();
    ok(
        PATCH,
        &["--run", "whole", "--tokens-per-pass", "60"],
        dir.path(),
    );
    let whole = read(&dir.path().join("outputs/patch/whole/patch.parquet"));
    for i in 0..3 {
        let shard = format!("{i}/3");
        let args = [
            "--run",
            "split",
            "--tokens-per-pass",
            "60",
            "--shard",
            &shard,
        ];
        ok(PATCH, &args, dir.path());
    }
    // Merging before every shard has run is refused; here all three have.
    ok(
        PATCH,
        &["--run", "split", "--tokens-per-pass", "60", "--merge"],
        dir.path(),
    );
    let split = dir.path().join("outputs/patch/split");
    assert_eq!(read(&split.join("patch.parquet")), whole);
    let rows: usize = (0..3)
        .map(|i| {
            let path = split.join(format!("shard={i}/patch.parquet"));
            lab::parquet::read_parquet(&path).unwrap().height()
        })
        .sum();
    let all = lab::parquet::read_parquet(&split.join("patch.parquet")).unwrap();
    // One activation and one attribution row per cell; the shards hold the activation rows.
    let activation = all.height() / 2;
    assert_eq!(rows, activation, "the shards hold every patched cell once");
}

#[test]
fn a_merge_with_a_missing_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    ok(PATCH, &["--run", "s", "--shard", "0/2"], dir.path());
    let (code, err) = run(PATCH, &["--run", "s", "--merge"], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("shard=1") && err.contains("missing"), "{err}");
    assert!(!dir.path().join("outputs/patch/s/patch.parquet").exists());
    let (code, err) = run(PATCH, &["--run", "nothing", "--merge"], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no run") && !err.contains("--resume"), "{err}");
}

/// Fails with exit code 1 or 2 (clap), names every string of `named`, leaves nothing behind.
fn refused(bin: &str, args: &[&str], named: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(bin, args, dir.path());
    assert!(code == 1 || code == 2, "{args:?}: exit {code}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for n in named {
        assert!(err.contains(n), "{args:?}: should name {n:?}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{args:?} left {left:?} behind");
}

#[test]
fn bad_input_is_refused_cleanly() {
    let prompt = |answer: &'static str| {
        vec![
            "--prompt",
            "abc abc ab",
            "--corrupted",
            "abd abd ab",
            "--answer",
            answer,
            "--wrong",
            "d",
        ]
    };
    refused(
        ABLATE,
        &prompt("cd"),
        &["answer \"cd\" is 2 tokens", "exactly one"],
    );
    let mut unequal = prompt("c");
    unequal[3] = "abd abd abd";
    refused(PATCH, &unequal, &["tokens", "equal lengths"]);
    refused(
        ABLATE,
        &["--shard", "3/2", "--run", "x"],
        &["--shard 3/2", "less than COUNT"],
    );
    refused(
        ABLATE,
        &["--unit", "L1X2"],
        &["unknown unit `L1X2`", "L1H2"],
    );
    refused(ABLATE, &["--unit", "L7H0"], &["layer 7", "2 layers"]);
    refused(ABLATE, &["--unit", "L1H9"], &["head 9", "4 heads"]);
    refused(ABLATE, &["--unit", "MLP0"], &["attention-only"]);
    refused(ABLATE, &["--shard", "0/2"], &["--run"]);
}

/// A tampered progress log (an out-of-range job, garbage or random bytes in the middle) is an
/// error naming the file and the line, never a panic; random bytes at the end are a torn last
/// line, dropped with a note, and the resumed table is the full one.
#[test]
fn a_damaged_progress_log_is_an_error_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    ok(ABLATE, &[&["--run", "full"], SWEEP].concat(), dir.path());
    let full = dir.path().join("outputs/ablate/full");
    let table = read(&full.join("ablate.parquet"));
    let log = String::from_utf8(read(&full.join("progress.jsonl"))).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let job = first["values"][0][0].to_string();
    let out_of_range = lines[0].replacen(&format!("[[{job},"), "[[999999,", 1);
    assert_ne!(out_of_range, lines[0]);
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "line 1",
            format!("{out_of_range}\n{}\n", lines[1]).into_bytes(),
        ),
        (
            "line 2",
            format!("{}\n{{\"sweep\":\n{}\n", lines[0], lines[1]).into_bytes(),
        ),
        (
            "line 2",
            [
                lines[0].as_bytes(),
                b"\n\xff\x00\x9c\n",
                lines[1].as_bytes(),
                b"\n",
            ]
            .concat(),
        ),
    ];
    for (i, (line, text)) in cases.iter().enumerate() {
        let run_name = format!("bad{i}");
        let bad = dir.path().join("outputs/ablate").join(&run_name);
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::copy(full.join("args.json"), bad.join("args.json")).unwrap();
        std::fs::write(bad.join("progress.jsonl"), text).unwrap();
        let (code, err) = run(
            ABLATE,
            &[&["--run", run_name.as_str(), "--resume"], SWEEP].concat(),
            dir.path(),
        );
        assert_eq!(code, 1, "case {i}: {err}");
        assert!(!err.contains("panicked"), "case {i}: {err}");
        assert!(
            err.contains("progress.jsonl") && err.contains(line),
            "case {i}: {err}"
        );
        assert!(!bad.join("ablate.parquet").exists());
    }
    // Random bytes after the last good line: a torn line, dropped.
    let torn = dir.path().join("outputs/ablate/torn");
    std::fs::create_dir_all(&torn).unwrap();
    std::fs::copy(full.join("args.json"), torn.join("args.json")).unwrap();
    let text = [lines[0].as_bytes(), b"\n\x13\xf0garbage"].concat();
    std::fs::write(torn.join("progress.jsonl"), text).unwrap();
    let (code, err) = run(
        ABLATE,
        &[&["--run", "torn", "--resume"], SWEEP].concat(),
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("dropped its last line 2"), "{err}");
    assert_eq!(read(&torn.join("ablate.parquet")), table);
}

/// A unit, kind or metric listed twice is computed and written once, with a note.
#[test]
fn repeated_units_kinds_and_metrics_are_merged() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--run",
        "dup",
        "--unit",
        "L0H1,L0H1",
        "--ablation",
        "zero,zero",
        "--metric",
        "loss,loss",
    ];
    let (code, err) = run(ABLATE, &args, dir.path());
    assert_eq!(code, 0, "{err}");
    // Named as the command line writes them.
    for note in [
        "--unit lists L0H1 more than once",
        "--ablation lists zero more than once",
        "--metric lists loss more than once",
    ] {
        assert!(err.contains(note), "{err}");
    }
    let table = dir.path().join("outputs/ablate/dup/ablate.parquet");
    let rows = lab::parquet::read_parquet(&table).unwrap().height();
    assert_eq!(rows, 1);
}

/// Pairs "abc xyz abc xyz abc x" / "abc xbz abc xbz abc x" of seeded three-letter words as a
/// .tsv: one-byte answers, which the random GPT-2 with a bytes tokenizer reads as one token.
/// Pair i is the same in every file.
fn write_pairs(path: &Path, pairs: std::ops::Range<u64>) {
    let word = |x: u64| -> Vec<u8> { (0..3).map(|i| b'a' + ((x >> (5 * i)) % 26) as u8).collect() };
    let mut tsv = String::from("clean\tcorrupted\tanswer\twrong\n");
    for i in pairs {
        let x = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let (a, b) = (word(x), word(x >> 20));
        let mut c = b.clone();
        c[1] = b'a' + (b[1] - b'a' + 1) % 26;
        let s = |v: &[u8]| String::from_utf8(v.to_vec()).unwrap();
        let prompt = |w: &[u8]| format!("{0} {1} {0} {1} {0} {2}", s(&a), s(w), s(&w[..1]));
        tsv += &format!(
            "{}\t{}\t{}\t{}\n",
            prompt(&b),
            prompt(&c),
            s(&b[1..2]),
            s(&c[1..2])
        );
    }
    std::fs::write(path, tsv).unwrap();
}

/// A column of a run's table, as f32.
fn column(table: &Path, name: &str) -> Vec<f32> {
    let df = lab::parquet::read_parquet(table).unwrap();
    let col = df.column(name).unwrap().f32().unwrap().clone();
    col.into_no_null_iter().collect()
}

#[test]
fn a_sweep_over_ten_passes_of_prompts_holds_no_more_memory_and_equals_its_halves() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::gpt2_random_with_bytes_tokenizer(dir.path());
    let model = model.to_str().unwrap();
    // 22 tokens a prompt (with BOS): 11 prompts to a pass of 256 tokens.
    for (name, pairs) in [
        ("small", 0..11),
        ("big", 0..110),
        ("a", 0..40),
        ("b", 40..110),
    ] {
        write_pairs(&dir.path().join(format!("{name}.tsv")), pairs);
    }
    for (bin, table, extra) in [
        (
            ABLATE,
            "ablate",
            &["--units", "heads", "--metric", "logit-diff"][..],
        ),
        (PATCH, "patch", &["--grids", "resid_pre"][..]),
    ] {
        let run = |name: &str| -> std::path::PathBuf {
            let pairs = format!("{name}.tsv");
            let args = ["--model", model, "--pairs", &pairs, "--run", name];
            let tpp = ["--tokens-per-pass", "256"];
            ok(bin, &[&args[..], extra, &tpp].concat(), dir.path());
            dir.path().join("outputs").join(table).join(name)
        };
        let (small, big) = (run("small"), run("big"));
        let peak = |run: &Path| -> f64 {
            let m: serde_json::Value =
                serde_json::from_slice(&read(&run.join("manifest.json"))).unwrap();
            m["peak_memory_mb"].as_f64().unwrap()
        };
        // Unchunked, the 110 prompts' logits alone would be 486 MB.
        let (small_mb, big_mb) = (peak(&small), peak(&big));
        assert!(small_mb > 1.0, "{small_mb} MB");
        eprintln!("{table}: peak {small_mb:.1} MB over 11 prompts, {big_mb:.1} MB over 110");
        assert!(
            big_mb < 1.25 * small_mb + 8.0,
            "{table}: 110 prompts peak at {big_mb:.0} MB, 11 at {small_mb:.0} MB"
        );
        // The whole equals its parts (40 and 70 prompts) weighted by their sizes.
        let file = format!("{table}.parquet");
        let value = if table == "ablate" { "ablated" } else { "raw" };
        let whole = column(&big.join(&file), value);
        let (a, b) = (run("a"), run("b"));
        let (a, b) = (column(&a.join(&file), value), column(&b.join(&file), value));
        assert_eq!(whole.len(), a.len());
        for (i, w) in whole.iter().enumerate() {
            let parts = (40.0 * a[i] + 70.0 * b[i]) / 110.0;
            assert!(
                (w - parts).abs() <= 1e-4 * w.abs().max(1.0),
                "{table} row {i}: {w} vs {parts}"
            );
        }
    }
}
