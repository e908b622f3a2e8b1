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
