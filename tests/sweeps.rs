//! Ablation and patching sweeps: the fast engine (prefix reuse, causal suffix, batching,
//! metric-aware unembedding) against the naive loop of full forward passes.

mod common;

use common::*;
use hooklens::analysis::sweep::{naive, Job, Metric, Sweep, Target};
use hooklens::data::{ioi_pairs, tokenize_pairs, PairBatch, PromptPair};
use hooklens::{
    load_model, BlockHook, HookPoint, HookedTransformer, Intervention, LoadOptions, NameFilter,
    Processing, Site, Tokenizer,
};

fn embedded() -> (HookedTransformer, Tokenizer) {
    let (model, tok, _) = load_model(None, &LoadOptions::default()).unwrap();
    (model, tok)
}

/// Two pairs for the byte-level embedded model, of unequal length (right-padded).
fn embedded_batch(model: &HookedTransformer, tok: &Tokenizer) -> PairBatch {
    let pair = |clean: &str, corrupted: &str| PromptPair {
        clean: clean.into(),
        corrupted: corrupted.into(),
        answer: "o".into(),
        wrong: "r".into(),
        line: None,
    };
    let pairs = [
        pair(
            "Hello world! Hello world! Hello w",
            "Hello wyrld! Hello wyrld! Hello w",
        ),
        pair(
            "abcd Hello abcd Hello abcd Hell",
            "abcd Hellr abcd Hellr abcd Hell",
        ),
    ];
    let t = tokenize_pairs(&pairs, tok, true, "test").unwrap();
    PairBatch::new(&t, 0, model.device()).unwrap()
}

/// Every kind of job the binaries build: zero and mean ablation of heads, MLPs and neurons
/// over all positions, and patching from the clean run at single positions and whole heads,
/// from a cache and from the sweep's source prompts (the clean ones).
fn jobs(model: &HookedTransformer, batch: &PairBatch) -> Vec<Job> {
    let points: Vec<HookPoint> = model.hook_points();
    let (_, clean) = model
        .run_with_cache(&batch.clean, NameFilter::Points(points))
        .unwrap();
    let (_, corrupted) = model
        .run_with_cache(&batch.corrupted, NameFilter::All)
        .unwrap();
    let p = batch.clean.dim(1).unwrap();
    let mut jobs = vec![];
    for l in 0..model.cfg.n_layers {
        let z = HookPoint::block(l, BlockHook::Z);
        for h in 0..model.cfg.n_heads {
            jobs.push(Job::new(Site::head(z, h), Intervention::Zero));
            let mean = Intervention::mean_of(corrupted.get(z).unwrap()).unwrap();
            jobs.push(Job::new(Site::head(z, h), mean));
            let pattern = HookPoint::block(l, BlockHook::Pattern);
            jobs.push(Job::new(
                Site::head(pattern, h),
                Intervention::Patch(clean.get(pattern).unwrap().clone()),
            ));
            jobs.push(Job::new(
                Site::head(z, h).with_pos((l + 3 * h) % p),
                Intervention::Patch(clean.get(z).unwrap().clone()),
            ));
        }
        for pos in [0, 1, p / 2, p - 2, p - 1] {
            for hook in [BlockHook::ResidPre, BlockHook::AttnOut] {
                let point = HookPoint::block(l, hook);
                jobs.push(Job::new(
                    Site::at(point).with_pos(pos),
                    Intervention::Patch(clean.get(point).unwrap().clone()),
                ));
            }
        }
        if !model.cfg.attn_only {
            let out = HookPoint::block(l, BlockHook::MlpOut);
            jobs.push(Job::new(Site::at(out), Intervention::Zero));
            jobs.push(Job::new(
                Site::at(out).with_pos(p / 2),
                Intervention::Patch(clean.get(out).unwrap().clone()),
            ));
            // Patched from the clean run of each chunk of prompts (source 0).
            jobs.push(Job::from_source(Site::at(out).with_pos(p / 3), 0));
            jobs.push(Job::from_source(
                Site::head(HookPoint::block(l, BlockHook::Z), 1),
                0,
            ));
            jobs.push(Job::new(
                Site::neuron(HookPoint::block(l, BlockHook::MlpPost), 3),
                Intervention::Zero,
            ));
        }
    }
    jobs
}

fn assert_sweep_equals_naive(model: &HookedTransformer, batch: &PairBatch) {
    let jobs = jobs(model, batch);
    for metric in [Metric::LogitDiff, Metric::Loss, Metric::Prob] {
        let target = Target::new(batch, true).unwrap();
        let sources = vec![batch.clean.clone()];
        let want = naive(model, &[], &target, &sources, metric, &jobs).unwrap();
        // A small budget forces one or two prompts per chunk and many batches with different
        // offsets; a large one, one chunk and few batches.
        let p = batch.clean.dim(1).unwrap();
        for budget in [p, 2 * p + 1, 100_000] {
            let sweep = Sweep::with_sources(
                model,
                target.clone(),
                sources.clone(),
                metric,
                jobs.clone(),
                budget,
            )
            .unwrap();
            let per_chunk = budget / p;
            assert_eq!(sweep.chunks().len(), target.len().div_ceil(per_chunk));
            let got = sweep.compute().unwrap();
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 2e-5 * scale,
                    "{metric:?} budget {budget}: job {i} ({}) sweep {g} naive {w}",
                    jobs[i].site
                );
            }
            let base = naive(model, &[], &target, &[], metric, &[]).unwrap();
            assert!(base.is_empty());
        }
    }
}

