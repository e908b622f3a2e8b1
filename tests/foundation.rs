//! The analysis foundation: one pass that records and intervenes, interventions as data with a
//! fired report, datasets, and loading hygiene.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::*;
use hooklens::data::{
    ioi_pairs, read_pairs, repeated_random_tokens, tokenize_pairs, PairBatch, PRINTABLE_ASCII,
};
use hooklens::generate::{generate, GenerateOptions};
use hooklens::{
    load_model, BlockHook, Error, HookPoint, HookedTransformer, Hooks, Intervention, LoadOptions,
    NameFilter, Processing, Site, Tokenizer,
};
use rand::SeedableRng;

fn embedded() -> (HookedTransformer, Tokenizer) {
    let (model, tok, _) = load_model(None, &LoadOptions::default()).unwrap();
    (model, tok)
}

fn tokens(model: &HookedTransformer, batch: usize, seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    repeated_random_tokens(
        &mut rng,
        batch,
        8,
        Some(256),
        PRINTABLE_ASCII,
        model.device(),
    )
    .unwrap()
}

#[test]
fn one_pass_patches_and_records_like_two_passes() {
    let (model, _) = embedded();
    let (clean, corrupted) = (tokens(&model, 4, 1), tokens(&model, 4, 2));
    let attn_out0 = HookPoint::block(0, BlockHook::AttnOut);
    let (resid_pre0, pattern1) = (
        HookPoint::block(0, BlockHook::ResidPre),
        HookPoint::block(1, BlockHook::Pattern),
    );
    let (_, source) = model
        .run_with_cache(&corrupted, NameFilter::Points(vec![attn_out0]))
        .unwrap();
    let source = source.get(attn_out0).unwrap().clone();

    // One pass: patch layer 0's attention output at position 5 from the corrupted run, and
    // record layer 1's pattern and layer 0's residual input.
    let site = Site::at(attn_out0).with_pos(5);
    let hooks = Hooks::none()
        .intervene(site.clone(), Intervention::Patch(source.clone()))
        .with_cache(NameFilter::Points(vec![resid_pre0, pattern1]));
    let run = model.run(&clean, hooks).unwrap();
    assert_eq!(run.fired.len(), 1);
    assert_eq!(run.fired[0].count, 1);
    assert_eq!(run.fired[0].spec.site, site);

    // Two passes: build the patched residual stream entering layer 1 by hand (the embedded
    // model is attention-only: resid_pre 1 = resid_pre 0 + attn_out 0), then run layer 1 on it.
    let (_, clean_cache) = model
        .run_with_cache(&clean, NameFilter::Points(vec![resid_pre0, attn_out0]))
        .unwrap();
    let out0 = clean_cache.get(attn_out0).unwrap();
    let patched = Tensor::cat(
        &[
            &out0.narrow(1, 0, 5).unwrap(),
            &source.narrow(1, 5, 1).unwrap(),
            &out0.narrow(1, 6, out0.dim(1).unwrap() - 6).unwrap(),
        ],
        1,
    )
    .unwrap();
    let resid1 = (clean_cache.get(resid_pre0).unwrap() + patched).unwrap();
    let second = model
        .run_range(
            &resid1,
            1,
            None,
            Hooks::none().with_cache(NameFilter::Points(vec![pattern1])),
        )
        .unwrap();
    assert_eq!(
        max_abs_diff(
            run.cache.get(pattern1).unwrap(),
            second.cache.get(pattern1).unwrap()
        ),
        0.0
    );
    assert!(max_abs_diff(&run.output, &second.output) < 1e-5);
    // The patch changed something: the clean pattern differs.
    let (clean_logits, _) = model.run_with_cache(&clean, NameFilter::All).unwrap();
    assert!(max_abs_diff(&clean_logits, &run.output) > 1e-3);
    // And the recorded resid_pre is the clean one (patching happens later in the pass).
    assert_eq!(
        max_abs_diff(
            run.cache.get(resid_pre0).unwrap(),
            clean_cache.get(resid_pre0).unwrap()
        ),
        0.0
    );
}

