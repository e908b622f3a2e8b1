//! The activation store's reader: the mixing buffer hands out every row exactly once, seeded;
//! the model on the fly and the store on disk give the same rows (within rounding); one-pass statistics equal a
//! brute-force mean; a capture stops after its deepest layer.

mod common;

use candle_core::{DType, Device, Tensor};
use hooklens::corpus::{pack, read_documents, Contexts, Packing};
use hooklens::store::{
    hook_stats, write_shard, ActivationStore, Batches, Capture, Source, StoreSpec, StoredHook,
    TokenFilter, FORMAT,
};
use hooklens::{load_model, HookPoint, HookedTransformer, LoadOptions};
use std::path::Path;

fn setup() -> (HookedTransformer, Contexts) {
    let (model, tok, _) = load_model(None, &LoadOptions::default()).unwrap();
    let docs = read_documents(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/corpus/tiny.txt"
        )),
        "text",
    )
    .unwrap();
    let packing = Packing {
        context_len: 32,
        bos: tok.bos_token_id,
        separator: tok.bos_token_id,
        seed: 0,
    };
    let contexts = pack(&docs, &tok, model.cfg.n_ctx, &packing, Some(24)).unwrap();
    (model, contexts)
}

/// Writes `capture` over `contexts` as a store in `dir`, 5 contexts a shard, 2 a batch.
fn write_store(dir: &Path, capture: &Capture, contexts: &Contexts) -> ActivationStore {
    let shapes = capture.shapes().unwrap();
    let spec = StoreSpec {
        format: FORMAT.into(),
        hooks: capture
            .hooks
            .iter()
            .zip(shapes)
            .map(|(h, shape)| StoredHook {
                name: h.to_string(),
                shape,
            })
            .collect(),
        dtype: "f32".into(),
        context_len: contexts.context_len,
        contexts: contexts.len(),
        tokens: contexts.tokens.len(),
        contexts_per_shard: 5,
        contexts_per_batch: 2,
        shards: contexts.len().div_ceil(5),
        stop_at_layer: capture.stop_at_layer,
        provenance: serde_json::Value::Null,
    };
    std::fs::write(
        dir.join("store.json"),
        serde_json::to_string(&spec).unwrap(),
    )
    .unwrap();
    for i in 0..spec.shards {
        let data = capture.shard(&spec, contexts, i, &mut |_| {}).unwrap();
        write_shard(dir, &spec, i, &data).unwrap();
    }
    ActivationStore::open(dir).unwrap()
}

/// Asserts that `got` holds the rows of `want`, each once, within float rounding (in any
/// order): each row of `got` is matched to the nearest row of `want` not matched yet.
fn same_rows_rounded(got: &Tensor, want: &Tensor) {
    let (got, want) = (
        got.to_vec2::<f32>().unwrap(),
        want.to_vec2::<f32>().unwrap(),
    );
    assert_eq!(got.len(), want.len(), "row count");
    let scale = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let mut used = vec![false; want.len()];
    for (i, row) in got.iter().enumerate() {
        let (j, d) = (0..want.len())
            .filter(|&j| !used[j])
            .map(|j| (j, dist(row, &want[j])))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        assert!(
            d <= 1e-5 * scale,
            "row {i}: nearest unmatched row {j} is {d} away"
        );
        used[j] = true;
    }
}

fn rows(t: &Tensor) -> Vec<Vec<u32>> {
    let mut v: Vec<Vec<u32>> = t
        .to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| r.iter().map(|x| x.to_bits()).collect())
        .collect();
    v.sort();
    v
}

