//! Bad input gives a clear, typed error, never a panic.

mod common;

use common::*;
use hooklens::{BlockHook, Error, HookPoint, Hooks, LoadOptions, NameFilter, Processing};

fn load_err(dir: &std::path::Path) -> Error {
    match hooklens::load_model(Some(dir.to_str().unwrap()), &LoadOptions::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_safetensors() {
    let dir = gpt2_dir();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}

#[test]
fn truncated_safetensors() {
    let dir = gpt2_dir();
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, Error::CorruptFile { .. }), "{e}");
}

#[test]
fn config_disagreeing_with_weights() {
    let dir = gpt2_dir();
    let p = dir.path().join("config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"n_embd\": 32", "\"n_embd\": 48");
    std::fs::write(&p, text).unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, Error::WeightShape { .. }), "{e}");
    assert!(e.to_string().contains("config.json"), "{e}");
}

#[test]
fn config_fields_out_of_range_are_named() {
    for (from, to, needle) in [
        ("\"n_layer\": 3", "\"n_layer\": -1", "`n_layer` is -1"),
        (
            "\"n_head\": 4",
            "\"n_head\": 5",
            "`n_head` (5) must divide `n_embd` (32)",
        ),
    ] {
        let dir = gpt2_dir();
        let p = dir.path().join("config.json");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from));
        std::fs::write(&p, text.replace(from, to)).unwrap();
        let e = load_err(dir.path());
        assert!(matches!(e, Error::Config(_)), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn missing_model_path() {
    let e = match hooklens::load_model(Some("./no/such/model"), &LoadOptions::default()) {
        Err(e) => e,
        Ok(_) => panic!("should fail"),
    };
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
}

#[test]
fn unknown_hook_names_suggest_close_matches() {
    let dir = gpt2_dir();
    let (model, _) = load_gpt2(dir.path(), Processing::default());
    let e = model.hook_point("blocks.0.attn.hook_patern").unwrap_err();
    assert!(e.to_string().contains("blocks.0.attn.hook_pattern"), "{e}");
    // A real TransformerLens name that this (non-rotary) model does not have.
    let e = model.hook_point("blocks.0.attn.hook_rot_q").unwrap_err();
    assert!(matches!(e, Error::UnknownHook { .. }), "{e}");
    assert!(matches!(
        "nonsense".parse::<HookPoint>(),
        Err(Error::UnknownHook { .. })
    ));
}

#[test]
fn layer_and_head_out_of_range() {
    let dir = gpt2_dir();
    let (model, tok) = load_gpt2(dir.path(), Processing::default());
    let e = model.hook_point("blocks.7.hook_resid_pre").unwrap_err();
    assert!(
        matches!(
            e,
            Error::LayerOutOfRange {
                layer: 7,
                n_layers: 3
            }
        ),
        "{e}"
    );
    // A hook registered on a missing layer fails the forward pass instead of never firing.
    let t = tok.to_tokens(&["hi"], true, model.device()).unwrap();
    let hooks = Hooks::none().add(HookPoint::Block(9, BlockHook::Z), |_, _| Ok(None));
    assert!(matches!(
        model.run_with_hooks(&t, hooks),
        Err(Error::LayerOutOfRange { .. })
    ));
    assert!(matches!(
        model.check_head(4),
        Err(Error::HeadOutOfRange {
            head: 4,
            n_heads: 4
        })
    ));
    assert!(model.W_Q(3).is_err());
}

#[test]
fn prompt_longer_than_context() {
    let dir = gpt2_dir();
    let (model, tok) = load_gpt2(dir.path(), Processing::default());
    let long = "word ".repeat(200);
    let t = tok
        .to_tokens(&[long.as_str()], true, model.device())
        .unwrap();
    let e = model.run_with_cache(&t, NameFilter::All).unwrap_err();
    assert!(matches!(e, Error::PromptTooLong { n_ctx: 64, .. }), "{e}");
}

#[test]
fn empty_prompt() {
    let tok = hooklens::Tokenizer::gpt2().unwrap();
    let e = tok
        .to_tokens(&[""], true, &candle_core::Device::Cpu)
        .unwrap_err();
    assert!(matches!(e, Error::EmptyPrompt), "{e}");
}

#[test]
fn hook_returning_wrong_shape() {
    let dir = gpt2_dir();
    let (model, tok) = load_gpt2(dir.path(), Processing::default());
    let t = tok.to_tokens(&["hi there"], true, model.device()).unwrap();
    let hooks = Hooks::none().add(HookPoint::Block(0, BlockHook::Z), |z, _| {
        Ok(Some(z.narrow(1, 0, 1)?))
    });
    assert!(matches!(
        model.run_with_hooks(&t, hooks),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn nonfinite_activations_name_their_first_hook_point_or_the_intervention() {
    let dir = gpt2_dir();
    let (mut model, tok) = load_gpt2(dir.path(), Processing::default());
    let t = tok.to_tokens(&["hi there"], true, model.device()).unwrap();
    // An intervention that writes NaN: the model alone is finite, so the hooks are named.
    let nan = |x: &candle_core::Tensor, _| Ok(Some((x * f64::NAN)?));
    let hooks = Hooks::none().add(HookPoint::Block(1, BlockHook::MlpOut), nan);
    let e = model.run_with_hooks(&t, hooks).unwrap_err();
    assert!(matches!(e, Error::NonFinite { first: None, .. }), "{e}");
    assert!(e.to_string().contains("intervention"), "{e}");
    // A NaN weight: the first hook point it reaches is named.
    let mlp = model.blocks[1].mlp.as_mut().unwrap();
    let mut v: Vec<f32> = mlp.w_out.flatten_all().unwrap().to_vec1().unwrap();
    v[3] = f32::INFINITY;
    let (dims, device) = (mlp.w_out.dims().to_vec(), mlp.w_out.device().clone());
    mlp.w_out = candle_core::Tensor::from_vec(v, dims, &device).unwrap();
    assert_eq!(
        model.first_nonfinite(&t).unwrap(),
        Some(HookPoint::Block(1, BlockHook::MlpOut))
    );
    let e = model.run_with_hooks(&t, Hooks::none()).unwrap_err();
    assert!(e.to_string().contains("blocks.1.hook_mlp_out"), "{e}");
    // Allowed, the logits come back as they are.
    model.allow_nonfinite = true;
    let logits = model.run_with_hooks(&t, Hooks::none()).unwrap();
    assert!(!hooklens::finite::all_finite(&logits).unwrap());
}

#[test]
fn decompositions_refuse_nonfinite_factors_instead_of_spinning() {
    use hooklens::analysis::factored::FactoredMatrix;
    let a = candle_core::Tensor::new(&[[1f32, f32::NAN], [0., 1.]], &candle_core::Device::Cpu);
    let b = candle_core::Tensor::eye(2, candle_core::DType::F32, &candle_core::Device::Cpu);
    let e = FactoredMatrix::new(a.unwrap(), b.unwrap()).err().unwrap();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
}

#[test]
fn a_mistyped_model_alias_is_suggested() {
    // Offline, so that the Hub is not asked.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    for typo in ["smollm", "SmolLM-2", "smolm2"] {
        let e = hooklens::load_model(Some(typo), &LoadOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("did you mean `smollm2"), "{typo}: {e}");
    }
    for typo in ["gemma", "gemma-3", "Gemma3"] {
        let e = hooklens::load_model(Some(typo), &LoadOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("did you mean `gemma"), "{typo}: {e}");
    }
}

#[test]
fn candle_errors_carry_no_backtrace_into_messages() {
    std::env::set_var("RUST_BACKTRACE", "1");
    let e: Error = candle_core::Error::Msg("boom".into()).bt().into();
    assert_eq!(e.to_string(), "boom");
}
