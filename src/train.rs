//! Training the embedded default model: a small attention-only transformer that learns
//! induction ("… A B … A → B") from sequences of random tokens with repeated segments.
//!
//! Two choices make a classic induction circuit (a layer-0 previous-token head feeding a layer-1
//! induction head by K-composition) form within a few thousand steps: rotary positions, which keep
//! position out of the residual stream (TransformerLens's shortformer positions serve the same
//! purpose), and data in which the copies sit at random offsets ([`Layout::Shifted`]), so that no
//! positional shortcut predicts them. With learned absolute positions or the [`Layout::Adjacent`]
//! layout the model instead learns heads that attend a fixed distance back.

use crate::analysis::detectors::{all_head_scores, best_head, HeadKind};
use crate::config::{Activation, ModelConfig, Normalization, Positional};
use crate::error::Result;
use crate::model::HookedTransformer;
use crate::weights::Weights;
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Token ids the training data draws from: printable ASCII, so that typed prompts are in
/// distribution for the byte-level tokenizer.
const DATA_TOKENS: std::ops::Range<u32> = crate::data::PRINTABLE_ASCII;
/// The byte tokenizer's `<|endoftext|>`, used as BOS.
pub const BYTE_BOS: u32 = 256;

/// The embedded model's shape: 2 attention-only layers with rotary positions over the 257-token
/// byte vocabulary.
pub fn embedded_config() -> ModelConfig {
    ModelConfig {
        n_layers: 2,
        d_model: 64,
        n_heads: 4,
        d_head: 16,
        n_key_value_heads: 4,
        d_mlp: 0,
        d_vocab: 257,
        n_ctx: 128,
        act_fn: Activation::GeluNew,
        normalization_type: Normalization::LN,
        positional_embedding_type: Positional::Rotary,
        rotary_base: 10000.0,
        gated_mlp: false,
        attn_only: true,
        eps: 1e-5,
        tie_word_embeddings: false,
        original_architecture: "HookedTransformer".into(),
        default_prepend_bos: true,
        bos_token_id: Some(BYTE_BOS),
        eos_token_id: Some(BYTE_BOS),
        ..ModelConfig::plain()
    }
}

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch: usize,
    pub seq_len: usize,
    /// From this step on, every other batch has sequences of `long_seq_len` tokens (with the batch
    /// shrunk to keep the tokens per step): the circuit forms quickly on short sequences (its
    /// emergence time grows with their length), then learns to reach across the longer context
    /// while still seeing short ones.
    pub long_from: usize,
    pub long_seq_len: usize,
    pub lr: f64,
    pub seed: u64,
    pub layout: Layout,
}

/// Where the two copies of a segment sit in a training sequence (see [`repeated_segments_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// BOS, the segment, the segment again, random tokens.
    Adjacent,
    /// BOS, random tokens, the segment, random tokens, the segment again, random tokens.
    Shifted,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 4000,
            batch: 32,
            seq_len: 32,
            long_from: 2500,
            long_seq_len: 128,
            lr: 3e-3,
            seed: 0,
            layout: Layout::Shifted,
        }
    }
}

/// A batch [batch, seq_len] of BOS, a random segment of L printable-ASCII tokens, the same
/// segment again, and random tokens to the end. [`Layout::Adjacent`]: the first copy starts right
/// after BOS and the second right after it, L in 8..=(seq_len-1)/2. [`Layout::Shifted`] (the
/// embedded model's data): L is 3..=(seq_len-1)/2 and random tokens of random length come before
/// and between the copies, so that no positional shortcut predicts the second copy: only
/// induction does.
pub fn repeated_segments_batch(
    rng: &mut StdRng,
    batch: usize,
    seq_len: usize,
    layout: Layout,
    device: &Device,
) -> Result<Tensor> {
    let body = seq_len.saturating_sub(1);
    if body < 6 {
        return Err(crate::Error::Invalid(format!(
            "seq_len {seq_len} is too short for repeated segments (need at least 7)"
        )));
    }
    let random = |rng: &mut StdRng, n: usize| -> Vec<u32> {
        (0..n).map(|_| rng.random_range(DATA_TOKENS)).collect()
    };
    let mut data = Vec::with_capacity(batch * seq_len);
    let shifted = layout == Layout::Shifted;
    for _ in 0..batch {
        let len = rng.random_range(if shifted { 3 } else { 8.min(body / 2) }..=body / 2);
        let slack = body - 2 * len;
        let (lead, gap) = match layout {
            Layout::Shifted => {
                let lead = rng.random_range(0..=slack);
                (lead, rng.random_range(0..=slack - lead))
            }
            Layout::Adjacent => (0, 0),
        };
        let seg = random(rng, len);
        let mut row = vec![BYTE_BOS];
        row.extend(random(rng, lead));
        row.extend(&seg);
        row.extend(random(rng, gap));
        row.extend(&seg);
        row.extend(random(rng, seq_len - row.len()));
        data.extend(row);
    }
    Ok(Tensor::from_vec(data, (batch, seq_len), device)?)
}

/// Mean next-token cross-entropy of `model` on `tokens` [batch, pos] (differentiable).
pub fn next_token_loss(model: &HookedTransformer, tokens: &Tensor) -> Result<Tensor> {
    let logits = model.forward(tokens, &mut crate::Hooks::none())?;
    crate::analysis::metrics::mean_next_token_loss(&logits, tokens)
}