#[test]
fn unreached_sites_are_errors() {
    let (model, _) = embedded();
    let t = tokens(&model, 1, 0);
    let z1 = HookPoint::block(1, BlockHook::Z);
    let hooks = Hooks::none().intervene(Site::head(z1, 0), Intervention::Zero);
    let e = model.run_range(&t, 0, Some(1), hooks).unwrap_err();
    assert!(matches!(e, Error::NotReached { .. }), "{e}");
    assert!(
        e.to_string().contains("blocks.1.attn.hook_z[head 0]"),
        "{e}"
    );
    assert!(e.to_string().contains("layers 0..1"), "{e}");

    let hooks = Hooks::none().intervene(HookPoint::LnFinalScale, Intervention::Scale(2.0));
    let e = model.run_range(&t, 0, Some(1), hooks).unwrap_err();
    assert!(e.to_string().contains("before ln_final"), "{e}");

    let resid = model
        .forward_range(&t, 0, Some(1), &mut Hooks::none())
        .unwrap();
    let hooks = Hooks::none().intervene(HookPoint::Embed, Intervention::Zero);
    let e = model.run_range(&resid, 1, None, hooks).unwrap_err();
    assert!(e.to_string().contains("starts at layer 1"), "{e}");

    // A hook point the model lacks, and a position beyond the prompt.
    let mlp = HookPoint::block(0, BlockHook::MlpPost);
    let e = model
        .run(&t, Hooks::none().intervene(mlp, Intervention::Zero))
        .unwrap_err();
    assert!(matches!(e, Error::UnknownHook { .. }), "{e}");
    let far = Site::at(HookPoint::block(0, BlockHook::ResidPre)).with_pos(99);
    let e = model
        .run(&t, Hooks::none().intervene(far, Intervention::Zero))
        .unwrap_err();
    assert!(
        matches!(e, Error::PositionOutOfRange { pos: 99, .. }),
        "{e}"
    );
}

#[test]
fn fired_report_counts_each_pass() {
    let (model, tok) = embedded();
    let t = tokens(&model, 2, 0);
    let z0 = HookPoint::block(0, BlockHook::Z);
    let mut hooks = Hooks::none()
        .intervene(Site::head(z0, 1), Intervention::Zero)
        .intervene(Site::head(z0, 1), Intervention::Scale(3.0))
        .intervene(
            HookPoint::block(1, BlockHook::AttnOut),
            Intervention::Add(Tensor::ones(64, DType::F32, &Device::Cpu).unwrap()),
        )
        .add(HookPoint::block(1, BlockHook::Pattern), |_, _| Ok(None));
    for _ in 0..3 {
        model.forward(&t, &mut hooks).unwrap();
    }
    let fired = hooks.fired();
    assert_eq!(
        fired.iter().map(|f| f.count).collect::<Vec<_>>(),
        vec![3, 3, 3, 3]
    );
    let kinds: Vec<&str> = fired.iter().map(|f| f.spec.kind.as_str()).collect();
    assert_eq!(kinds, ["zero", "scale", "add", "closure"]);

    // Generation with the KV cache: a whole-activation hook fires on every step, a
    // position-3 hook only on the first (the prompt's) pass.
    let prompt = tok.encode_prompt("abcabc", true).unwrap();
    let r0 = HookPoint::block(0, BlockHook::ResidPre);
    let mut hooks = Hooks::none()
        .intervene(r0, Intervention::Scale(1.0))
        .intervene(Site::at(r0).with_pos(3), Intervention::Scale(1.0));
    let opts = GenerateOptions {
        max_new_tokens: 4,
        stop_at_eos: false,
        ..Default::default()
    };
    generate(&model, &prompt, &opts, &mut hooks).unwrap();
    let counts: Vec<usize> = hooks.fired().iter().map(|f| f.count).collect();
    assert_eq!(counts, vec![4, 1]);
    // A position the generation never reaches is an error, not a silent no-op.
    let mut hooks = Hooks::none().intervene(Site::at(r0).with_pos(40), Intervention::Zero);
    let e = generate(&model, &prompt, &opts, &mut hooks).unwrap_err();
    assert!(matches!(e, Error::NotFired { .. }), "{e}");
    assert!(e.to_string().contains("[pos 40]"), "{e}");
}

