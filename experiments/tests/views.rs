//! The view experiments (`attention`, `temperature`, `embeddings`): PNGs, the self-contained page and their
//! tables; bad input refused without leaving anything behind. (The page in a real browser: scripts/browser_test.py, run by
//! CI.)

use std::path::Path;
use std::process::Command;

const ATTENTION: &str = env!("CARGO_BIN_EXE_attention");

fn run(args: &[&str], dir: &Path) -> (i32, String) {
    run_bin(ATTENTION, args, dir)
}

/// Runs binary `bin` with `args` in `dir`: (exit code, stderr).
fn run_bin(bin: &str, args: &[&str], dir: &Path) -> (i32, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn attention_writes_pngs_a_page_and_the_patterns() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(
        &["--run", "a", "--heads", "L1H2,0.1", "--prompt", "abcab"],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let run = dir.path().join("outputs/attention/a");
    for f in [
        "pattern_L1H2.png",
        "pattern_L0H1.png",
        "heads_grid.png",
        "attention.html",
        "manifest.json",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    // Both layers' heads (4 each) on BOS + 5 tokens, keys up to the query.
    let df = lab::parquet::read_parquet(&run.join("patterns.parquet")).unwrap();
    assert_eq!(df.height(), 8 * 6 * 7 / 2);
    let page = std::fs::read_to_string(run.join("attention.html")).unwrap();
    assert!(
        !page.contains("http") && !page.contains("src="),
        "nothing fetched"
    );
}

#[test]
fn bad_input_is_refused() {
    for (args, named) in [
        (&["--heads", "L1H9"][..], "head 9"),
        (&["--heads", "L5H0"][..], "layer 5"),
        (&["--heads", "x"][..], "L<layer>H<head>"),
        (&["--prompt", "  "][..], "empty"),
        (&["--layers", "7"][..], "layer 7"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (code, err) = run(args, dir.path());
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(named), "{args:?} should name {named}: {err}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "{args:?} left files"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.txt"), "\n\n").unwrap();
    let (code, err) = run(&["--prompt-file", "empty.txt"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn a_prompt_longer_than_the_context_and_an_unknown_detector_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let long = "ab".repeat(200); // the embedded model's context is 128 tokens
    let (code, err) = run(&["--prompt", &long, "--heads", "L0H0"], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("context is 128"), "{err}");
    let (code, err) = run(&["--top", "2", "--by", "copying"], dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("copying") && err.contains("induction"),
        "{err}"
    );
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn temperature_writes_its_table_and_refuses_nonpositive_temperatures() {
    const TEMPERATURE: &str = env!("CARGO_BIN_EXE_temperature");
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run_bin(
        TEMPERATURE,
        &["--run", "t", "--temperatures", "0.5,2", "--top", "4"],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let run = dir.path().join("outputs/temperature/t");
    let df = lab::parquet::read_parquet(&run.join("temperature.parquet")).unwrap();
    assert_eq!(df.height(), 8);
    assert!(run.join("temperature.png").is_file());
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run_bin(TEMPERATURE, &["--temperatures", "1,0"], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("temperature 0") && err.contains("positive"),
        "{err}"
    );
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn embeddings_write_their_tables_and_refuse_tokens_that_split() {
    const EMBEDDINGS: &str = env!("CARGO_BIN_EXE_embeddings");
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run_bin(
        EMBEDDINGS,
        &["--run", "e", "--token", "a", "--token", "b", "--top", "3"],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let run = dir.path().join("outputs/embeddings/e");
    let near = lab::parquet::read_parquet(&run.join("nearest.parquet")).unwrap();
    assert_eq!(
        near.height(),
        2 * 2 * 3,
        "2 matrices x 2 tokens x 3 neighbours"
    );
    let analogies = lab::parquet::read_parquet(&run.join("analogies.parquet")).unwrap();
    assert_eq!(
        analogies.height(),
        2 * 2 * 3,
        "2 matrices x 2 default analogies x 3"
    );
    assert!(run.join("pca_w_e.png").is_file());
    for (args, named) in [
        (&["--token", "ab"][..], "\"ab\" is 2 tokens [\"a\", \"b\"]"),
        (&["--analogy", "a,b"][..], "three tokens"),
        (&["--analogy", "a,bc,d"][..], "\"bc\" is 2 tokens"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (code, err) = run_bin(EMBEDDINGS, args, dir.path());
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(named), "{args:?} should say {named}: {err}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}

#[test]
fn neurons_write_the_loss_view_and_refuse_bad_neurons() {
    const NEURONS: &str = env!("CARGO_BIN_EXE_neurons");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.txt"), "abcabcabc").unwrap();
    let (code, err) = run_bin(
        NEURONS,
        &[
            "--run", "n", "--text", "t.txt", "--answer", "a", "--wrong", "b",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let run = dir.path().join("outputs/neurons/n");
    let page = std::fs::read_to_string(run.join("token_loss.html")).unwrap();
    assert!(
        page.contains("\"abc") || page.contains("\"a\""),
        "the tokens are inline"
    );
    assert!(run.join("token_loss.png").is_file());
    assert!(run.join("logit_diff.html").is_file());
    // The embedded model is attention-only: no neuron table rows.
    let df = lab::parquet::read_parquet(&run.join("top_activations.parquet")).unwrap();
    assert_eq!(df.height(), 0);
    for (args, named) in [
        (&["--neuron", "L0N1"][..], "attention-only"),
        (&["--neuron", "L0H1"][..], "L<layer>N<neuron>"),
        (&["--text", "missing.txt"][..], "missing.txt"),
        (
            &["--answer", "ab", "--wrong", "c"][..],
            "--answer \"ab\" is 2 tokens",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (code, err) = run_bin(NEURONS, args, dir.path());
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(named), "{args:?} should say {named}: {err}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
