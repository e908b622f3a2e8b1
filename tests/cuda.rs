//! The CUDA path against the CPU path (built only with `--features cuda`; needs a GPU).
//!
//! Every fixture family, unprocessed and processed: log-probs and every hook point on the GPU
//! equal the CPU's within float32 rounding, and the families' log-probs equal TransformerLens's;
//! KV-cache generation, the sweep engine and half precision on the GPU give the CPU's answers.
//!
//!     cargo test --features cuda --test cuda -- --nocapture
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use common::*;
use hooklens::analysis::ablation::{ablation_jobs, Ablation, Unit};
use hooklens::analysis::patching::Grid;
use hooklens::analysis::sweep::{Job, Metric, Sweep, Target};
use hooklens::data::PairBatch;
use hooklens::generate::{generate, GenerateOptions};
use hooklens::{load_model, HookedTransformer, Hooks, LoadOptions, NameFilter, Processing};

/// Largest difference between CPU and GPU, relative to the activation's scale (residual streams
/// of random models grow large), as the families' parity test measures it.
const TOL: f32 = 1e-4;

fn gpu() -> Device {
    Device::new_cuda(0).expect("a CUDA device: run on a machine with a GPU")
}

/// (the model on the CPU, the same model on the GPU).
fn both(spec: Option<&str>, processing: Processing, dtype: DType) -> [HookedTransformer; 2] {
    [Device::Cpu, gpu()].map(|device| {
        let opts = LoadOptions {
            processing: processing.clone(),
            device,
            dtype,
            ..Default::default()
        };
        load_model(spec, &opts).unwrap().0
    })
}

fn fixture(name: &str) -> String {
    root()
        .join("tests/fixtures")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_device(&Device::Cpu).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap();
    let scale = max_abs(&a).max(1.0);
    // Masked attention scores are -inf on both sides.
    let (a, b) = (
        a.clamp(-1e4f32, f32::MAX).unwrap(),
        b.clamp(-1e4f32, f32::MAX).unwrap(),
    );
    max_abs_diff(&a, &b) / scale
}

fn log_probs(logits: &Tensor) -> Tensor {
    let logits = logits.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu);
    candle_nn::ops::log_softmax(&logits.unwrap().i(0).unwrap(), D::Minus1).unwrap()
}

/// Runs both with the full cache on each token sequence; returns the worst log-prob difference
/// and the worst hook (relative difference, name), and checks that both caches hold the same
/// hook points.
fn compare_all_hooks(models: &[HookedTransformer; 2], prompts: &[Vec<u32>]) -> (f32, f32, String) {
    let (mut worst_lp, mut worst, mut name) = (0f32, 0f32, String::new());
    for ids in prompts {
        let [cpu, gpu] = models.each_ref().map(|m| {
            let t = Tensor::new(ids.as_slice(), m.device())
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            m.run_with_cache(&t, NameFilter::All).unwrap()
        });
        assert!(cpu.1.len() > 10 && cpu.1.len() == gpu.1.len());
        worst_lp = worst_lp.max(max_abs_diff(&log_probs(&cpu.0), &log_probs(&gpu.0)));
        for (point, want) in cpu.1.iter() {
            let d = rel_diff(want, gpu.1.get(*point).unwrap());
            if d > worst || name.is_empty() {
                (worst, name) = (d, point.to_string());
            }
        }
    }
    (worst_lp, worst, name)
}

#[test]
fn every_family_matches_the_cpu_at_every_hook_point() {
    let families = ["neox", "gemma2", "qwen2", "qwen3", "mistral"];
    let mut cases: Vec<(&str, Option<String>)> = vec![
        ("embedded", None),
        (
            "gpt2-random",
            Some(gpt2_dir().keep().to_str().unwrap().into()),
        ),
    ];
    cases.extend(families.iter().map(|f| (*f, Some(fixture(f)))));
    for (family, spec) in &cases {
        // The families' reference prompts where there are some (they bind the sliding windows
        // and soft-caps), else a spread of ids.
        let reference = families.contains(family).then(|| {
            candle_core::safetensors::load(
                root().join(format!("tests/reference/{family}_ref.safetensors")),
                &Device::Cpu,
            )
            .unwrap()
        });
        for (mode, processing) in [
            ("unprocessed", Processing::none()),
            ("processed", Processing::default()),
        ] {
            let models = both(spec.as_deref(), processing, DType::F32);
            let d_vocab = models[0].cfg.d_vocab as u64;
            let prompts: Vec<Vec<u32>> = match &reference {
                Some(r) => (0..)
                    .map_while(|i| r.get(&format!("p{i}.tokens")))
                    .map(|t| t.to_dtype(DType::U32).unwrap().to_vec1().unwrap())
                    .collect(),
                None => vec![(0..40u64).map(|i| (i * 7919 % d_vocab) as u32).collect()],
            };
            let (lp, worst, name) = compare_all_hooks(&models, &prompts);
            eprintln!(
                "{family} {mode}: GPU vs CPU max |Δ log-prob| {lp:.2e}, worst hook {name} {worst:.2e}"
            );
            assert!(lp < TOL, "{family} {mode}: log-probs differ by {lp}");
            assert!(worst < TOL, "{family} {mode}: {name} differs by {worst}");
            // And against TransformerLens, as tests/families.rs holds the CPU to.
            if let Some(r) = &reference {
                for (i, ids) in prompts.iter().enumerate() {
                    let t = Tensor::new(ids.as_slice(), models[1].device())
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap();
                    let logits = models[1].forward(&t, &mut Hooks::none()).unwrap();
                    let want = &r[&format!("{mode}.p{i}.logprobs")];
                    let d = max_abs_diff(&log_probs(&logits), want);
                    eprintln!("{family} {mode} p{i}: GPU vs TransformerLens {d:.2e}");
                    assert!(d < TOL, "{family} {mode} p{i}: GPU vs TransformerLens {d}");
                }
            }
        }
    }
}