#[test]
fn the_mixing_buffer_hands_out_every_row_once_seeded() {
    let (model, contexts) = setup();
    let hooks = vec![
        "blocks.0.hook_resid_post".parse().unwrap(),
        "blocks.1.attn.hook_z".parse().unwrap(),
    ];
    let capture = Capture::new(&model, hooks, DType::F32).unwrap();
    assert_eq!(capture.stop_at_layer, Some(2));
    let dir = tempfile::tempdir().unwrap();
    let store = write_store(dir.path(), &capture, &contexts);
    assert_eq!(store.spec.shards, 5);
    let disk = Source::Disk(&store);
    let all = Tensor::cat(
        &(0..5)
            .map(|i| store.read(i, "blocks.1.attn.hook_z").unwrap())
            .collect::<Vec<_>>(),
        0,
    )
    .unwrap();
    assert_eq!(all.dims(), &[24 * 32, 64]);
    let batches = |source: &Source, seed| -> Vec<Tensor> {
        Batches::new(source, &[1], 50, 200, seed)
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
    };
    let a = batches(&disk, 7);
    assert!(a[..a.len() - 1].iter().all(|b| b.dims() == [50, 64]));
    let got = Tensor::cat(&a, 0).unwrap();
    assert_eq!(rows(&got), rows(&all), "every row exactly once");
    let again = Tensor::cat(&batches(&disk, 7), 0).unwrap();
    assert_eq!(
        again.to_vec2::<f32>().unwrap(),
        got.to_vec2::<f32>().unwrap(),
        "seeded"
    );
    let other = Tensor::cat(&batches(&disk, 8), 0).unwrap();
    assert_ne!(
        other.to_vec2::<f32>().unwrap(),
        got.to_vec2::<f32>().unwrap()
    );
    // Mixed: the first batch draws from more than one context.
    let first = &a[0];
    let ctx_of = |row: &[f32]| {
        (0..all.dim(0).unwrap())
            .find(|&r| all.get(r).unwrap().to_vec1::<f32>().unwrap() == row)
            .unwrap()
            / 32
    };
    let contexts_seen: std::collections::HashSet<usize> = first
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|r| ctx_of(r))
        .collect();
    assert!(
        contexts_seen.len() > 3,
        "first batch from {} contexts",
        contexts_seen.len()
    );
    // The model on the fly gives the same rows as the disk, within rounding: it runs the
    // forward on other batches (4 contexts, not 2), and a BLAS may round a product of another
    // size differently.
    let live = Source::Model {
        capture: &capture,
        contexts: &contexts,
        contexts_per_chunk: 4,
    };
    let fly = Tensor::cat(&batches(&live, 7), 0).unwrap();
    same_rows_rounded(&fly, &all);
    // From position 3 on: exactly the rows at positions 3.. of each context, from either source.
    let later: Vec<u32> = (0..all.dim(0).unwrap() as u32)
        .filter(|r| r % 32 >= 3)
        .collect();
    let later = all
        .index_select(&Tensor::new(later, &Device::Cpu).unwrap(), 0)
        .unwrap();
    let from_position_3 = |source: &Source| {
        let b: Vec<Tensor> = Batches::new(source, &[1], 50, 200, 7)
            .unwrap()
            .filtered(TokenFilter {
                skip_tokens: vec![],
                from_position: 3,
                max_norm: None,
            })
            .map(|b| b.unwrap())
            .collect();
        Tensor::cat(&b, 0).unwrap()
    };
    assert_eq!(rows(&from_position_3(&disk)), rows(&later));
    same_rows_rounded(&from_position_3(&live), &later);
    // Under a norm: exactly the rows within it.
    let norms: Vec<f32> = all
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .sqrt()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut sorted = norms.clone();
    sorted.sort_by(f32::total_cmp);
    let m = sorted[sorted.len() / 2];
    let small: Vec<u32> = (0..norms.len() as u32)
        .filter(|&r| norms[r as usize] <= m)
        .collect();
    let small = all
        .index_select(&Tensor::new(small, &Device::Cpu).unwrap(), 0)
        .unwrap();
    let b: Vec<Tensor> = Batches::new(&disk, &[1], 50, 200, 7)
        .unwrap()
        .filtered(TokenFilter {
            max_norm: Some(m),
            ..TokenFilter::all()
        })
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(rows(&Tensor::cat(&b, 0).unwrap()), rows(&small));
    assert!(Batches::new(&disk, &[0], 50, 60, 0).is_err());
}

