//! Ablation and activation patching against TransformerLens 4.3 on the IOI pair, on the random
//! GPT-2 and SmolLM2 (references: tests/reference/make_patching_reference.py).

mod common;

use candle_core::{Device, Tensor};
use common::*;
use hooklens::analysis::ablation::{ablation_jobs, Ablation, Unit};
use hooklens::analysis::patching::{act_patch, attribution, Cell, Grid};
use hooklens::analysis::sweep::{Job, Metric, Sweep, Target};
use hooklens::data::{tokenize_pairs, PairBatch, PromptPair};
use hooklens::{HookedTransformer, Processing, Tokenizer};
use std::collections::HashMap;

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        root().join("tests/reference/patching_ref.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn ioi_batch(model: &HookedTransformer, tok: &Tokenizer, bos: bool) -> PairBatch {
    let pair = PromptPair {
        clean: "When Mary and John went to the store, John gave a drink to".into(),
        corrupted: "When Mary and John went to the store, Mary gave a drink to".into(),
        answer: " Mary".into(),
        wrong: " John".into(),
        line: None,
    };
    let t = tokenize_pairs(&[pair], tok, bos, "ioi").unwrap();
    PairBatch::new(&t, 0, model.device()).unwrap()
}

/// `got` (row-major, the reference's shape) against the reference within `tol` times its
/// largest magnitude (at least 1).
fn assert_close(what: &str, got: &[f32], want: &Tensor, tol: f32) {
    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: sizes");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= tol * scale,
        "{what}: max |diff| {worst:.2e} (scale {scale:.3}); got {:?}.. want {:?}..",
        &got[..got.len().min(6)],
        &want[..want.len().min(6)]
    );
}

fn scalar(t: &Tensor) -> f32 {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
}

fn check(model: &HookedTransformer, tok: &Tokenizer, bos: bool, key: &str, tol: f32) {
    let r = reference();
    let get = |name: &str| &r[&format!("{key}.{name}")];
    let batch = ioi_batch(model, tok, bos);
    let ids = |t: &Tensor| -> Vec<u32> {
        t.to_dtype(candle_core::DType::U32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    assert_eq!(ids(&batch.clean), ids(get("tokens_clean")), "clean tokens");
    assert_eq!(ids(&batch.corrupted), ids(get("tokens_corrupted")));
    let n_pos = batch.clean.dim(1).unwrap();

    // Zero-ablation of every head, on the clean prompt.
    let jobs = ablation_jobs(&Unit::all_heads(model), Ablation::Zero, None).unwrap();
    let clean_target = Target::new(&batch, false).unwrap();
    let sweep = Sweep::new(model, clean_target, Metric::LogitDiff, jobs, 4096).unwrap();
    assert_close("clean metric", &[sweep.baseline()], get("clean"), tol);
    assert_close(
        "ablate_heads",
        &sweep.compute().unwrap(),
        get("ablate_heads"),
        tol,
    );

    // The patching grids, clean into corrupted.
    let grids = [
        (Grid::ResidPre, "resid_pre"),
        (Grid::AttnOut, "attn_out"),
        (Grid::MlpOut, "mlp_out"),
        (Grid::AttnHeadOutAllPos, "head_out_all_pos"),
        (Grid::AttnHeadPatternAllPos, "head_pattern_all_pos"),
    ];
    let target = Target::new(&batch, true).unwrap();
    let clean = vec![batch.clean.clone()];
    for (grid, name) in grids {
        let cells = grid.cells(model, n_pos).unwrap();
        let jobs = cells
            .iter()
            .map(|c| Job::from_source(c.site(), 0))
            .collect();
        let sweep = Sweep::with_sources(
            model,
            target.clone(),
            clean.clone(),
            Metric::LogitDiff,
            jobs,
            4096,
        )
        .unwrap();
        assert_close(
            "corrupted metric",
            &[sweep.baseline()],
            get("corrupted"),
            tol,
        );
        assert_close(name, &sweep.compute().unwrap(), get(name), tol);
    }

    // TransformerLens's get_act_patch_* shape from one call: the same values normalised
    // (0 = corrupted, 1 = clean) and laid out [layer, pos] / [layer, head].
    let normalise = |raw: &Tensor| -> Vec<f32> {
        let (c, k) = (scalar(get("clean")), scalar(get("corrupted")));
        let raw = raw.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        raw.iter().map(|v| (v - k) / (c - k)).collect()
    };
    for (grid, name, shape) in [
        (Grid::ResidPre, "resid_pre", [model.cfg.n_layers, n_pos]),
        (
            Grid::AttnHeadOutAllPos,
            "head_out_all_pos",
            [model.cfg.n_layers, model.cfg.n_heads],
        ),
    ] {
        let got = act_patch(model, grid, &batch, Metric::LogitDiff, 4096).unwrap();
        assert_eq!(got.dims(), shape, "act_patch {name}: shape");
        let want = Tensor::new(normalise(get(name)), &Device::Cpu).unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_close(&format!("act_patch {name}"), &got, &want, tol);
    }

    // Attribution patching against torch autograd.
    for (grid, name) in [
        (Grid::ResidPre, "attr_resid_pre"),
        (Grid::AttnHeadOutAllPos, "attr_head_out"),
    ] {
        let cells: Vec<Cell> = grid.cells(model, n_pos).unwrap();
        let got = attribution(
            model,
            &target,
            Metric::LogitDiff,
            &batch.clean,
            &cells,
            4096,
        )
        .unwrap();
        assert_close(name, &got, get(name), tol);
    }
    // Per head and position, the estimates add up over positions to the all-position ones.
    let by_pos = Grid::AttnHeadOutByPos.cells(model, n_pos).unwrap();
    let parts = attribution(
        model,
        &target,
        Metric::LogitDiff,
        &batch.clean,
        &by_pos,
        4096,
    )
    .unwrap();
    let sums: Vec<f32> = parts.chunks(n_pos).map(|c| c.iter().sum()).collect();
    assert_close(
        "attr_head_out by position, summed",
        &sums,
        get("attr_head_out"),
        tol,
    );
}

#[test]
fn gpt2_ablation_and_patching_match_transformerlens() {
    let dir = gpt2_dir();
    let (model, tok) = load_gpt2(dir.path(), Processing::default());
    check(&model, &tok, true, "gpt2", 1e-4);
}

#[test]
fn smollm2_ablation_and_patching_match_transformerlens() {
    let (model, tok) = smollm2(true);
    check(model, tok, false, "smollm2", 1e-3);
}
