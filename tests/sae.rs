//! SAEs written by SAELens 6 itself (tests/reference/make_sae_reference.py) load, and encode,
//! decode and forward as SAELens does, within float32 rounding; bad SAE files are clear errors.

use candle_core::{Device, Tensor};
use hooklens::sae::{Architecture, Sae};
use hooklens::{load_model, LoadOptions};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/saes")
        .join(name)
}

mod common;

/// The random GPT-2 fixture (3 layers, d_model 32), with weight processing as by default.
fn gpt2_random() -> hooklens::HookedTransformer {
    let dir = common::gpt2_dir();
    common::load_gpt2(dir.path(), hooklens::Processing::default()).0
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d: f32 = (a - b)
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

#[test]
fn every_architecture_matches_saelens() {
    let reference = candle_core::safetensors::load(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/sae_ref.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let (model, _, _) = load_model(None, &LoadOptions::default()).unwrap();
    let gpt2 = gpt2_random();
    let names = [
        "standard",
        "standard_no_b_dec_in",
        "jumprelu",
        "topk",
        "topk_rescaled",
        "gated",
        "batchtopk",
        "transcoder",
        "skip_transcoder",
        "jumprelu_transcoder",
        "jumprelu_skip_transcoder",
        "jumprelu_gemma",
    ];
    for name in names {
        let sae = Sae::load(&fixture(name), &Device::Cpu).unwrap();
        match name.ends_with("transcoder") {
            true => {
                sae.check_fits(&gpt2).unwrap();
                assert_eq!(sae.hook.to_string(), "blocks.1.ln2.hook_normalized");
                assert_eq!(sae.writes().to_string(), "blocks.1.hook_mlp_out");
                assert_eq!(sae.w_skip.is_some(), name.contains("skip"));
                assert!(
                    sae.check_fits(&model).is_err(),
                    "the embedded model has no MLP"
                );
            }
            false => {
                sae.check_fits(&model).unwrap();
                assert_eq!(sae.hook.to_string(), "blocks.0.hook_resid_post");
            }
        }
        let r = |k: &str| &reference[&format!("{name}.{k}")];
        let acts = sae.encode(r("x")).unwrap();
        let e = max_rel_diff(&acts, r("acts"));
        assert!(e < 1e-5, "{name} encode: {e}");
        // The same features active (a threshold or top-k boundary, not just close values).
        let on = |t: &Tensor| {
            t.ne(0f32)
                .unwrap()
                .to_dtype(candle_core::DType::U8)
                .unwrap()
                .to_vec2::<u8>()
                .unwrap()
        };
        assert_eq!(on(&acts), on(r("acts")), "{name}: active features");
        let e = max_rel_diff(&sae.decode(r("acts")).unwrap(), r("recons"));
        assert!(e < 1e-5, "{name} decode: {e}");
        let e = max_rel_diff(&sae.forward(r("x")).unwrap(), r("out"));
        assert!(e < 1e-5, "{name} forward: {e}");
        match name {
            "topk" | "topk_rescaled" => {
                assert!(matches!(sae.architecture, Architecture::TopK { k: 8, .. }));
                assert!(on(&acts)
                    .iter()
                    .all(|row| row.iter().map(|&v| v as usize).sum::<usize>() == 8));
            }
            "batchtopk" | "jumprelu" | "jumprelu_transcoder" | "jumprelu_skip_transcoder" => {
                assert_eq!(sae.architecture, Architecture::JumpRelu)
            }
            _ => {}
        }
    }
}

/// A copy of fixture `name` in a temporary folder, with `edit` applied to its cfg.json and
/// `tensors` to its weights.
fn edited(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
    tensors: impl FnOnce(&mut std::collections::HashMap<String, Tensor>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("cfg.json")).unwrap())
            .unwrap();
    edit(&mut cfg);
    std::fs::write(dir.path().join("cfg.json"), cfg.to_string()).unwrap();
    let mut w =
        candle_core::safetensors::load(fixture(name).join("sae_weights.safetensors"), &Device::Cpu)
            .unwrap();
    tensors(&mut w);
    candle_core::safetensors::save(&w, dir.path().join("sae_weights.safetensors")).unwrap();
    dir
}

#[test]
fn bad_sae_files_are_clear_errors() {
    let (model, _, _) = load_model(None, &LoadOptions::default()).unwrap();
    let none = |_: &mut std::collections::HashMap<String, Tensor>| {};
    let cases: Vec<(tempfile::TempDir, &str)> = vec![
        (
            edited(
                "standard",
                |c| c["architecture"] = "matching_pursuit".into(),
                none,
            ),
            "architecture `matching_pursuit` is not supported",
        ),
        (
            edited(
                "standard",
                |c| c["metadata"]["hook_name"] = "blocks.0.hook_resid_pots".into(),
                none,
            ),
            "hook_name: unknown hook point `blocks.0.hook_resid_pots`",
        ),
        (
            edited("standard", |c| c["d_in"] = 65.into(), none),
            "W_enc has shape [64, 96]; cfg.json implies [65, 96]",
        ),
        (
            edited(
                "standard",
                |c| c["normalize_activations"] = "layer_norm".into(),
                none,
            ),
            "`normalize_activations: layer_norm` is not supported for blocks.0.hook_resid_post",
        ),
        (
            edited(
                "standard",
                |_| {},
                |w| {
                    w.remove("b_dec");
                },
            ),
            "b_dec is missing",
        ),
        (
            edited(
                "standard",
                |_| {},
                |w| {
                    w.insert(
                        "threshold".into(),
                        Tensor::zeros(96, candle_core::DType::F32, &Device::Cpu).unwrap(),
                    );
                },
            ),
            "tensor threshold is not used",
        ),
        (
            edited(
                "jumprelu",
                |_| {},
                |w| {
                    w.insert(
                        "threshold".into(),
                        Tensor::full(f32::NAN, 96, &Device::Cpu).unwrap(),
                    );
                },
            ),
            "threshold has 96 non-finite values",
        ),
        (
            edited("topk", |c| c["k"] = 200.into(), none),
            "k 200 is larger than d_sae 96",
        ),
    ];
    for (dir, want) in cases {
        let e = Sae::load(dir.path(), &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
        assert!(
            e.contains(&dir.path().display().to_string()),
            "names the file: {e}"
        );
    }
    // An SAE for a hook of another width, and one for a layer the model lacks.
    let dir = edited(
        "standard",
        |c| c["metadata"]["hook_name"] = "blocks.1.attn.hook_pattern".into(),
        |_| {},
    );
    let e = Sae::load(dir.path(), &Device::Cpu)
        .unwrap()
        .check_fits(&model)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("d_in 64 does not fit blocks.1.attn.hook_pattern"),
        "{e}"
    );
    let dir = edited(
        "standard",
        |c| c["metadata"]["hook_name"] = "blocks.9.hook_resid_post".into(),
        |_| {},
    );
    let e = Sae::load(dir.path(), &Device::Cpu)
        .unwrap()
        .check_fits(&model)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 9 is out of range"), "{e}");
    // Older SAELens files: log_threshold, and hook_name at the top level.
    let dir = edited(
        "jumprelu",
        |c| {
            c["hook_name"] = c["metadata"]["hook_name"].clone();
            c["metadata"].as_object_mut().unwrap().remove("hook_name");
        },
        |w| {
            let t = w.remove("threshold").unwrap();
            w.insert("log_threshold".into(), t.log().unwrap());
        },
    );
    let old = Sae::load(dir.path(), &Device::Cpu).unwrap();
    let new = Sae::load(&fixture("jumprelu"), &Device::Cpu).unwrap();
    let e = max_rel_diff(
        old.threshold.as_ref().unwrap(),
        new.threshold.as_ref().unwrap(),
    );
    assert!(e < 1e-6, "{e}");
}

#[test]
fn metrics_equal_a_brute_force_pass_and_splicing_patches_the_reconstruction() {
    use hooklens::analysis::metrics::next_token_losses;
    use hooklens::corpus::{pack, read_documents, Packing};
    use hooklens::sae::{ce_loss, reconstruction};
    use hooklens::store::{Capture, Source, TokenFilter};
    use hooklens::{HookPoint, Hooks, Intervention, NameFilter};
    let (model, tok, _) = load_model(None, &LoadOptions::default()).unwrap();
    let docs = read_documents(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus/tiny.txt"),
        "text",
    )
    .unwrap();
    let packing = Packing {
        context_len: 32,
        bos: tok.bos_token_id,
        separator: tok.bos_token_id,
        seed: 0,
    };
    let contexts = pack(&docs, &tok, model.cfg.n_ctx, &packing, Some(12)).unwrap();
    let hook: HookPoint = "blocks.0.hook_resid_post".parse().unwrap();
    let capture = Capture::new(&model, vec![hook], candle_core::DType::F32).unwrap();
    let source = Source::Model {
        capture: &capture,
        contexts: &contexts,
        contexts_per_chunk: 5,
    };
    let sae = Sae::load(&fixture("jumprelu"), &Device::Cpu).unwrap();
    let m = reconstruction(&sae, &source, (0, 0), &TokenFilter::all(), &mut |_| {}).unwrap();
    // Brute force over all 12 · 32 tokens at once, in f64.
    let x = capture
        .activations(&contexts.batch(0..12, &Device::Cpu).unwrap())
        .unwrap()
        .swap_remove(0);
    let acts = sae.encode(&x).unwrap();
    let recon = sae.decode(&acts).unwrap();
    let f64s = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap();
    let (x64, r64) = (f64s(&x), f64s(&recon));
    let err2: f64 = (&x64 - &r64)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let centred = x64.broadcast_sub(&x64.mean_keepdim(0).unwrap()).unwrap();
    let var: f64 = centred
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let on: Vec<Vec<f32>> = acts
        .ne(0f32)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec2()
        .unwrap();
    let l0 = on.iter().map(|r| r.iter().sum::<f32>()).sum::<f32>() / 384.0;
    assert_eq!(m.tokens, 384);
    assert!((m.l0 - l0).abs() < 1e-4, "{} vs {l0}", m.l0);
    assert!(
        ((m.mse as f64) - err2 / (384.0 * 64.0)).abs() < 1e-5 * (err2 / 384.0 / 64.0),
        "mse {}",
        m.mse
    );
    assert!(
        ((m.explained_variance as f64) - (1.0 - err2 / var)).abs() < 1e-4,
        "ev {} vs {}",
        m.explained_variance,
        1.0 - err2 / var
    );
    let density0 = on.iter().map(|r| r[0]).sum::<f32>() / 384.0;
    assert!((m.density[0] - density0).abs() < 1e-6);
    assert_eq!(m.dead, m.density.iter().filter(|&&d| d == 0.0).count());

    // CE with the SAE spliced = patching its reconstruction of the clean activation in.
    let tokens = contexts.batch(0..4, &Device::Cpu).unwrap();
    let ce = ce_loss(&model, &sae, &tokens, &TokenFilter::all()).unwrap();
    let loss = |hooks: Hooks| -> f32 {
        let logits = model.run_with_hooks(&tokens, hooks).unwrap();
        next_token_losses(&logits, &tokens)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let (_, cache) = model
        .run_with_cache(&tokens, NameFilter::Points(vec![hook]))
        .unwrap();
    let x = cache.get(hook).unwrap();
    let patched = sae.reconstruct(x, x).unwrap();
    let want = loss(Hooks::none().intervene(hook, Intervention::Patch(patched.clone())));
    assert!((ce.spliced - want).abs() < 1e-5, "{} vs {want}", ce.spliced);
    assert!((ce.clean - loss(Hooks::none())).abs() < 1e-6);
    assert!(
        (ce.zero_ablated - loss(Hooks::none().intervene(hook, Intervention::Zero))).abs() < 1e-6
    );
    let recovered = (ce.zero_ablated - ce.spliced) / (ce.zero_ablated - ce.clean);
    assert!((ce.recovered - recovered).abs() < 1e-6);
    assert!(
        ce.spliced > ce.clean,
        "a random SAE loses something: {ce:?}"
    );

    // From position 5 on only: the first five positions keep the clean activation.
    let from = 5;
    let five = TokenFilter {
        from_position: from as u32,
        skip_tokens: vec![],
        max_norm: None,
    };
    let ce5 = ce_loss(&model, &sae, &tokens, &five).unwrap();
    let n = x.dim(1).unwrap() - from;
    let mixed = |rest: &Tensor| {
        Tensor::cat(
            &[
                &x.narrow(1, 0, from).unwrap(),
                &rest.narrow(1, from, n).unwrap(),
            ],
            1,
        )
        .unwrap()
    };
    let want = loss(Hooks::none().intervene(hook, Intervention::Patch(mixed(&patched))));
    assert!(
        (ce5.spliced - want).abs() < 1e-5,
        "{} vs {want}",
        ce5.spliced
    );
    let want =
        loss(Hooks::none().intervene(hook, Intervention::Patch(mixed(&x.zeros_like().unwrap()))));
    assert!(
        (ce5.zero_ablated - want).abs() < 1e-5,
        "{} vs {want}",
        ce5.zero_ablated
    );
    assert!(ce5.spliced != ce.spliced && ce5.zero_ablated != ce.zero_ablated);
    // Its reconstruction statistics count those positions only.
    let m5 = reconstruction(&sae, &source, (0, 0), &five, &mut |_| {}).unwrap();
    assert_eq!(m5.tokens, 384 / 32 * 27);
}

#[test]
fn a_transcoder_stands_in_for_the_mlp() {
    use hooklens::analysis::metrics::next_token_losses;
    use hooklens::sae::ce_loss;
    use hooklens::{Hooks, Intervention, NameFilter};
    let model = gpt2_random();
    let tokens = Tensor::new(
        &[
            [50256u32, 464, 3139, 286, 4881, 318, 6342, 13],
            [50256, 15496, 995, 11, 703, 389, 345, 30],
        ],
        &Device::Cpu,
    )
    .unwrap();
    for name in ["transcoder", "jumprelu_skip_transcoder"] {
        let tc = Sae::load(&fixture(name), &Device::Cpu).unwrap();
        let ce = ce_loss(&model, &tc, &tokens, &hooklens::store::TokenFilter::all()).unwrap();
        // Naively: the MLP's input from a clean run, through the transcoder, patched in as the
        // MLP's output (the MLP's input does not depend on its own output).
        let (_, cache) = model
            .run_with_cache(&tokens, NameFilter::Points(vec![tc.hook, tc.writes()]))
            .unwrap();
        let out = tc
            .reconstruct(cache.get(tc.hook).unwrap(), cache.get(tc.writes()).unwrap())
            .unwrap();
        let logits = model
            .run_with_hooks(
                &tokens,
                Hooks::none().intervene(tc.writes(), Intervention::Patch(out)),
            )
            .unwrap();
        let want: f32 = next_token_losses(&logits, &tokens)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(
            (ce.spliced - want).abs() < 1e-5,
            "{name}: {} vs {want}",
            ce.spliced
        );
        assert!(
            (ce.spliced - ce.clean).abs() > 1e-4,
            "{name}: a random transcoder changes the loss"
        );
    }
}

#[test]
fn gemma_scope_folders_load_to_the_same_sae() {
    let reference = candle_core::safetensors::load(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/sae_ref.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let saelens = Sae::load(&fixture("jumprelu_gemma"), &Device::Cpu).unwrap();
    assert!(!saelens.apply_b_dec_to_input);
    for folder in [
        "gemma-scope-2b-pt-res/layer_0/width_16k/average_l0_50",
        "gemma-scope-2-270m-pt/resid_post/layer_0_width_16k_l0_medium",
    ] {
        let sae = Sae::load(&fixture(folder), &Device::Cpu).unwrap();
        assert_eq!(sae.hook.to_string(), "blocks.0.hook_resid_post", "{folder}");
        assert_eq!(sae.architecture, Architecture::JumpRelu);
        assert!(!sae.apply_b_dec_to_input);
        assert_eq!((sae.d_in, sae.d_sae), (64, 96));
        let x = &reference["jumprelu_gemma.x"];
        let e = max_rel_diff(&sae.encode(x).unwrap(), &reference["jumprelu_gemma.acts"]);
        assert!(e < 1e-5, "{folder}: {e}");
        let e = max_rel_diff(&sae.forward(x).unwrap(), &saelens.forward(x).unwrap());
        assert!(e == 0.0, "{folder}: {e}");
    }
    // A Gemma Scope file out of its published folders cannot say its hook point.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("gemma-scope-2b-pt-res/layer_0/width_16k/average_l0_50/params.npz"),
        dir.path().join("params.npz"),
    )
    .unwrap();
    let e = Sae::load(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("params.npz") && e.contains("keep the folders as Gemma Scope publishes them"),
        "{e}"
    );
    let e = Sae::load(&fixture("nothing"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("an SAE folder holds cfg.json and sae_weights.safetensors"),
        "{e}"
    );
}