#[test]
fn sweeps_equal_the_naive_loop_on_the_embedded_model() {
    let (model, tok) = embedded();
    assert_sweep_equals_naive(&model, &embedded_batch(&model, &tok));
}

#[test]
fn sweeps_equal_the_naive_loop_on_the_random_gpt2() {
    let dir = gpt2_dir();
    let (model, tok) = load_gpt2(dir.path(), Processing::default());
    // Three IOI pairs from different templates: unequal lengths, right-padded.
    let pairs = ioi_pairs(&tok, 3, 1).unwrap();
    let t = tokenize_pairs(&pairs, &tok, true, "ioi").unwrap();
    let batch = PairBatch::new(&t, 0, model.device()).unwrap();
    assert!(batch.lengths.iter().any(|&l| l != batch.lengths[0]));
    assert_sweep_equals_naive(&model, &batch);
}

#[test]
fn patching_the_whole_residual_stream_recovers_the_clean_metric() {
    let (model, tok) = embedded();
    let batch = embedded_batch(&model, &tok);
    let (clean_logits, clean) = model.run_with_cache(&batch.clean, NameFilter::All).unwrap();
    let target = Target::new(&batch, true).unwrap();
    let clean_value = Metric::LogitDiff.of_logits(&clean_logits, &target).unwrap();
    let clean_value = clean_value.iter().sum::<f32>() / clean_value.len() as f32;
    let jobs: Vec<Job> = (0..model.cfg.n_layers)
        .map(|l| {
            let point = HookPoint::block(l, BlockHook::ResidPre);
            Job::new(
                Site::at(point),
                Intervention::Patch(clean.get(point).unwrap().clone()),
            )
        })
        .collect();
    let sweep = Sweep::new(&model, target, Metric::LogitDiff, jobs, 4096).unwrap();
    assert!(
        (sweep.baseline() - clean_value).abs() > 0.1,
        "the pairs differ"
    );
    for v in sweep.compute().unwrap() {
        assert!((v - clean_value).abs() < 1e-5, "{v} vs {clean_value}");
    }
}

#[test]
fn mean_ablation_over_identical_prompts_changes_nothing() {
    let (model, tok) = embedded();
    let text = "Hello world! Hello world! Hello w";
    let pair = PromptPair {
        clean: text.into(),
        corrupted: text.into(),
        answer: "o".into(),
        wrong: "r".into(),
        line: None,
    };
    let t = tokenize_pairs(&[pair.clone(), pair.clone(), pair], &tok, true, "t").unwrap();
    let batch = PairBatch::new(&t, 0, model.device()).unwrap();
    let (_, cache) = model.run_with_cache(&batch.clean, NameFilter::All).unwrap();
    let mut jobs = vec![];
    for l in 0..model.cfg.n_layers {
        let z = HookPoint::block(l, BlockHook::Z);
        for h in 0..model.cfg.n_heads {
            jobs.push(Job::new(
                Site::head(z, h),
                Intervention::mean_of(cache.get(z).unwrap()).unwrap(),
            ));
        }
    }
    for metric in [Metric::Loss, Metric::LogitDiff] {
        let target = Target::new(&batch, false).unwrap();
        let sweep = Sweep::new(&model, target, metric, jobs.clone(), 4096).unwrap();
        for v in sweep.compute().unwrap() {
            assert!(
                (v - sweep.baseline()).abs() < 1e-5,
                "{v} vs {}",
                sweep.baseline()
            );
        }
    }
}

#[test]
fn one_ioi_template_gives_pairs_of_one_length() {
    let dir = gpt2_dir();
    let (_, tok) = load_gpt2(dir.path(), Processing::default());
    let pairs = hooklens::data::ioi_pairs_with(&tok, 6, 2, Some(0)).unwrap();
    let t = tokenize_pairs(&pairs, &tok, true, "ioi").unwrap();
    assert!(t.iter().all(|p| p.clean.len() == t[0].clean.len()));
    assert!(pairs.iter().all(|p| p.clean.starts_with("When ")));
    let e = hooklens::data::ioi_pairs_with(&tok, 1, 0, Some(6)).unwrap_err();
    assert!(e.to_string().contains("ioi_template 6"), "{e}");
}

