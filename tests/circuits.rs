//! Per-head circuits against TransformerLens 4.3 (tests/reference/make_circuits_reference.py):
//! composition scores, singular values of QK, OV and the full circuits, full-OV eigenvalues and
//! copying scores, on the random GPT-2 (processed and unprocessed) and SmolLM2 (grouped-query
//! attention); and the embedded model's K-composition.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::*;
use hooklens::analysis::circuits::{
    composition_scores, copying_scores, full_ov, full_ov_eigenvalues, full_ov_gram_svd, full_qk,
    full_qk_singular_values, ov, pos_qk, pos_qk_singular_values, qk, Composition,
};
use hooklens::HookedTransformer;
use std::collections::HashMap;

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        root().join("tests/reference/circuits_ref.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// Asserts `ours` equals `theirs` within `rel` of the reference's largest magnitude.
fn close(what: &str, ours: &Tensor, theirs: &Tensor, rel: f32) {
    let ours = ours.to_dtype(DType::F32).unwrap();
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shapes");
    let tol = rel * max_abs(theirs).max(1e-3);
    let diff = max_abs_diff(&ours, theirs);
    assert!(diff <= tol, "{what}: max |diff| {diff} > {tol}");
}

/// Eigenvalues sorted by (descending magnitude, real part), as [magnitude, real part] pairs of
/// rows, so that conjugate pairs and torch's unsorted order compare.
fn sorted_eigen(re: &Tensor, im: &Tensor) -> Tensor {
    let (re, im) = (re.flatten_to(1).unwrap(), im.flatten_to(1).unwrap());
    let rows: Vec<Vec<f32>> = re.to_vec2().unwrap();
    let ims: Vec<Vec<f32>> = im.to_vec2().unwrap();
    let mut out = vec![];
    for (r, i) in rows.iter().zip(&ims) {
        let mut ev: Vec<(f32, f32)> = r.iter().zip(i).map(|(a, b)| (a.hypot(*b), *a)).collect();
        ev.sort_by(|x, y| y.0.total_cmp(&x.0).then(y.1.total_cmp(&x.1)));
        out.extend(ev.into_iter().flat_map(|(m, a)| [m, a]));
    }
    let n = out.len();
    Tensor::from_vec(out, n, &Device::Cpu).unwrap()
}

fn check(model: &HookedTransformer, key: &str, positional: bool) {
    let r = reference();
    for kind in Composition::ALL {
        let ours = composition_scores(model, kind).unwrap();
        close(
            &format!("{key} {} composition", kind.name()),
            &ours,
            &r[&format!("{key}.comp_{}", kind.name())],
            1e-4,
        );
    }
    close(
        &format!("{key} QK singular values"),
        &qk(model).unwrap().svd().unwrap().s,
        &r[&format!("{key}.qk_s")],
        1e-4,
    );
    close(
        &format!("{key} OV singular values"),
        &ov(model).unwrap().svd().unwrap().s,
        &r[&format!("{key}.ov_s")],
        1e-4,
    );
    let (re, im) = full_ov_eigenvalues(model).unwrap();
    let theirs = sorted_eigen(
        &r[&format!("{key}.ov_eig_re")],
        &r[&format!("{key}.ov_eig_im")],
    );
    close(
        &format!("{key} full OV eigenvalues"),
        &sorted_eigen(&re, &im),
        &theirs,
        1e-4,
    );
    close(
        &format!("{key} copying scores"),
        &copying_scores(model).unwrap(),
        &r[&format!("{key}.copying")],
        1e-4,
    );
    let per_head = |f: &dyn Fn(usize) -> Tensor| {
        let rows: Vec<Tensor> = (0..model.cfg.n_heads).map(f).collect();
        Tensor::stack(&rows, 0).unwrap()
    };
    let full_qk_s = per_head(&|h| full_qk(model, 0, h).unwrap().svd().unwrap().s);
    close(
        &format!("{key} full QK singular values"),
        &full_qk_s,
        &r[&format!("{key}.full_qk0_s")],
        1e-4,
    );
    let full_ov_s = per_head(&|h| full_ov(model, 0, h).unwrap().svd().unwrap().s);
    close(
        &format!("{key} full OV singular values"),
        &full_ov_s,
        &r[&format!("{key}.full_ov0_s")],
        1e-4,
    );
    // The batched Gram route gives the same singular values for every head at once.
    let batched_qk = full_qk_singular_values(model).unwrap().get(0).unwrap();
    close(
        &format!("{key} full QK singular values (batched)"),
        &batched_qk,
        &r[&format!("{key}.full_qk0_s")],
        1e-4,
    );
    let batched_ov = full_ov_gram_svd(model).unwrap().s.get(0).unwrap();
    close(
        &format!("{key} full OV singular values (batched)"),
        &batched_ov,
        &r[&format!("{key}.full_ov0_s")],
        1e-4,
    );
    if positional {
        let batched_pos = pos_qk_singular_values(model).unwrap().get(0).unwrap();
        close(
            &format!("{key} positional QK singular values (batched)"),
            &batched_pos,
            &r[&format!("{key}.pos_qk0_s")],
            1e-4,
        );
        let pos_s = per_head(&|h| pos_qk(model, 0, h).unwrap().svd().unwrap().s);
        close(
            &format!("{key} positional QK singular values"),
            &pos_s,
            &r[&format!("{key}.pos_qk0_s")],
            1e-4,
        );
    }
}

#[test]
fn gpt2_circuits_match_transformerlens() {
    for (model, key) in gpt2_both_modes() {
        check(&model, key, true);
    }
}

#[test]
fn smollm2_circuits_match_transformerlens() {
    check(&smollm2(true).0, "smollm2.processed", false);
}

#[test]
fn embedded_previous_token_heads_k_compose_with_induction_heads() {
    let (model, _, _) = hooklens::load_model(None, &Default::default()).unwrap();
    let k = composition_scores(&model, Composition::K).unwrap(); // [L, H, L, H]
                                                                 // Writers: the previous-token heads L0H1 and L0H3; readers: the induction heads of layer 1.
    let to_l1 = k.i((0, .., 1, ..)).unwrap(); // [writer head, reader head]
    let prev: f32 = to_l1
        .i((1, ..))
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(
            to_l1
                .i((3, ..))
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        );
    let others: f32 = (to_l1
        .i((0, ..))
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        + to_l1
            .i((2, ..))
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap())
        / 2.0;
    eprintln!(
        "K-composition into layer 1: previous-token writers {prev:.3}, other writers {others:.3}"
    );
    assert!(prev > 1.5 * others, "{prev} vs {others}");
    // Nothing composes with an earlier or same-layer head.
    assert_eq!(max_abs(&k.i((1, .., 0, ..)).unwrap()), 0.0);
    assert_eq!(max_abs(&k.i((1, .., 1, ..)).unwrap()), 0.0);
}