#[test]
fn hooks_on_the_embeddings_fire_and_act() {
    // Regression: the per-pass fired check once started counting after the embeddings, so any
    // hook on hook_embed or hook_pos_embed was reported as never fired.
    let dir = gpt2_dir();
    let (model, _) = load_gpt2(dir.path(), Processing::default());
    let t = Tensor::new(&[[5u32, 9, 2, 7]], &Device::Cpu).unwrap();
    let resid_pre0 = HookPoint::block(0, BlockHook::ResidPre);
    let hooks = Hooks::none()
        .intervene(HookPoint::Embed, Intervention::Zero)
        .intervene(HookPoint::PosEmbed, Intervention::Zero)
        .with_cache(NameFilter::Points(vec![resid_pre0]));
    let run = model.run(&t, hooks).unwrap();
    assert_eq!(
        run.fired.iter().map(|f| f.count).collect::<Vec<_>>(),
        [1, 1]
    );
    let resid = run.cache.get(resid_pre0).unwrap();
    assert_eq!(
        resid
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

#[test]
fn fused_attention_equals_the_hooked_path() {
    // With nothing reading hook_attn_scores the forward takes the fused in-place causal softmax;
    // a no-op hook there forces scale, mask and softmax as separate passes. Same logits, batch 2.
    let dir = gpt2_dir();
    let (model, _) = load_gpt2(dir.path(), Processing::default());
    let t = Tensor::new(&[[5u32, 9, 2, 7, 1], [3, 3, 8, 0, 4]], &Device::Cpu).unwrap();
    let fused = model.forward(&t, &mut Hooks::none()).unwrap();
    let mut hooks = Hooks::none();
    for l in 0..model.cfg.n_layers {
        hooks = hooks.add(HookPoint::block(l, BlockHook::AttnScores), |_, _| Ok(None));
    }
    let unfused = model.forward(&t, &mut hooks).unwrap();
    assert!(max_abs_diff(&fused, &unfused) < 1e-5);
}

#[test]
fn zero_head_equals_a_closure_that_zeroes_it() {
    let (model, _) = embedded();
    let t = tokens(&model, 2, 3);
    let z1 = HookPoint::block(1, BlockHook::Z);
    let a = model
        .run(
            &t,
            Hooks::none().intervene(Site::head(z1, 2), Intervention::Zero),
        )
        .unwrap();
    let b = model
        .run_with_hooks(
            &t,
            Hooks::none().add(z1, |z, _| {
                let head = z.i((.., .., 2..3))?.zeros_like()?;
                let parts = [&z.i((.., .., 0..2))?, &head, &z.i((.., .., 3..))?];
                Ok(Some(Tensor::cat(&parts, 2)?))
            }),
        )
        .unwrap();
    assert_eq!(max_abs_diff(&a.output, &b), 0.0);
    // Mean ablation over the run's own batch of one row leaves it unchanged.
    let one = t.narrow(0, 0, 1).unwrap();
    let (plain, cache) = model
        .run_with_cache(&one, NameFilter::Points(vec![z1]))
        .unwrap();
    let mean = Intervention::mean_of(cache.get(z1).unwrap()).unwrap();
    let m = model.run(&one, Hooks::none().intervene(z1, mean)).unwrap();
    assert!(max_abs_diff(&plain, &m.output) < 1e-6);
}

#[test]
fn cache_stack_has_layers_first() {
    let (model, _) = embedded();
    let t = tokens(&model, 3, 0);
    let (_, cache) = model.run_with_cache(&t, NameFilter::All).unwrap();
    let s = cache.stack(BlockHook::Pattern).unwrap();
    assert_eq!(s.dims(), &[2, 3, 4, 17, 17]);
    assert_eq!(
        max_abs_diff(
            &s.i(1).unwrap(),
            cache.block(1, BlockHook::Pattern).unwrap()
        ),
        0.0
    );
    let e = cache.block(0, BlockHook::Result).unwrap_err();
    assert!(matches!(e, Error::NotCached { .. }), "{e}");
}

#[test]
fn ioi_pairs_are_seeded_equal_length_single_token_answers() {
    let tok = Tokenizer::gpt2().unwrap();
    let a = ioi_pairs(&tok, 40, 7).unwrap();
    assert_eq!(a, ioi_pairs(&tok, 40, 7).unwrap());
    assert_ne!(a, ioi_pairs(&tok, 40, 8).unwrap());
    let pairs = tokenize_pairs(&a, &tok, true, "ioi").unwrap();
    for (p, t) in a.iter().zip(&pairs) {
        assert_eq!(t.clean.len(), t.corrupted.len(), "{p:?}");
        assert_eq!(t.clean[0], 50256, "BOS first");
        assert_ne!(t.answer, t.wrong);
        // The clean prompt names the answer once (ABB), the corrupted one twice (ABA).
        assert_eq!(p.clean.matches(p.answer.trim()).count(), 1, "{p:?}");
        assert_eq!(p.corrupted.matches(p.answer.trim()).count(), 2, "{p:?}");
    }
    let batch = PairBatch::new(&pairs, 50256, &Device::Cpu).unwrap();
    assert_eq!(batch.clean.dims(), batch.corrupted.dims());
    assert_eq!(batch.answers.len(), 40);
    // Without BOS the prompts are one token shorter.
    let no_bos = tokenize_pairs(&a, &tok, false, "ioi").unwrap();
    assert_eq!(no_bos[0].clean.len() + 1, pairs[0].clean.len());
}

fn pair_file_error(name: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let tok = Tokenizer::gpt2().unwrap();
    let e = read_pairs(&path)
        .and_then(|p| tokenize_pairs(&p, &tok, true, &path.display().to_string()))
        .unwrap_err();
    assert!(matches!(e, Error::BadPair { .. }), "{e}");
    e.to_string()
}

#[test]
fn pair_files_read_and_bad_ones_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("pairs.tsv");
    std::fs::write(
        &tsv,
        "clean\tcorrupted\tanswer\twrong\nThe Eiffel Tower is in\tThe Colosseum is in\t Paris\t Rome\n",
    )
    .unwrap();
    let pairs = read_pairs(&tsv).unwrap();
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].line, Some(2));
    let jsonl = dir.path().join("pairs.jsonl");
    std::fs::write(
        &jsonl,
        r#"{"clean": "The Eiffel Tower is in", "corrupted": "The Colosseum is in", "answer": " Paris", "wrong": " Rome"}"#,
    )
    .unwrap();
    assert_eq!(read_pairs(&jsonl).unwrap()[0].clean, pairs[0].clean);
    let tok = Tokenizer::gpt2().unwrap();
    let t = tokenize_pairs(&pairs, &tok, false, "pairs.tsv").unwrap();
    assert_eq!(t[0].clean.len(), t[0].corrupted.len());

    let e = pair_file_error("p.tsv", b"The cat sat on the\tA dog\t mat\t rug\n");
    assert!(e.contains("line 1") && e.contains("equal lengths"), "{e}");
    let e = pair_file_error("p.tsv", b"The cat sat\tThe dog sat\t on the mat\t rug\n");
    assert!(e.contains("answer \" on the mat\" is 3 tokens"), "{e}");
    let e = pair_file_error(
        "p.tsv",
        b"The cat sat\tThe dog sat\t on\t in\n\nThe cat\tThe dog\t a\t b\n",
    );
    assert!(e.contains("line 2") && e.contains("empty"), "{e}");
    let e = pair_file_error(
        "p.tsv",
        b"The cat sat\tThe dog sat\t on\t in\nThe \xff\tx\t a\t b\n",
    );
    assert!(e.contains("line 2") && e.contains("UTF-8"), "{e}");
    let e = pair_file_error("p.tsv", b"only\ttwo\n");
    assert!(e.contains("expected 4"), "{e}");
    let e = pair_file_error("p.tsv", b"\tThe dog sat\t on\t in\n");
    assert!(e.contains("clean prompt is empty"), "{e}");
    let e = pair_file_error("p.jsonl", b"{\"clean\": 3}\n");
    assert!(e.contains("line 1") && e.contains("JSON"), "{e}");
    let e = pair_file_error("p.csv", b"a,b,c,d\n");
    assert!(e.contains(".tsv or .jsonl"), "{e}");
}

#[test]
fn checkpoint_with_an_extra_tensor_names_it() {
    let dir = gpt2_dir();
    let p = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    tensors.insert(
        "h.0.attn.rogue.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &p).unwrap();
    let e = match load_model(Some(dir.path().to_str().unwrap()), &LoadOptions::default()) {
        Err(e) => e,
        Ok(_) => panic!("an unused tensor must not load"),
    };
    assert!(matches!(e, Error::UnusedWeights { .. }), "{e}");
    assert!(e.to_string().contains("h.0.attn.rogue.weight"), "{e}");
    // The fixture itself loads (its causal-mask buffers, if any, are deliberately ignored).
    let (_, _) = load_gpt2(gpt2_dir().path(), Processing::none());
}