#[test]
fn statistics_equal_a_brute_force_pass_and_stop_layers_follow_the_hooks() {
    let (model, contexts) = setup();
    let capture = Capture::new(
        &model,
        vec!["blocks.0.attn.hook_z".parse().unwrap()],
        DType::F32,
    )
    .unwrap();
    assert_eq!(capture.stop_at_layer, Some(1));
    let dir = tempfile::tempdir().unwrap();
    let store = write_store(dir.path(), &capture, &contexts);
    let stats = hook_stats(
        &Source::Disk(&store),
        &["blocks.0.attn.hook_z".into()],
        &mut |_| {},
    )
    .unwrap();
    let all = Tensor::cat(
        &(0..store.spec.shards)
            .map(|i| store.read(i, "blocks.0.attn.hook_z").unwrap())
            .collect::<Vec<_>>(),
        0,
    )
    .unwrap();
    let mean: Vec<f32> = all.mean(0).unwrap().to_vec1().unwrap();
    let norms: Vec<f32> = all
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .sqrt()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(stats[0].tokens, 24 * 32);
    for (a, b) in stats[0].mean.iter().zip(&mean) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    let mean_norm = norms.iter().sum::<f32>() / norms.len() as f32;
    assert!((stats[0].mean_norm - mean_norm).abs() < 1e-4 * mean_norm);
    let max = norms.iter().cloned().fold(0.0, f32::max);
    assert!((stats[0].max_norm - max).abs() < 1e-5 * max);
    // Embedding hooks stop before layer 0; ln_final runs the whole model.
    let c = Capture::new(&model, vec![HookPoint::Embed], DType::F32).unwrap();
    assert_eq!(c.stop_at_layer, Some(0));
    assert_eq!(
        c.activations(&contexts.batch(0..1, &Device::Cpu).unwrap())
            .unwrap()[0]
            .dims(),
        &[32, 64]
    );
    let c = Capture::new(&model, vec![HookPoint::LnFinalNormalized], DType::F16).unwrap();
    assert_eq!(c.stop_at_layer, None);
    assert_eq!(c.shapes().unwrap(), vec![vec![64]]);
}

