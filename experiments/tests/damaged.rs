//! Every file a binary reads back, damaged: seeded random bytes appended to each file of a
//! finished sweep run and of an activation store, then the binaries that read it run again.
//! Each must either succeed (a torn last line of a progress log is dropped with a note) or
//! exit 1 with a message naming the damaged file; never panic, never hang.

use std::path::Path;

mod common;
use common::{ok, run};

const ABLATE: &str = env!("CARGO_BIN_EXE_ablate");
const CAPTURE: &str = env!("CARGO_BIN_EXE_capture");
const DASHBOARDS: &str = env!("CARGO_BIN_EXE_dashboards");

/// `n` bytes from `seed` (an LCG): any byte value, newlines included.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

#[test]
fn random_bytes_appended_to_any_file_read_back_are_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sweep = [
        "--run",
        "r",
        "--unit",
        "L0H0,L1H1",
        "--tokens-per-pass",
        "60",
    ];
    ok(ABLATE, &sweep, d);
    let hooks = "blocks.0.attn.hook_z,blocks.1.attn.hook_z,blocks.0.hook_resid_post";
    ok(
        CAPTURE,
        &["--run", "s", "--hooks", hooks, "--shard-tokens", "1024"],
        d,
    );
    let store = "outputs/capture/s";
    let resume = [&sweep[..], &["--resume"]].concat();
    let mean = [
        "--reference",
        store,
        "--ablation",
        "mean",
        "--unit",
        "L0H0,L1H1",
        "--run",
    ];
    let units = ["--store", store, "--units", "0..4", "--run"];
    let mut files = vec![
        (
            "outputs/ablate/r/args.json".to_string(),
            vec![(ABLATE, resume.clone())],
        ),
        (
            "outputs/ablate/r/progress.jsonl".into(),
            vec![(ABLATE, resume.clone())],
        ),
    ];
    let mut store_files = vec!["store.json".to_string(), "means.safetensors".into()];
    for e in std::fs::read_dir(d.join(store).join("shards")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        store_files.push(format!("shards/{name}"));
    }
    for f in store_files {
        let readers = vec![(DASHBOARDS, units.to_vec()), (ABLATE, mean.to_vec())];
        files.push((format!("{store}/{f}"), readers));
    }
    let mut runs = 0;
    for (file, readers) in &files {
        let path = d.join(file);
        let original = std::fs::read(&path).unwrap();
        let name = Path::new(file).file_name().unwrap().to_string_lossy();
        for seed in 0..3 {
            let mut damaged = original.clone();
            damaged.extend(noise(seed, 1 + (seed as usize * 29) % 64));
            std::fs::write(&path, &damaged).unwrap();
            let mut detected = false;
            for (bin, args) in readers {
                runs += 1;
                let out = format!("o{runs}");
                let mut args = args.clone();
                if args.last() == Some(&"--run") {
                    args.push(&out);
                }
                let (code, err) = run(bin, &args, d);
                assert!(!err.contains("panicked"), "{file} seed {seed}: {err}");
                assert!(
                    code == 0 || code == 1,
                    "{file} seed {seed}: exit {code}: {err}"
                );
                if code == 1 {
                    assert!(
                        err.contains(&*name),
                        "{file} seed {seed}: should name it: {err}"
                    );
                    detected = true;
                }
            }
            // Only a progress log can lose its damage: a torn last line is dropped.
            assert!(
                detected || name == "progress.jsonl",
                "{file} seed {seed}: the damage went unnoticed"
            );
            std::fs::write(&path, &original).unwrap();
        }
    }
}