#[test]
fn kv_cache_generation_on_the_gpu_gives_the_cpu_tokens() {
    for spec in [None, Some(fixture("qwen3")), Some(fixture("gemma2"))] {
        let models = both(spec.as_deref(), Processing::default(), DType::F32);
        let prompt: Vec<u32> = vec![1, 17, 33, 5, 9, 41, 2, 17, 33];
        let opts = GenerateOptions {
            max_new_tokens: 24,
            stop_at_eos: false,
            ..Default::default()
        };
        let [cpu, gpu] = models
            .each_ref()
            .map(|m| generate(m, &prompt, &opts, &mut Hooks::none()).unwrap());
        eprintln!("{spec:?}: CPU {cpu:?} GPU {gpu:?}");
        assert_eq!(cpu, gpu, "{spec:?}");
        let no_cache = GenerateOptions {
            use_kv_cache: false,
            ..opts
        };
        let again = generate(&models[1], &prompt, &no_cache, &mut Hooks::none()).unwrap();
        assert_eq!(gpu, again, "{spec:?}: GPU with and without the KV cache");
    }
}

/// The sweep engine (prefix reuse, causal suffix, batched interventions) on the GPU equals the
/// CPU's values: every head zero-ablated and the resid_pre patching grid, on the random GPT-2.
#[test]
fn sweeps_on_the_gpu_give_the_cpu_values() {
    let dir = gpt2_dir();
    let models = both(dir.path().to_str(), Processing::default(), DType::F32);
    let p = 20;
    let clean: Vec<u32> = (0..p as u64).map(|i| (i * 7919 % 50257) as u32).collect();
    let mut corrupted = clean.clone();
    corrupted[3] = 1000;
    corrupted[11] = 2000;
    let results = models.each_ref().map(|m| {
        let dev = m.device();
        let batch = PairBatch {
            clean: Tensor::new(clean.as_slice(), dev)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            corrupted: Tensor::new(corrupted.as_slice(), dev)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            lengths: vec![p],
            answers: vec![262],
            wrong: vec![286],
        };
        let heads = Unit::all_heads(m);
        let mut values = vec![];
        for metric in [Metric::Loss, Metric::LogitDiff] {
            let jobs = ablation_jobs(&heads, Ablation::Zero, None).unwrap();
            let target = Target::new(&batch, false).unwrap();
            let sweep = Sweep::new(m, target, metric, jobs, 64).unwrap();
            values.extend(sweep.compute().unwrap());
        }
        let jobs = Grid::ResidPre
            .cells(m, p)
            .unwrap()
            .iter()
            .map(|c| Job::from_source(c.site(), 0))
            .collect();
        let target = Target::new(&batch, true).unwrap();
        let sources = vec![batch.clean.clone()];
        let sweep = Sweep::with_sources(m, target, sources, Metric::LogitDiff, jobs, 64).unwrap();
        values.extend(sweep.compute().unwrap());
        values
    });
    let scale = results[0].iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = results[0]
        .iter()
        .zip(&results[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "sweeps: {} values, GPU vs CPU max |diff| {worst:.2e} (scale {scale:.2})",
        results[0].len()
    );
    assert!(worst <= 2e-5 * scale, "sweeps differ by {worst}");
}

/// f16 and bf16 on the GPU against f32 on the CPU, within tests/half.rs's bounds.
#[test]
fn half_precision_on_the_gpu_is_within_the_cpu_bounds() {
    let dir = gpt2_dir();
    for spec in [None, dir.path().to_str()] {
        let cpu = &both(spec, Processing::default(), DType::F32)[0];
        for (dtype, lp_tol) in [(DType::F16, 0.05f32), (DType::BF16, 0.5)] {
            let half = &both(spec, Processing::default(), dtype)[1];
            let d_vocab = cpu.cfg.d_vocab as u64;
            let ids: Vec<u32> = (0..48u64).map(|i| (i * 7919 % d_vocab) as u32).collect();
            let [a, b] = [cpu, half].map(|m| {
                let t = Tensor::new(ids.as_slice(), m.device())
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                log_probs(&m.forward(&t, &mut Hooks::none()).unwrap())
            });
            let (worst, agree) = top10_gap(&a, &b);
            let agree = agree as f32 / ids.len() as f32;
            eprintln!(
                "{spec:?} {dtype:?} on the GPU: max |Δ log-prob| (top-10) {worst:.4}, top-1 agreement {:.0} %",
                100.0 * agree
            );
            assert!(worst < lp_tol, "{spec:?} {dtype:?}: {worst}");
            assert!(agree >= 0.85, "{spec:?} {dtype:?}: top-1 agreement {agree}");
        }
    }
}
