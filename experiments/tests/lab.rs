//! The lab's own pieces: typed manifests that agree with the tables they describe, and library
//! errors rewritten in the flags' words.

use hooklens::analysis::detectors::all_head_scores;
use hooklens::data::{repeated_random_tokens, PRINTABLE_ASCII};
use hooklens::{load_model, BlockHook, HookPoint, Hooks, Intervention, LoadOptions, Site};
use lab::manifest::{schema_of, Manifest};
use lab::parquet::read_parquet;
use lab::run::RunDir;
use lab::tables::Table;
use rand::SeedableRng;

#[test]
fn manifest_schema_equals_the_parquet_read_back() {
    let (model, _, source) = load_model(None, &LoadOptions::default()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let t =
        repeated_random_tokens(&mut rng, 2, 8, Some(256), PRINTABLE_ASCII, model.device()).unwrap();
    let scores = all_head_scores(&model, &t, 8).unwrap();
    let df = scores.frame().unwrap();
    let columns = <std::collections::HashMap<_, _> as Table>::COLUMNS;
    let out = tempfile::tempdir().unwrap();
    let run = RunDir::create(out.path(), "exp", Some("r"), false).unwrap();
    let args = serde_json::json!({"seed": 4});
    let mut m = Manifest::new("exp", &model, &source, &args).unwrap();
    m.seed = Some(4);
    m.interventions = Hooks::none()
        .intervene(
            Site::head(HookPoint::block(1, BlockHook::Z), 2),
            Intervention::Zero,
        )
        .fired();
    run.write_table(&mut m, "scores.parquet", &scores).unwrap();
    run.write_manifest(&m).unwrap();

    let text = std::fs::read_to_string(run.file("manifest.json")).unwrap();
    let back: Manifest = serde_json::from_str(&text).unwrap();
    let read = read_parquet(&run.file("scores.parquet")).unwrap();
    let schema: Vec<(String, String)> = back.tables["scores.parquet"]
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.dtype.clone()))
        .collect();
    assert_eq!(schema, schema_of(&read));
    assert_eq!(back.tables["scores.parquet"].rows, read.height());
    assert_eq!(back.model.name, "embedded-induction-2l");
    assert_eq!(back.model.weights[0].sha256.len(), 64);
    assert_eq!(
        (back.model.dtype.as_str(), back.model.device.as_str()),
        ("f32", "cpu")
    );
    assert_eq!(back.interventions[0].spec.kind, "zero");
    assert_eq!(back.seed, Some(4));
    // Undocumented or unknown columns are refused.
    let e = m.add_table("x.parquet", &df, &columns[1..]).unwrap_err();
    assert!(e.to_string().contains("`kind` has no documentation"), "{e}");
}

#[test]
fn library_parameters_are_named_as_flags() {
    let e: anyhow::Error = hooklens::Error::bad_parameter(
        "top_k",
        5,
        "only shapes sampling, and `temperature` 0 is greedy",
    )
    .into();
    let e = e.context("generating");
    assert_eq!(
        lab::args::in_flags_words(&e),
        "generating: --top-k 5: only shapes sampling, and --temperature 0 is greedy"
    );
}
