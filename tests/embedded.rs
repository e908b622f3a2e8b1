//! The embedded default model: it loads with no files, predicts the second copy of a repeated
//! random segment, and does so with a classic induction circuit (a layer-0 previous-token head
//! feeding a layer-1 induction head) that the hooks find and ablation confirms.

use candle_core::{IndexOp, Tensor};
use hooklens::analysis::ablation::zero_ablate_heads;
use hooklens::analysis::detectors::{all_head_scores, best_head, HeadKind};
use hooklens::analysis::metrics::next_token_losses;
use hooklens::data::{repeated_random_tokens, PRINTABLE_ASCII};
use hooklens::train::BYTE_BOS;
use hooklens::{load_model, HookedTransformer, Hooks, LoadOptions};
use rand::SeedableRng;

const HALF: usize = 12;

fn test_tokens(model: &HookedTransformer, batch: usize, seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    repeated_random_tokens(
        &mut rng,
        batch,
        HALF,
        Some(BYTE_BOS),
        PRINTABLE_ASCII,
        model.device(),
    )
    .unwrap()
}

/// Mean next-token loss (nats) over the first copy's and the second copy's predictions.
fn copy_losses(model: &HookedTransformer, tokens: &Tensor, mut hooks: Hooks) -> (f32, f32) {
    let logits = model.forward(tokens, &mut hooks).unwrap();
    // [batch, pos - 1]: entry i is the loss of predicting token i + 1 from position i.
    let losses = next_token_losses(&logits, tokens).unwrap();
    let loss_at = |i: usize| -> f32 {
        losses
            .i((.., i))
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    // First copy: positions 1..HALF predict unseen random tokens (≈ ln 95 = 4.55 nats).
    let first = (1..HALF).map(loss_at).sum::<f32>() / (HALF - 1) as f32;
    // Second copy: positions HALF + 1 .. 2 HALF predict tokens seen once before.
    let second = (HALF + 1..2 * HALF).map(loss_at).sum::<f32>() / (HALF - 1) as f32;
    (first, second)
}

#[test]
fn embedded_model_predicts_repeated_segments() {
    let (model, tok, _) = load_model(None, &LoadOptions::default()).unwrap();
    assert_eq!(tok.vocab_size(), model.cfg.d_vocab);
    let tokens = test_tokens(&model, 32, 42);
    let (first, second) = copy_losses(&model, &tokens, Hooks::none());
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
fn embedded_model_has_an_induction_circuit() {
    let (model, _, _) = load_model(None, &LoadOptions::default()).unwrap();
    let tokens = test_tokens(&model, 32, 7);
    let scores = all_head_scores(&model, &tokens, HALF).unwrap();
    let (il, ih, ind) = best_head(&scores[&HeadKind::Induction]).unwrap();
    let (pl, ph, prev) = best_head(&scores[&HeadKind::PreviousToken]).unwrap();
    eprintln!("induction L{il}H{ih} {ind:.3}, previous-token L{pl}H{ph} {prev:.3}");
    // The standard repeated-random-tokens test: an induction head scores at least 0.5, in layer 1,
    // and composes with a previous-token head in layer 0.
    assert!(
        ind >= 0.5 && il == 1,
        "best induction head L{il}H{ih} scores {ind}"
    );
    assert!(
        prev >= 0.5 && pl == 0,
        "best previous-token head L{pl}H{ph} scores {prev}"
    );
    // Causally: the second copy is predicted through these heads. The circuit is redundant
    // (several heads of each kind), so every head scoring >= 0.5 of a kind is ablated at once.
    let (first, clean) = copy_losses(&model, &tokens, Hooks::none());
    for kind in [HeadKind::Induction, HeadKind::PreviousToken] {
        let heads = above(&scores, kind, 0.5);
        let (_, ablated) = copy_losses(&model, &tokens, zero_ablate_heads(&heads));
        eprintln!(
            "second-copy loss {clean:.3} -> {ablated:.3} with {kind:?} heads {heads:?} ablated"
        );
        assert!(
            ablated > clean + 0.5 * (first - clean),
            "ablating {heads:?}: {clean} -> {ablated} (first copy {first})"
        );
    }
}

/// Every (layer, head) whose score of `kind` is at least `min`.
fn above(
    scores: &std::collections::HashMap<HeadKind, Tensor>,
    kind: HeadKind,
    min: f32,
) -> Vec<(usize, usize)> {
    let s = scores[&kind].to_vec2::<f32>().unwrap();
    (0..s.len())
        .flat_map(|l| (0..s[l].len()).map(move |h| (l, h)))
        .filter(|&(l, h)| s[l][h] >= min)
        .collect()
}

#[test]
fn embedded_model_head_scores_are_well_formed() {
    let (model, _, _) = load_model(None, &LoadOptions::default()).unwrap();
    let tokens = test_tokens(&model, 8, 0);
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
