//! The residual stream against TransformerLens 4.3 (tests/reference/make_resid_reference.py) on
//! the IOI prompt, for the random GPT-2 and SmolLM2, unprocessed and processed; and the
//! invariants that make the decompositions trustworthy.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use common::*;
use hooklens::analysis::lens::{logit_lens, LensOpts};
use hooklens::analysis::resid::{Mode, Positions, ResidOpts};
use hooklens::{BlockHook, HookedTransformer, NameFilter, Processing};
use std::collections::HashMap;

fn reference() -> (HashMap<String, Tensor>, serde_json::Value) {
    let r = candle_core::safetensors::load(
        root().join("tests/reference/resid_ref.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let text = std::fs::read_to_string(root().join("tests/reference/resid_labels.json")).unwrap();
    (r, serde_json::from_str(&text).unwrap())
}

/// Asserts `ours` equals `theirs` within 1e-4 of the reference's scale (at least 1).
fn close(what: &str, ours: &Tensor, theirs: &Tensor) {
    let ours = ours.to_dtype(DType::F32).unwrap();
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shapes");
    let tol = 1e-4 * max_abs(theirs).max(1.0);
    let diff = max_abs_diff(&ours, theirs);
    assert!(diff <= tol, "{what}: max |diff| {diff} > {tol}");
}

fn labels(l: &serde_json::Value, key: &str) -> Vec<String> {
    l[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// `[c, b, 1, d]` (our stacks keep the position axis) -> `[c, b, d]` (TransformerLens's int slice).
fn squeeze_pos(t: &Tensor) -> Tensor {
    t.squeeze(2).unwrap()
}

fn check(model: &HookedTransformer, key: &str, expand_neurons: bool) {
    let (r, l) = reference();
    let tokens = r[&format!("{key}.tokens")]
        .to_dtype(DType::U32)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let ans: Vec<u32> = r[&format!("{key}.answers")]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    let (a, w) = ([ans[0]], [ans[1]]);
    let (_, cache) = model.run_with_cache(&tokens, NameFilter::All).unwrap();
    let last = ResidOpts {
        pos: Positions::Last,
        ..Default::default()
    };
    let with_ln = ResidOpts {
        apply_ln: true,
        ..last
    };
    let attrs = |stack: &Tensor| {
        cache
            .logit_attrs(model, stack, &a, Some(&w), Positions::Last)
            .unwrap()
            .squeeze(2)
            .unwrap()
    };

    let acc = cache.accumulated_resid(model, &last, false).unwrap();
    assert_eq!(acc.labels, labels(&l, &format!("{key}.accumulated")));
    close(
        "accumulated",
        &squeeze_pos(&acc.stack),
        &r[&format!("{key}.accumulated")],
    );
    close(
        "accumulated attrs",
        &attrs(&acc.stack),
        &r[&format!("{key}.accumulated.attrs")],
    );
    let acc_ln = cache.accumulated_resid(model, &with_ln, false).unwrap();
    close(
        "accumulated apply_ln",
        &squeeze_pos(&acc_ln.stack),
        &r[&format!("{key}.accumulated_ln")],
    );

    let dec = cache
        .decompose_resid(model, &last, Mode::All, true)
        .unwrap();
    assert_eq!(dec.labels, labels(&l, &format!("{key}.decomposed")));
    close(
        "decomposed",
        &squeeze_pos(&dec.stack),
        &r[&format!("{key}.decomposed")],
    );
    close(
        "decomposed attrs",
        &attrs(&dec.stack),
        &r[&format!("{key}.decomposed.attrs")],
    );
    let dec_ln = cache
        .decompose_resid(model, &with_ln, Mode::All, true)
        .unwrap();
    close(
        "decomposed apply_ln",
        &squeeze_pos(&dec_ln.stack),
        &r[&format!("{key}.decomposed_ln")],
    );

    let heads = cache.stack_head_results(model, &last).unwrap();
    assert_eq!(heads.labels, labels(&l, &format!("{key}.heads")));
    close(
        "heads",
        &squeeze_pos(&heads.stack),
        &r[&format!("{key}.heads")],
    );
    close(
        "heads attrs",
        &attrs(&heads.stack),
        &r[&format!("{key}.heads.attrs")],
    );

    let full = cache
        .get_full_resid_decomposition(model, &last, expand_neurons)
        .unwrap();
    assert_eq!(full.labels, labels(&l, &format!("{key}.full")));
    close(
        "full decomposition",
        &squeeze_pos(&full.stack),
        &r[&format!("{key}.full")],
    );
    close(
        "full attrs",
        &attrs(&full.stack),
        &r[&format!("{key}.full.attrs")],
    );
    let neurons = cache
        .get_full_resid_decomposition(model, &last, true)
        .unwrap();
    assert_eq!(neurons.labels, labels(&l, &format!("{key}.full_neurons")));
    close(
        "full (neurons) attrs",
        &attrs(&neurons.stack),
        &r[&format!("{key}.full_neurons.attrs")],
    );
    // The projected neuron attributions equal those of the materialised neuron stack.
    let (na, nl) = cache
        .neuron_logit_attrs(model, &last, &a, Some(&w))
        .unwrap();
    let n_heads = heads.labels.len();
    assert_eq!(nl, neurons.labels[n_heads..n_heads + nl.len()]);
    close(
        "neuron_logit_attrs",
        &na.squeeze(2).unwrap(),
        &attrs(&neurons.stack).narrow(0, n_heads, nl.len()).unwrap(),
    );

    // Logit lens at every position.
    let cells = logit_lens(
        model,
        &cache,
        &LensOpts {
            k: 5,
            target: Some(a[0]),
            pos: Positions::All,
            incl_mid: false,
        },
    )
    .unwrap();
    let ids = r[&format!("{key}.lens.top_ids")].squeeze(1).unwrap(); // [c, p, 5]
    let lps = r[&format!("{key}.lens.top_logprobs")].squeeze(1).unwrap();
    let ent = r[&format!("{key}.lens.entropy")].squeeze(1).unwrap(); // [c, p]
    let rank = r[&format!("{key}.lens.target_rank")].squeeze(1).unwrap(); // [c, p, 1]
    let tlp = r[&format!("{key}.lens.target_logprob")].squeeze(1).unwrap();
    let lens_labels = labels(&l, &format!("{key}.lens"));
    let (mut worst, mut swaps) = (0f32, 0);
    for c in &cells {
        assert_eq!(c.label, lens_labels[c.entry]);
        let want_ids: Vec<i64> = ids.i((c.entry, c.pos)).unwrap().to_vec1().unwrap();
        let want_lp: Vec<f32> = lps.i((c.entry, c.pos)).unwrap().to_vec1().unwrap();
        for (j, &(id, lp)) in c.top.iter().enumerate() {
            // Two near-equal log-probs may come out in either order.
            if id as i64 != want_ids[j] {
                swaps += 1;
                assert!(
                    (lp - want_lp[j]).abs() < 1e-4,
                    "{key} {}: top {j} {id} vs {}",
                    c.label,
                    want_ids[j]
                );
            }
            worst = worst.max((lp - want_lp[j]).abs());
        }
        let e: f32 = ent.i((c.entry, c.pos)).unwrap().to_scalar().unwrap();
        worst = worst.max((c.entropy - e).abs() / e.max(1.0));
        let (tr, tl) = c.target.unwrap();
        let want_rank: i64 = rank.i((c.entry, c.pos, 0)).unwrap().to_scalar().unwrap();
        assert!(
            (tr as i64 - want_rank).abs() <= 1,
            "{key} {} pos {}: rank {tr} vs {want_rank}",
            c.label,
            c.pos
        );
        let want_tl: f32 = tlp.i((c.entry, c.pos, 0)).unwrap().to_scalar().unwrap();
        worst = worst.max((tl - want_tl).abs());
    }
    eprintln!(
        "{key}: logit lens worst |diff| {worst:.2e}, {swaps} tie swaps over {} cells",
        cells.len()
    );
    assert!(worst < 2e-4, "{key}: logit lens differs by {worst}");
}

#[test]
fn gpt2_matches_transformerlens() {
    for (model, key) in gpt2_both_modes() {
        check(&model, key, true);
    }
}

#[test]
fn smollm2_matches_transformerlens() {
    for (processed, key) in [(false, "smollm2.unprocessed"), (true, "smollm2.processed")] {
        check(&smollm2(processed).0, key, false);
    }
}

/// The invariants on one model: the full decomposition sums to the final residual stream, and
/// the final logit-lens entry equals the model's own log-probs.
fn invariants(model: &HookedTransformer, tokens: &Tensor) {
    let (logits, cache) = model.run_with_cache(tokens, NameFilter::All).unwrap();
    let n = model.cfg.n_layers;
    let all = ResidOpts::default();
    let full = cache
        .get_full_resid_decomposition(model, &all, !model.cfg.attn_only)
        .unwrap();
    let sum = full.stack.sum(0).unwrap();
    let resid = cache.block(n - 1, BlockHook::ResidPost).unwrap();
    let tol = 1e-4 * max_abs(resid).max(1.0);
    assert!(
        max_abs_diff(&sum, resid) < tol,
        "decomposition sums to resid_post"
    );
    assert_lens_ends_at_the_model(model, &cache, &logits);
}

/// The logit lens's last entry (`final_post`) is the model's own log-probs, top-1 included.
fn assert_lens_ends_at_the_model(
    model: &HookedTransformer,
    cache: &hooklens::ActivationCache,
    logits: &Tensor,
) {
    let cells = logit_lens(
        model,
        cache,
        &LensOpts {
            k: 3,
            target: None,
            pos: Positions::All,
            incl_mid: true,
        },
    )
    .unwrap();
    let lp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32).unwrap(), D::Minus1).unwrap();
    let last_entry = cells.iter().map(|c| c.entry).max().unwrap();
    for c in cells.iter().filter(|c| c.entry == last_entry) {
        assert_eq!(c.label, "final_post");
        let row: Vec<f32> = lp.i((c.batch, c.pos)).unwrap().to_vec1().unwrap();
        for &(id, v) in &c.top {
            assert!(
                (row[id as usize] - v).abs() < 1e-4,
                "final lens entry = model log-probs"
            );
        }
        assert_eq!(c.top[0].0, hooklens::analysis::metrics::top_k(&row, 1)[0].0);
    }
}

#[test]
fn decompositions_sum_back_and_the_lens_ends_at_the_model() {
    let dir = gpt2_dir();
    let (gpt2, tok) = load_gpt2(dir.path(), Processing::default());
    let t = tok
        .to_tokens(&["Hello there, general Kenobi", "a b"], true, &Device::Cpu)
        .unwrap();
    invariants(&gpt2, &t);
    let (embedded, tok, _) = hooklens::load_model(None, &Default::default()).unwrap();
    let t = tok
        .to_tokens(&["abcabc", "xyz xyz"], true, &Device::Cpu)
        .unwrap();
    invariants(&embedded, &t);
    let (smol, tok) = smollm2(true);
    let t = tok
        .to_tokens(&["The capital of France is"], false, &Device::Cpu)
        .unwrap();
    invariants(smol, &t);
}

/// DLA parts add up to the model's logit difference (each row at its own last real token).
fn dla_sums(
    model: &HookedTransformer,
    tok: &hooklens::Tokenizer,
    bos: bool,
) -> hooklens::analysis::dla::Dla {
    let pairs = hooklens::data::ioi_pairs(tok, 6, 3).unwrap();
    let t = hooklens::data::tokenize_pairs(&pairs, tok, bos, "ioi").unwrap();
    let batch = hooklens::data::PairBatch::new(&t, 0, &Device::Cpu).unwrap();
    let (logits, cache) = model.run_with_cache(&batch.clean, NameFilter::All).unwrap();
    let last: Vec<usize> = batch.lengths.iter().map(|l| l - 1).collect();
    for expand in [true, false] {
        let d = hooklens::analysis::dla::direct_logit_attribution(
            model,
            &cache,
            &logits,
            (&batch.answers, &batch.wrong),
            &last,
            expand && !model.cfg.attn_only,
        )
        .unwrap();
        let sum: f32 = d.contributions.iter().map(|c| c.value).sum();
        let tol = 1e-4 * d.logit_diff.abs().max(1.0) * 10.0;
        assert!(
            (sum - d.logit_diff).abs() < tol,
            "sum {sum} vs logit diff {}",
            d.logit_diff
        );
    }
    hooklens::analysis::dla::direct_logit_attribution(
        model,
        &cache,
        &logits,
        (&batch.answers, &batch.wrong),
        &last,
        false,
    )
    .unwrap()
}

#[test]
fn dla_parts_add_up_to_the_logit_difference() {
    let dir = gpt2_dir();
    for processing in [Processing::none(), Processing::default()] {
        let (model, tok) = load_gpt2(dir.path(), processing);
        dla_sums(&model, &tok, true);
    }
    let (smol, tok) = smollm2(true);
    let d = dla_sums(smol, tok, false);
    let mut heads: Vec<_> = d
        .contributions
        .iter()
        .filter(|c| c.kind == "head")
        .collect();
    heads.sort_by(|a, b| b.value.abs().total_cmp(&a.value.abs()));
    eprintln!(
        "SmolLM2 IOI logit diff {:.3}; top heads {:?}",
        d.logit_diff,
        &heads[..3]
            .iter()
            .map(|c| (&c.component, c.value))
            .collect::<Vec<_>>()
    );

    // Where the final norm is folded, head attributions are TransformerLens's logit_attrs.
    let (r, _) = reference();
    let (model, _) = load_gpt2(dir.path(), Processing::default());
    let tokens = r["gpt2.processed.tokens"]
        .to_dtype(DType::U32)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let ans: Vec<u32> = r["gpt2.processed.answers"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    let (logits, cache) = model.run_with_cache(&tokens, NameFilter::All).unwrap();
    let last = tokens.dim(1).unwrap() - 1;
    let d = hooklens::analysis::dla::direct_logit_attribution(
        &model,
        &cache,
        &logits,
        (&ans[..1], &ans[1..]),
        &[last],
        true,
    )
    .unwrap();
    let heads: Vec<f32> = d
        .contributions
        .iter()
        .filter(|c| c.kind == "head")
        .map(|c| c.value)
        .collect();
    close(
        "DLA heads",
        &Tensor::new(heads, &Device::Cpu).unwrap(),
        &r["gpt2.processed.heads.attrs"].squeeze(1).unwrap(),
    );
    let logit_diff: f32 = r["gpt2.processed.logit_diff"].to_vec1::<f32>().unwrap()[0];
    assert!((d.logit_diff - logit_diff).abs() < 1e-4);
}

#[test]
fn neuron_stacks_select_all_indices_or_the_strongest() {
    use hooklens::analysis::resid::Neurons;
    let dir = gpt2_dir();
    let (model, tok) = load_gpt2(dir.path(), Processing::default());
    let t = tok.to_tokens(&["Hello there"], true, &Device::Cpu).unwrap();
    let (_, cache) = model.run_with_cache(&t, NameFilter::All).unwrap();
    let last = ResidOpts {
        pos: Positions::Last,
        ..Default::default()
    };
    let all = cache
        .stack_neuron_results(&model, &last, &Neurons::All)
        .unwrap();
    assert_eq!(all.labels.len(), 3 * model.cfg.d_mlp);
    let top = cache
        .stack_neuron_results(&model, &last, &Neurons::TopK(4))
        .unwrap();
    assert_eq!(top.stack.dims(), &[12, 1, 1, model.cfg.d_model]);
    // The top-4 of layer 0 are the four largest |activations| at the last position.
    let post = cache
        .block(0, BlockHook::MlpPost)
        .unwrap()
        .i((0, 2))
        .unwrap()
        .abs()
        .unwrap();
    let v: Vec<f32> = post.to_vec1().unwrap();
    let mut want: Vec<String> = hooklens::analysis::metrics::top_k(&v, 4)
        .iter()
        .map(|(n, _)| format!("L0N{n}"))
        .collect();
    want.sort_by_key(|s| s[3..].parse::<usize>().unwrap());
    assert_eq!(top.labels[..4], want[..]);
    let some = cache
        .stack_neuron_results(&model, &last, &Neurons::Indices(vec![5, 7]))
        .unwrap();
    assert_eq!(
        some.labels,
        ["L0N5", "L0N7", "L1N5", "L1N7", "L2N5", "L2N7"]
    );
    let i = all.labels.iter().position(|l| l == "L1N7").unwrap();
    assert_eq!(
        max_abs_diff(&some.stack.i(3).unwrap(), &all.stack.i(i).unwrap()),
        0.0
    );
    assert!(cache
        .stack_neuron_results(&model, &last, &Neurons::Indices(vec![999]))
        .is_err());
}

#[test]
fn dla_over_a_padded_batch_is_the_mean_of_single_prompts() {
    let dir = gpt2_dir();
    let (model, tok) = load_gpt2(dir.path(), Processing::default());
    let pairs = hooklens::data::ioi_pairs(&tok, 4, 11).unwrap();
    let t = hooklens::data::tokenize_pairs(&pairs, &tok, true, "ioi").unwrap();
    assert!(
        t.iter().any(|p| p.clean.len() != t[0].clean.len()),
        "the batch needs padding"
    );
    let dla = |pairs: &[hooklens::data::TokenPair]| {
        let batch = hooklens::data::PairBatch::new(pairs, 0, &Device::Cpu).unwrap();
        let (logits, cache) = model.run_with_cache(&batch.clean, NameFilter::All).unwrap();
        let last: Vec<usize> = batch.lengths.iter().map(|l| l - 1).collect();
        hooklens::analysis::dla::direct_logit_attribution(
            &model,
            &cache,
            &logits,
            (&batch.answers, &batch.wrong),
            &last,
            true,
        )
        .unwrap()
    };
    let together = dla(&t);
    let alone: Vec<_> = t.iter().map(|p| dla(std::slice::from_ref(p))).collect();
    for (i, c) in together.contributions.iter().enumerate() {
        let mean: f32 =
            alone.iter().map(|d| d.contributions[i].value).sum::<f32>() / alone.len() as f32;
        assert!(
            (c.value - mean).abs() < 1e-4,
            "{}: {} vs {mean}",
            c.component,
            c.value
        );
    }
    let mean_diff: f32 = alone.iter().map(|d| d.logit_diff).sum::<f32>() / alone.len() as f32;
    assert!((together.logit_diff - mean_diff).abs() < 1e-4);
    // dla_on in passes of one prompt (or two) gives the same means.
    let batch = hooklens::data::PairBatch::new(&t, 0, &Device::Cpu).unwrap();
    let p = batch.clean.dim(1).unwrap();
    for tokens_per_pass in [p, 2 * p] {
        let chunked =
            hooklens::analysis::dla::dla_on(&model, &batch, true, tokens_per_pass).unwrap();
        for (a, b) in chunked.contributions.iter().zip(&together.contributions) {
            assert_eq!(a.component, b.component);
            assert!(
                (a.value - b.value).abs() < 1e-4,
                "{}: {} vs {}",
                a.component,
                a.value,
                b.value
            );
        }
        assert!((chunked.logit_diff - together.logit_diff).abs() < 1e-4);
    }
}

/// The lens cells at real positions and the DLA of `model` on two prompts of unequal length.
fn lens_and_dla(
    model: &HookedTransformer,
    tok: &hooklens::Tokenizer,
    texts: &[&str],
) -> (
    Vec<hooklens::analysis::lens::LensCell>,
    hooklens::analysis::dla::Dla,
) {
    let t = tok.to_tokens(texts, true, &Device::Cpu).unwrap();
    let lengths = tok.lengths(texts, true).unwrap();
    let (logits, cache) = model.run_with_cache(&t, NameFilter::All).unwrap();
    let opts = LensOpts {
        k: 3,
        target: Some(u32::from(b'c')),
        pos: Positions::All,
        incl_mid: false,
    };
    let cells: Vec<_> = logit_lens(model, &cache, &opts)
        .unwrap()
        .into_iter()
        .filter(|c| c.pos < lengths[c.batch])
        .collect();
    let last: Vec<usize> = lengths.iter().map(|l| l - 1).collect();
    let (a, w) = (
        vec![u32::from(b'c'); texts.len()],
        vec![u32::from(b'x'); texts.len()],
    );
    let dla = hooklens::analysis::dla::direct_logit_attribution(
        model,
        &cache,
        &logits,
        (&a, &w),
        &last,
        false,
    )
    .unwrap();
    (cells, dla)
}

#[test]
fn lens_and_dla_agree_across_padding_and_half_precision() {
    let load = |dtype| {
        hooklens::load_model(
            None,
            &hooklens::LoadOptions {
                dtype,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let (f32m, tok, _) = load(DType::F32);
    let texts = ["abcab", "xyz xyz xyz ab"];
    let (batch_cells, _) = lens_and_dla(&f32m, &tok, &texts);
    // The short prompt alone gives the same lens cells as inside the right-padded batch.
    let (alone, _) = lens_and_dla(&f32m, &tok, &texts[..1]);
    let in_batch: Vec<_> = batch_cells.iter().filter(|c| c.batch == 0).collect();
    assert_eq!(alone.len(), in_batch.len());
    for (a, b) in alone.iter().zip(&in_batch) {
        assert_eq!((a.entry, a.pos), (b.entry, b.pos));
        assert_eq!(a.top[0].0, b.top[0].0);
        assert!(
            (a.entropy - b.entropy).abs() < 1e-4
                && (a.target.unwrap().1 - b.target.unwrap().1).abs() < 1e-4
        );
    }
    // f16 and bf16 against f32: lens log-probs and DLA contributions within half precision.
    let (cells32, dla32) = lens_and_dla(&f32m, &tok, &texts);
    for (dtype, tol) in [(DType::F16, 0.01f32), (DType::BF16, 0.1)] {
        let (half, _, _) = load(dtype);
        let (cells, dla) = lens_and_dla(&half, &tok, &texts);
        let worst = cells32
            .iter()
            .zip(&cells)
            .map(|(a, b)| {
                (a.target.unwrap().1 - b.target.unwrap().1)
                    .abs()
                    .max((a.entropy - b.entropy).abs())
            })
            .fold(0f32, f32::max);
        let worst_dla = dla32
            .contributions
            .iter()
            .zip(&dla.contributions)
            .map(|(a, b)| (a.value - b.value).abs())
            .fold(0f32, f32::max);
        eprintln!("{dtype:?}: lens worst |diff| {worst:.4}, DLA worst |diff| {worst_dla:.4}");
        assert!(
            worst < tol && worst_dla < tol,
            "{dtype:?}: {worst} {worst_dla}"
        );
        let sum: f32 = dla.contributions.iter().map(|c| c.value).sum();
        assert!(
            (sum - dla.logit_diff).abs() < tol,
            "{dtype:?}: parts add up"
        );
    }
}

#[test]
fn family_decompositions_sum_back_and_the_lens_ends_at_the_model() {
    let load = |family: &str| {
        let dir = common::root().join("tests/fixtures").join(family);
        hooklens::load_model(Some(dir.to_str().unwrap()), &Default::default()).unwrap()
    };
    for family in ["neox", "qwen2", "qwen3", "mistral"] {
        let (model, tok, _) = load(family);
        let t = tok
            .to_tokens(
                &["The capital of France is Paris", "a b"],
                true,
                &Device::Cpu,
            )
            .unwrap();
        invariants(&model, &t);
    }
    // GPT-NeoX's MLP reads resid_pre: its input decomposes without the layer's attention.
    let (neox, tok, _) = load("neox");
    let t = tok
        .to_tokens(&["def add(a, b)"], true, &Device::Cpu)
        .unwrap();
    let (_, cache) = neox.run_with_cache(&t, NameFilter::All).unwrap();
    let opts = ResidOpts {
        layer: Some(1),
        mlp_input: true,
        ..Default::default()
    };
    let parts = cache
        .decompose_resid(&neox, &opts, Mode::All, true)
        .unwrap();
    assert!(
        !parts.labels.contains(&"1_attn_out".to_string()),
        "{:?}",
        parts.labels
    );
    let resid_pre = cache.block(1, BlockHook::ResidPre).unwrap();
    assert!(max_abs_diff(&parts.stack.sum(0).unwrap(), resid_pre) < 1e-4);
    let acc = cache.accumulated_resid(&neox, &opts, true).unwrap();
    assert_eq!(acc.labels, ["0_pre", "1_pre"]);

    // Gemma 2: layers add up (after their post-norms), the lens ends at the soft-capped
    // logits, and a split into heads is refused rather than wrong.
    let (gemma, tok, _) = load("gemma2");
    let t = tok
        .to_tokens(&["The capital of France is Paris"], true, &Device::Cpu)
        .unwrap();
    let (logits, cache) = gemma.run_with_cache(&t, NameFilter::All).unwrap();
    let all = ResidOpts::default();
    let layers = cache
        .decompose_resid(&gemma, &all, Mode::All, true)
        .unwrap();
    let resid = cache.block(2, BlockHook::ResidPost).unwrap();
    assert!(max_abs_diff(&layers.stack.sum(0).unwrap(), resid) < 1e-4 * max_abs(resid));
    let e = cache
        .stack_head_results(&gemma, &all)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ln1_post") && e.contains("hook_attn_out"), "{e}");
    assert_lens_ends_at_the_model(&gemma, &cache, &logits);
}

/// DLA adds up on every family: heads and neurons where they add up, whole attention layers
/// under Gemma 2's post-norms (and its logit difference before the final soft-cap).
#[test]
fn family_dla_parts_add_up_to_the_logit_difference() {
    use hooklens::analysis::dla::direct_logit_attribution;
    for family in ["neox", "gemma2", "qwen2", "qwen3", "mistral"] {
        let dir = common::root().join("tests/fixtures").join(family);
        let (model, tok, _) =
            hooklens::load_model(Some(dir.to_str().unwrap()), &Default::default()).unwrap();
        let texts = ["The capital of France is Paris", "def add(a, b): return"];
        let t = tok.to_tokens(&texts, true, &Device::Cpu).unwrap();
        let last: Vec<usize> = tok
            .lengths(&texts, true)
            .unwrap()
            .iter()
            .map(|l| l - 1)
            .collect();
        let (logits, cache) = model.run_with_cache(&t, NameFilter::All).unwrap();
        let (a, w) = (tok.encode(",").unwrap(), tok.encode(".").unwrap());
        let (answers, wrong) = (vec![a[0]; 2], vec![w[0]; 2]);
        let post_norms = model.cfg.use_normalization_before_and_after;
        for expand in [false, true] {
            let d = direct_logit_attribution(
                &model,
                &cache,
                &logits,
                (&answers, &wrong),
                &last,
                expand,
            );
            if expand && post_norms {
                let e = d.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(
                    e.contains("ln2_post"),
                    "{family}: neurons under post-norms: {e}"
                );
                continue;
            }
            let d = d.unwrap();
            let kinds: Vec<&str> = d.contributions.iter().map(|c| c.kind).collect();
            assert_eq!(kinds.contains(&"attn"), post_norms, "{family}: {kinds:?}");
            let sum: f32 = d.contributions.iter().map(|c| c.value).sum();
            assert!(
                (sum - d.logit_diff).abs() < 1e-4 * d.logit_diff.abs().max(1.0),
                "{family} expand {expand}: sum {sum} vs logit diff {}",
                d.logit_diff
            );
        }
    }
}

#[test]
fn the_lens_over_many_prompts_runs_in_chunks_and_equals_each_prompt_alone() {
    use hooklens::analysis::lens::{logit_lens_on, LENS_TOKENS_PER_PASS};
    let (model, _, _) = hooklens::load_model(None, &Default::default()).unwrap();
    // More prompts than one pass holds: 70 of 64 tokens.
    let (n, p) = (70, 64);
    assert!(n * p > LENS_TOKENS_PER_PASS);
    let ids: Vec<u32> = (0..n * p).map(|i| (i * 7 % 97) as u32 + 3).collect();
    let tokens = Tensor::from_vec(ids, (n, p), &Device::Cpu).unwrap();
    let opts = LensOpts {
        k: 3,
        target: Some(5),
        pos: Positions::All,
        incl_mid: true,
    };
    let all = logit_lens_on(&model, &tokens, &opts).unwrap();
    for i in [0, 63, 64, 69] {
        let alone = logit_lens_on(&model, &tokens.narrow(0, i, 1).unwrap(), &opts).unwrap();
        let mine: Vec<_> = all.iter().filter(|c| c.batch == i).collect();
        assert_eq!(mine.len(), alone.len());
        for (a, b) in mine.iter().zip(&alone) {
            assert_eq!((a.entry, a.pos), (b.entry, b.pos));
            assert_eq!(a.top[0].0, b.top[0].0, "prompt {i}");
            assert!((a.entropy - b.entropy).abs() < 1e-4, "prompt {i}");
        }
    }
}