#[test]
fn dashboards_equal_a_brute_force_top_k() {
    use hooklens::analysis::dashboards::{
        dashboards, logit_effects, output_directions, DashboardOptions,
    };
    let (model, contexts) = setup();
    let hook: HookPoint = "blocks.1.attn.hook_z".parse().unwrap();
    let capture = Capture::new(&model, vec![hook], DType::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = write_store(dir.path(), &capture, &contexts);
    let units: Vec<usize> = (0..64).step_by(3).collect();
    let opts = DashboardOptions {
        units: units.clone(),
        k: 6,
        bins: 10,
        before: 4,
        after: 2,
        tokens: TokenFilter {
            skip_tokens: vec![256],
            from_position: 3,
            max_norm: None,
        },
    };
    let dash = dashboards(&store, "blocks.1.attn.hook_z", &opts, &mut |_| {}).unwrap();
    let all: Vec<Vec<f32>> = Tensor::cat(
        &(0..store.spec.shards)
            .map(|i| store.read(i, "blocks.1.attn.hook_z").unwrap())
            .collect::<Vec<_>>(),
        0,
    )
    .unwrap()
    .to_vec2()
    .unwrap();
    for (d, &u) in dash.iter().zip(&units) {
        let col: Vec<f32> = all.iter().map(|r| r[u]).collect();
        // BOS and separators (256) left out, and each context's first 3 positions.
        let counted = |t: usize| contexts.tokens[t] != 256 && t % 32 >= 3;
        let kept: Vec<f32> = (0..col.len())
            .filter(|&t| counted(t))
            .map(|t| col[t])
            .collect();
        let mut order: Vec<usize> = (0..col.len()).filter(|&t| counted(t)).collect();
        order.sort_by(|&a, &b| col[b].total_cmp(&col[a]).then(a.cmp(&b)));
        let want: Vec<(u64, f32)> = order[..6].iter().map(|&t| (t as u64, col[t])).collect();
        let got: Vec<(u64, f32)> = d.examples.iter().map(|e| (e.token, e.activation)).collect();
        assert_eq!(got, want, "unit {u}");
        let e = &d.examples[0];
        let c = 32;
        for (o, &(id, v)) in e.window.iter().enumerate() {
            let t = e.context * c + e.window_start + o;
            assert_eq!(id, contexts.tokens[t]);
            assert_eq!(v, col[t]);
        }
        assert!(e.window_start == e.position.saturating_sub(4) && e.window.len() <= 7);
        assert_eq!(d.histogram.counts.iter().sum::<u64>(), kept.len() as u64);
        assert_eq!(d.tokens, kept.len() as u64);
        let (lo, hi) = (d.histogram.lo, d.histogram.hi);
        assert_eq!((lo, hi), (d.min, d.max));
        let top_bin = kept
            .iter()
            .filter(|&&v| ((v - lo) / (hi - lo) * 10.0) as usize >= 9)
            .count() as u64;
        assert_eq!(d.histogram.counts[9], top_bin);
        let mean = kept.iter().map(|&v| v as f64).sum::<f64>() / kept.len() as f64;
        assert!((d.mean as f64 - mean).abs() < 1e-5);
    }
    // Logit effects of hook_z units are W_O's rows times W_U.
    let dirs = output_directions(&model, &hook).unwrap().unwrap();
    let effects = logit_effects(&model, &dirs, &[5], 3).unwrap();
    let w_o = model.W_O(1).unwrap().reshape((64, 64)).unwrap();
    let want = w_o
        .get(5)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .matmul(&model.w_u.contiguous().unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let best = want.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    assert!(
        (effects[0].0[0].1 - best).abs() < 1e-4,
        "{:?} vs {best}",
        effects[0].0[0]
    );
    let worst = want.iter().cloned().fold(f32::INFINITY, f32::min);
    assert!((effects[0].1[0].1 - worst).abs() < 1e-4);
    let e = dashboards(
        &store,
        "blocks.1.attn.hook_z",
        &DashboardOptions {
            units: vec![64],
            ..opts
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("units 64"), "{e}");
}

#[test]
fn mean_ablation_from_a_store_equals_the_naive_loop_with_the_corpus_mean() {
    use hooklens::analysis::ablation::{Ablation, AblationSweep, MeanReference, Unit};
    use hooklens::analysis::sweep::{naive, Job, Metric, Target};
    use hooklens::data::{tokenize_pairs, PairBatch, PromptPair};
    use hooklens::{BlockHook, Intervention, Site};
    let (model, contexts) = setup();
    let (_, tok, _) = load_model(None, &LoadOptions::default()).unwrap();
    let z: Vec<HookPoint> = (0..2).map(|l| HookPoint::block(l, BlockHook::Z)).collect();
    let capture = Capture::new(&model, z.clone(), DType::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = write_store(dir.path(), &capture, &contexts);
    let names: Vec<String> = z.iter().map(|p| p.to_string()).collect();
    let stats = hook_stats(&Source::Disk(&store), &names, &mut |_| {}).unwrap();
    let means: std::collections::HashMap<HookPoint, Tensor> = z
        .iter()
        .zip(&stats)
        .map(|(&p, s)| {
            (
                p,
                Tensor::from_slice(&s.mean, (4, 16), &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let pair = PromptPair {
        clean: "Hello world! Hello world! Hello w".into(),
        corrupted: "Hello wyrld! Hello wyrld! Hello w".into(),
        answer: "o".into(),
        wrong: "r".into(),
        line: None,
    };
    let batch = PairBatch::new(
        &tokenize_pairs(&[pair], &tok, true, "t").unwrap(),
        0,
        &Device::Cpu,
    )
    .unwrap();
    let heads = Unit::all_heads(&model);
    let plan = AblationSweep::new(
        &model,
        &batch,
        heads.clone(),
        vec![Ablation::Mean],
        &[Metric::Loss],
        &MeanReference::Means(means.clone()),
        0,
        4096,
    )
    .unwrap();
    let got = plan.sweeps[0].compute().unwrap();
    // The naive loop, each head set to the brute-force mean of its store rows.
    let jobs: Vec<Job> = heads
        .iter()
        .map(|u| {
            let Unit::Head { layer, head } = *u else {
                unreachable!()
            };
            let all = Tensor::cat(
                &(0..store.spec.shards)
                    .map(|i| store.read(i, &names[layer]).unwrap())
                    .collect::<Vec<_>>(),
                0,
            )
            .unwrap();
            let mean = all.mean(0).unwrap().reshape((1, 1, 4, 16)).unwrap();
            Job::new(Site::head(z[layer], head), Intervention::Mean(mean))
        })
        .collect();
    let want = naive(
        &model,
        &[],
        &Target::new(&batch, false).unwrap(),
        &[],
        Metric::Loss,
        &jobs,
    )
    .unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4, "{g} vs {w}");
    }
    assert!(
        got.iter()
            .any(|v| (v - plan.sweeps[0].baseline()).abs() > 1e-3),
        "the ablations change the loss"
    );
    let mut partial = means.clone();
    partial.remove(&z[1]);
    let e = AblationSweep::new(
        &model,
        &batch,
        heads,
        vec![Ablation::Mean],
        &[Metric::Loss],
        &MeanReference::Means(partial),
        0,
        4096,
    )
    .err()
    .unwrap();
    assert!(
        e.to_string()
            .contains("capture it (--hooks blocks.1.attn.hook_z)"),
        "{e}"
    );
}

#[test]
fn a_cache_file_written_pass_by_pass_equals_the_whole_batch_saved() {
    let (model, tok, _) = load_model(None, &LoadOptions::default()).unwrap();
    let texts = ["abc abc abc", "ab", "cab cab", "a", "bca bc ab ca"];
    let tokens = tok.to_tokens(&texts, true, model.device()).unwrap();
    let lengths = tok.lengths(&texts, true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let filter = hooklens::NameFilter::All;
    let (_, mut whole) = model.run_with_cache(&tokens, filter.clone()).unwrap();
    whole.set_tokens(&tokens, lengths.clone()).unwrap();
    whole.save(&dir.path().join("whole.safetensors")).unwrap();
    let pos = tokens.dim(1).unwrap();
    // Passes of 1 and 2 prompts (the last pass short).
    for per_pass in [1, 2] {
        let path = dir.path().join(format!("passes{per_pass}.safetensors"));
        let mut done = vec![];
        let file = hooklens::cache_file::write_cache(
            &model,
            &tokens,
            &lengths,
            &filter,
            per_pass * pos,
            &path,
            &mut |n| done.push(n),
        )
        .unwrap();
        assert_eq!(done.iter().sum::<usize>(), texts.len(), "{done:?}");
        assert_eq!(done.len(), texts.len().div_ceil(per_pass));
        assert_eq!(file.bytes, std::fs::metadata(&path).unwrap().len());
        let (a, b) = (
            candle_core::safetensors::load(dir.path().join("whole.safetensors"), &Device::Cpu)
                .unwrap(),
            candle_core::safetensors::load(&path, &Device::Cpu).unwrap(),
        );
        assert_eq!(a.len(), b.len());
        assert_eq!(file.tensors.len(), a.len());
        for (name, shape) in &file.tensors {
            let (x, y) = (&a[name], &b[name]);
            assert_eq!(x.dims(), &shape[..], "{name}");
            assert_eq!(y.dims(), &shape[..], "{name}");
            // In f32: `tokens` and `lengths` are u32, whose difference would wrap.
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let (d, scale) = (
                common::max_abs_diff(&f32(x), &f32(y)),
                common::max_abs(x).max(1.0),
            );
            // Batches of other sizes may round differently in the last bits.
            assert!(d <= 1e-5 * scale, "{name}: {d} at scale {scale}");
        }
    }
}