#[test]
fn top_neurons_rank_by_mean_activation_and_by_dla() {
    use hooklens::analysis::ablation::{top_neurons, NeuronRank, Unit};
    let dir = gpt2_dir();
    let (model, tok) = load_gpt2(dir.path(), Processing::default());
    let t = tokenize_pairs(&ioi_pairs(&tok, 3, 1).unwrap(), &tok, true, "ioi").unwrap();
    let batch = PairBatch::new(&t, 0, model.device()).unwrap();
    assert!(batch.lengths.iter().any(|&l| l != batch.lengths[0]));
    let by_mean = top_neurons(&model, &batch, &[0, 2], 3, NeuronRank::Mean, 4096).unwrap();
    assert_eq!(by_mean.len(), 6);
    assert!(matches!(by_mean[3], Unit::Neuron { layer: 2, .. }));
    // The first pick has the largest mean activation of its layer over the real positions.
    let point = HookPoint::block(0, BlockHook::MlpPost);
    let (_, cache) = model
        .run_with_cache(&batch.clean, NameFilter::Points(vec![point]))
        .unwrap();
    let act = cache.get(point).unwrap();
    let mean = |n: usize| {
        let mut sum = 0f32;
        let mut count = 0;
        for (b, &len) in batch.lengths.iter().enumerate() {
            let v = act.get(b).unwrap().narrow(0, 0, len).unwrap();
            let v: Vec<Vec<f32>> = v.to_vec2().unwrap();
            sum += v.iter().map(|r| r[n]).sum::<f32>();
            count += len;
        }
        sum / count as f32
    };
    let Unit::Neuron { neuron: best, .. } = by_mean[0] else {
        panic!("{:?}", by_mean[0])
    };
    assert!((0..model.cfg.d_mlp).all(|n| mean(n) <= mean(best) + 1e-5));
    let by_dla = top_neurons(&model, &batch, &[1], 4, NeuronRank::Dla, 4096).unwrap();
    assert_eq!(by_dla.len(), 4);
    assert!(top_neurons(&model, &batch, &[3], 1, NeuronRank::Mean, 4096).is_err());
}

#[test]
fn a_padded_batch_gives_the_mean_of_each_prompt_alone() {
    use hooklens::analysis::ablation::{ablation_jobs, Ablation, Unit};
    let dir = gpt2_dir();
    let (model, tok) = load_gpt2(dir.path(), Processing::default());
    let t = tokenize_pairs(&ioi_pairs(&tok, 3, 1).unwrap(), &tok, true, "ioi").unwrap();
    let batch = PairBatch::new(&t, 0, model.device()).unwrap();
    assert!(
        batch.lengths.iter().any(|&l| l != batch.lengths[0]),
        "padding"
    );
    let units = Unit::all_heads(&model);
    for metric in [Metric::LogitDiff, Metric::Loss, Metric::Prob] {
        let jobs = ablation_jobs(&units, Ablation::Zero, None).unwrap();
        let run = |b: &PairBatch| {
            let sweep = Sweep::new(
                &model,
                Target::new(b, false).unwrap(),
                metric,
                jobs.clone(),
                4096,
            )
            .unwrap();
            let mut v = sweep.compute().unwrap();
            v.push(sweep.baseline());
            v
        };
        let together = run(&batch);
        let alone: Vec<Vec<f32>> = (0..t.len())
            .map(|i| run(&PairBatch::new(&t[i..i + 1], 0, model.device()).unwrap()))
            .collect();
        for (j, v) in together.iter().enumerate() {
            let mean = alone.iter().map(|a| a[j]).sum::<f32>() / alone.len() as f32;
            assert!(
                (v - mean).abs() < 1e-5 * v.abs().max(1.0),
                "{metric:?} job {j}: {v} vs {mean}"
            );
        }
    }
}

/// The families' new axes (sliding windows, soft-caps, post-norms, QK-norm, parallel blocks,
/// partial rotary) under the sweep engine's prefix reuse and causal suffix.
#[test]
fn sweeps_equal_the_naive_loop_on_every_model_family() {
    for family in ["neox", "gemma2", "qwen2", "qwen3", "mistral"] {
        let dir = root().join("tests/fixtures").join(family);
        let (model, tok, _) =
            load_model(Some(dir.to_str().unwrap()), &LoadOptions::default()).unwrap();
        let pair = |clean: &str, corrupted: &str| PromptPair {
            clean: clean.into(),
            corrupted: corrupted.into(),
            answer: ",".into(),
            wrong: ".".into(),
            line: None,
        };
        let pairs = [
            pair(
                "The capital of France is Paris, and of Italy",
                "The capital of Italy is Paris, and of France",
            ),
            pair("def add(a, b): return a + b", "def add(b, a): return b + a"),
        ];
        let t = tokenize_pairs(&pairs, &tok, true, family).unwrap();
        let batch = PairBatch::new(&t, 0, model.device()).unwrap();
        assert!(
            batch.lengths.iter().all(|&l| l > 6),
            "{family}: longer than the windows"
        );
        eprintln!("{family}: {:?} tokens", batch.lengths);
        assert_sweep_equals_naive(&model, &batch);
    }
}
