//! SAEs and transcoders spliced into the model equal SAELens's HookedSAETransformer on the same
//! weights (tests/reference/make_sae_splice_reference.py): logits with and without the error
//! term, feature activations, a feature ablated, several SAEs at once, attribution patching of
//! features; sweeps over feature sites equal the naive loop; misuse is a clear error.

use candle_core::{DType, Device, Tensor};
use hooklens::analysis::patching::attribution_sites;
use hooklens::analysis::sweep::{naive, Job, Metric, Sweep, Target};
use hooklens::sae::Sae;
use hooklens::{
    BlockHook, HookPoint, HookedTransformer, Hooks, Intervention, NameFilter, SaeHook, Site, Splice,
};
use std::collections::HashMap;
use std::path::Path;

mod common;

const SAES: [&str; 9] = [
    "standard",
    "jumprelu",
    "topk",
    "gated",
    "hook_z",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
    "jumprelu_skip_transcoder",
];

fn load(name: &str) -> Sae {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/saes");
    let dir = match name.contains("transcoder") {
        true => root.join(name),
        false => root.join("gpt2-random").join(name),
    };
    Sae::load(&dir, &Device::Cpu).unwrap()
}

/// The random GPT-2 fixture without weight processing, as the reference loads it.
fn model() -> HookedTransformer {
    let dir = common::gpt2_dir();
    common::load_gpt2(dir.path(), hooklens::Processing::none()).0
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/sae_splice_ref.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// The largest difference relative to the largest value of `b`; logits are compared on the
/// reference's first columns.
fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a
        .narrow(a.rank() - 1, 0, b.dim(b.rank() - 1).unwrap())
        .unwrap();
    let d: f32 = (a.to_dtype(DType::F32).unwrap() - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let s: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    d / s.max(1e-6)
}

fn tokens(r: &HashMap<String, Tensor>, name: &str) -> Tensor {
    r[name].to_dtype(DType::U32).unwrap()
}

fn acts_post(sae: &Sae) -> HookPoint {
    Splice::new(sae).point(SaeHook::ActsPost).unwrap()
}

#[test]
fn spliced_logits_equal_saelens() {
    let (model, r) = (model(), reference());
    let t = tokens(&r, "tokens");
    let clean = model.run_with_hooks(&t, Hooks::none()).unwrap();
    assert!(max_rel_diff(&clean, &r["logits"]) < 1e-5);
    for name in SAES {
        let sae = load(name);
        let point = acts_post(&sae);
        let hooks = Hooks::none()
            .splice(Splice::new(&sae))
            .unwrap()
            .with_cache(NameFilter::Points(vec![point]));
        let run = model.run(&t, hooks).unwrap();
        let e = max_rel_diff(&run.output, &r[&format!("{name}.spliced")]);
        assert!(e < 1e-4, "{name} spliced: {e}");
        let e = max_rel_diff(run.cache.get(point).unwrap(), &r[&format!("{name}.acts")]);
        assert!(e < 1e-4, "{name} acts: {e}");
        assert_eq!(run.fired.last().unwrap().count, 1);
        assert_eq!(run.fired.last().unwrap().spec.kind, "sae");

        // With the error term the forward is the clean one, until a feature is ablated.
        let with_error = Splice::with_error_term(&sae);
        let out = model
            .run_with_hooks(&t, Hooks::none().splice(with_error).unwrap())
            .unwrap();
        let e = max_rel_diff(&out, &r[&format!("{name}.error_term")]);
        assert!(e < 1e-5, "{name} with the error term: {e}");
        assert!(
            max_rel_diff(&out, &clean) < 1e-5,
            "{name}: not the clean run"
        );
        let feature = r[&format!("{name}.feature")].to_vec1::<i64>().unwrap()[0] as usize;
        let hooks = Hooks::none()
            .splice(with_error)
            .unwrap()
            .intervene(Site::neuron(point, feature), Intervention::Zero);
        let out = model.run_with_hooks(&t, hooks).unwrap();
        let e = max_rel_diff(&out, &r[&format!("{name}.ablated")]);
        assert!(e < 1e-4, "{name} feature {feature} ablated: {e}");
    }
}

#[test]
fn several_saes_splice_at_once() {
    let (model, r) = (model(), reference());
    let saes = [load("standard"), load("hook_z"), load("transcoder")];
    let splices: Vec<Splice> = saes.iter().map(Splice::new).collect();
    let out = model
        .run_with_hooks(&tokens(&r, "tokens"), Hooks::spliced(&splices).unwrap())
        .unwrap();
    let e = max_rel_diff(&out, &r["multi.spliced"]);
    assert!(e < 1e-4, "{e}");
}

#[test]
fn attribution_patching_of_features_equals_saelens_gradients() {
    let (model, r) = (model(), reference());
    let sae = load("standard");
    let splices = [Splice::with_error_term(&sae)];
    let point = acts_post(&sae);
    let clean = model
        .run(
            &tokens(&r, "clean_tokens"),
            Hooks::spliced(&splices)
                .unwrap()
                .with_cache(NameFilter::Points(vec![point])),
        )
        .unwrap()
        .cache;
    let target = target(&tokens(&r, "tokens"));
    let sites: Vec<Site> = (0..sae.d_sae).map(|f| Site::neuron(point, f)).collect();
    let got =
        attribution_sites(&model, &splices, &target, Metric::LogitDiff, &clean, &sites).unwrap();
    let got = Tensor::new(got, &Device::Cpu).unwrap();
    let e = max_rel_diff(&got, &r["standard.attribution"]);
    assert!(e < 1e-4, "{e}");
}

/// The prompts with the answers and wrong answers of the reference's logit difference.
fn target(tokens: &Tensor) -> Target {
    let rows = tokens.to_vec2::<u32>().unwrap();
    Target {
        tokens: tokens.clone(),
        lengths: rows.iter().map(Vec::len).collect(),
        rows,
        answers: vec![11, 13],
        wrong: vec![17, 19],
    }
}

#[test]
fn sweeps_over_features_equal_the_naive_loop() {
    let (model, r) = (model(), reference());
    let (sae, tc) = (load("standard"), load("transcoder"));
    let splices = [Splice::with_error_term(&sae), Splice::new(&tc)];
    let target = target(&tokens(&r, "tokens"));
    let point = acts_post(&sae);
    let mut jobs: Vec<Job> = (0..6)
        .map(|f| {
            Job::new(
                Site::neuron(point, f * 7).with_pos(f + 3),
                Intervention::Zero,
            )
        })
        .collect();
    // Steering: a feature turned up everywhere; the transcoder's features; a head before the
    // SAEs (its pass runs them all).
    jobs.push(Job::new(
        Site::neuron(point, 5),
        Intervention::Add(Tensor::new(&[4f32], &Device::Cpu).unwrap()),
    ));
    jobs.push(Job::new(
        Site::neuron(acts_post(&tc), 2),
        Intervention::Scale(3.0),
    ));
    jobs.push(Job::new(
        Site::head(HookPoint::block(0, BlockHook::Z), 1),
        Intervention::Zero,
    ));
    for metric in [Metric::Loss, Metric::LogitDiff] {
        let want = naive(&model, &splices, &target, &[], metric, &jobs).unwrap();
        let sweep = Sweep::spliced(
            &model,
            &splices,
            target.clone(),
            vec![],
            metric,
            jobs.clone(),
            64,
        )
        .unwrap();
        for (j, (g, w)) in sweep.compute().unwrap().iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{metric:?} job {j}: {g} vs {w}"
            );
        }
        let base = naive(
            &model,
            &[],
            &target,
            &[],
            metric,
            &[Job::new(
                Site::at(HookPoint::block(0, BlockHook::ResidPost)),
                Intervention::Scale(1.0),
            )],
        )
        .unwrap()[0];
        // The sweep with the error-term SAE and the transcoder is not the clean model.
        assert!((sweep.baseline() - base).abs() > 1e-3);
    }
}