/// Trains a model of shape `cfg` from random initialisation; `progress(step, loss, model)` is
/// called after every step with the model that step evaluated (for monitoring, e.g. induction
/// scores). Returns the canonical (unprocessed) weights.
pub fn train_induction_model(
    cfg: &ModelConfig,
    tc: &TrainConfig,
    mut progress: impl FnMut(usize, f32, &HookedTransformer) -> Result<()>,
) -> Result<Weights> {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(tc.seed);
    let (d, h, dh, v) = (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_vocab);
    // Seeded normal initialisation (Box-Muller), so a run is reproducible from its seed.
    let mut init_rng = StdRng::seed_from_u64(tc.seed.wrapping_add(1));
    let mut randn = |shape: &[usize], std: f64| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let (u1, u2): (f64, f64) = (1.0 - init_rng.random::<f64>(), init_rng.random());
                (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect();
        Tensor::from_vec(v, shape, &dev)
    };
    let full = |shape: &[usize], v: f32| Tensor::full(v, shape, &dev);
    let mut vars: Vec<(String, Var)> = Vec::new();
    let mut param = |name: &str, t: candle_core::Result<Tensor>| -> Result<()> {
        vars.push((name.to_string(), Var::from_tensor(&t?)?));
        Ok(())
    };
    let std = 1.0 / (d as f64).sqrt();
    param("embed.W_E", randn(&[v, d], 1.0))?;
    if cfg.positional_embedding_type == Positional::Standard {
        // Sinusoidal start for the learned positions: relative offsets are then linear maps of
        // the embedding, so a previous-token head (and with it induction) forms sooner.
        let table = crate::model::sinusoidal_table(cfg.n_ctx, d, &dev)?;
        param("pos_embed.W_pos", Ok((table * std::f64::consts::SQRT_2)?))?;
    }
    for l in 0..cfg.n_layers {
        let p = |n: &str| format!("blocks.{l}.{n}");
        param(&p("ln1.w"), full(&[d], 1.0))?;
        param(&p("ln1.b"), full(&[d], 0.0))?;
        for w in ["W_Q", "W_K", "W_V"] {
            param(&p(&format!("attn.{w}")), randn(&[h, d, dh], std))?;
        }
        for b in ["b_Q", "b_K", "b_V"] {
            param(&p(&format!("attn.{b}")), full(&[h, dh], 0.0))?;
        }
        param(
            &p("attn.W_O"),
            randn(&[h, dh, d], std / (2.0 * cfg.n_layers as f64).sqrt()),
        )?;
        param(&p("attn.b_O"), full(&[d], 0.0))?;
    }
    param("ln_final.w", full(&[d], 1.0))?;
    param("ln_final.b", full(&[d], 0.0))?;
    param("unembed.W_U", randn(&[d, v], std))?;
    param("unembed.b_U", full(&[v], 0.0))?;
    let weights = |vars: &[(String, Var)]| Weights {
        tensors: vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect(),
    };
    let mut opt = AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        ParamsAdamW {
            lr: tc.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    for step in 0..tc.steps {
        // Cosine decay to a tenth of the peak rate.
        let frac = step as f64 / tc.steps as f64;
        opt.set_learning_rate(
            tc.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())),
        );
        let model = HookedTransformer::new(cfg.clone(), &weights(&vars))?;
        let (batch, seq_len) = match step >= tc.long_from && step % 2 == 1 {
            true => (
                (tc.batch * tc.seq_len / tc.long_seq_len).max(1),
                tc.long_seq_len,
            ),
            false => (tc.batch, tc.seq_len),
        };
        let tokens = repeated_segments_batch(&mut rng, batch, seq_len, tc.layout, &dev)?;
        let loss = next_token_loss(&model, &tokens)?;
        opt.backward_step(&loss)?;
        progress(step, loss.to_scalar::<f32>()?, &model)?;
    }
    let w = weights(&vars);
    // Detach from the autograd graph.
    let tensors = w
        .tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.detach().copy()?)))
        .collect::<Result<_>>()?;
    Ok(Weights { tensors })
}
/// Fixed probe batches of repeated random printable tokens (16 sequences, halves 12 and 50, one
/// seed), so that head scores at different training steps compare: (half, tokens).
pub fn probe_batches() -> Result<Vec<(usize, Tensor)>> {
    [12, 50]
        .into_iter()
        .map(|half| {
            let mut rng = StdRng::seed_from_u64(12345);
            let dev = Device::Cpu;
            crate::data::repeated_random_tokens(
                &mut rng,
                16,
                half,
                Some(BYTE_BOS),
                crate::data::PRINTABLE_ASCII,
                &dev,
            )
            .map(|t| (half, t))
        })
        .collect()
}

/// A probe's best head of one kind: (half, kind, (layer, head, score)).
pub type BestHead = (usize, HeadKind, (usize, usize, f32));

/// The best induction and previous-token head of `model` on each probe batch.
pub fn best_heads(model: &HookedTransformer, probes: &[(usize, Tensor)]) -> Result<Vec<BestHead>> {
    let mut out = vec![];
    for (half, probe) in probes {
        let scores = all_head_scores(model, probe, *half)?;
        for kind in [HeadKind::Induction, HeadKind::PreviousToken] {
            out.push((*half, kind, best_head(&scores[&kind])?));
        }
    }
    Ok(out)
}
