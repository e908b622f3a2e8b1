//! The embedded default model: it loads with no files and predicts the second copy of a repeated
//! random segment (see the README for how: a positional shortcut, not yet a clean induction head).

use candle_core::{IndexOp, D};
use hooklens::detectors::{all_head_scores, HeadKind};
use hooklens::train::{repeated_random_tokens, BYTE_BOS, DATA_TOKENS};
use hooklens::{load_model, Hooks, LoadOptions};
use rand::SeedableRng;

const HALF: usize = 12;

#[test]
fn embedded_model_predicts_repeated_segments() {
    let (model, tok) = load_model(None, &LoadOptions::default()).unwrap();
    assert_eq!(tok.vocab_size(), model.cfg.d_vocab);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let tokens = repeated_random_tokens(
        &mut rng,
        32,
        HALF,
        Some(BYTE_BOS),
        DATA_TOKENS,
        model.device(),
    )
    .unwrap();
    let logits = model.forward(&tokens, &mut Hooks::none()).unwrap();
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    // Loss of predicting token i + 1 from position i, averaged over the batch.
    let loss_at = |i: usize| -> f32 {
        let next = tokens.i((.., i + 1)).unwrap().unsqueeze(1).unwrap();
        -lp.i((.., i))
            .unwrap()
            .contiguous()
            .unwrap()
            .gather(&next.contiguous().unwrap(), 1)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    // First copy: positions 1..HALF predict unseen random tokens (≈ ln 95 = 4.55 nats).
    let first: f32 = (1..HALF).map(loss_at).sum::<f32>() / (HALF - 1) as f32;
    // Second copy: positions HALF + 1 .. 2 HALF predict tokens seen once before.
    let second: f32 = (HALF + 1..2 * HALF).map(loss_at).sum::<f32>() / (HALF - 1) as f32;
    eprintln!("loss on the first copy {first:.3}, on the second copy {second:.3}");
    assert!(
        first > 4.0,
        "first copy should be unpredictable, got {first}"
    );
    assert!(
        second < 1.0,
        "second copy should be predicted by induction, got {second}"
    );
}

#[test]
fn embedded_model_head_scores_are_well_formed() {
    let (model, _) = load_model(None, &LoadOptions::default()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let tokens = repeated_random_tokens(
        &mut rng,
        8,
        HALF,
        Some(BYTE_BOS),
        DATA_TOKENS,
        model.device(),
    )
    .unwrap();
    let scores = all_head_scores(&model, &tokens, HALF).unwrap();
    for kind in HeadKind::ALL {
        let s = scores[&kind].to_vec2::<f32>().unwrap();
        assert_eq!(
            (s.len(), s[0].len()),
            (model.cfg.n_layers, model.cfg.n_heads)
        );
        assert!(
            s.iter().flatten().all(|&x| (0.0..=1.0 + 1e-5).contains(&x)),
            "{kind:?}: {s:?}"
        );
    }
}