#[test]
fn sae_hook_points_are_named_as_saelens_names_them() {
    let sae = load("transcoder");
    let p = acts_post(&sae);
    assert_eq!(p.to_string(), "blocks.1.hook_mlp_out.hook_sae_acts_post");
    for h in SaeHook::ALL {
        let name = format!("blocks.0.attn.hook_z.{}", h.name());
        let p: HookPoint = name.parse().unwrap();
        assert_eq!(p.to_string(), name);
        assert_eq!(p.base(), HookPoint::block(0, BlockHook::Z));
    }
    assert!("hook_embed.hook_sae_input".parse::<HookPoint>().is_err());
}

#[test]
fn splicing_misuse_is_a_clear_error() {
    let (model, r) = (model(), reference());
    let t = tokens(&r, "tokens");
    let sae = load("standard");
    let point = acts_post(&sae);
    // An SAE hook point without its SAE.
    let e = model
        .run_with_hooks(&t, Hooks::none().intervene(point, Intervention::Zero))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no SAE is spliced at blocks.1.hook_resid_pre"),
        "{e}"
    );
    // Two SAEs at one hook point.
    let e = Hooks::spliced(&[Splice::new(&sae), Splice::new(&load("topk"))])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("two SAEs splice at blocks.1.hook_resid_pre"),
        "{e}"
    );
    // An SAE whose d_in does not fit the hook it names.
    let mut wrong = load("standard");
    wrong.hook = HookPoint::block(1, BlockHook::MlpPost);
    let e = model
        .run_with_hooks(&t, Hooks::none().splice(Splice::new(&wrong)).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("d_in 32 does not fit blocks.1.mlp.hook_post"),
        "{e}"
    );
    // A pass that stops before the SAE.
    let hooks = Hooks::none().splice(Splice::new(&sae)).unwrap();
    let e = model
        .run_range(&t, 0, Some(1), hooks)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("this pass runs layers 0..1"), "{e}");
    let e = model.hook_shape(&point).unwrap_err().to_string();
    assert!(e.contains("inside a spliced SAE"), "{e}");
}
