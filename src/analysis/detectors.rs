//! Attention-head detectors: how strongly each head attends along a fixed "stripe" of the
//! pattern (previous token, duplicate token, induction) on repeated random tokens.

use crate::error::{Error, Result};
use crate::hooks::{BlockHook, HookPoint, NameFilter};
use crate::model::HookedTransformer;
use candle_core::{DType, Device, Tensor};

/// The stripe a head type attends along, for input BOS + r + r with `half` = |r|.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeadKind {
    /// Each position attends to the one before it.
    PreviousToken,
    /// A token in the second copy attends to its earlier occurrence.
    DuplicateToken,
    /// A token in the second copy attends to the token *after* its earlier occurrence.
    Induction,
}

impl HeadKind {
    pub const ALL: [HeadKind; 3] = [
        HeadKind::PreviousToken,
        HeadKind::DuplicateToken,
        HeadKind::Induction,
    ];

    /// Name used in tables: `previous_token`, `duplicate_token`, `induction`.
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::PreviousToken => "previous_token",
            HeadKind::DuplicateToken => "duplicate_token",
            HeadKind::Induction => "induction",
        }
    }

    /// Key offset relative to the query (key = query + offset).
    fn offset(self, half: usize) -> isize {
        match self {
            HeadKind::PreviousToken => -1,
            HeadKind::DuplicateToken => -(half as isize),
            HeadKind::Induction => 1 - half as isize,
        }
    }
}

/// A [q, k] mask with 1/count at (q, q + offset) for the queries of the second copy
/// (positions `first..first + half`) and 0 elsewhere, so that `(pattern * mask).sum()` is the
/// mean attention along the stripe.
fn stripe_mask(
    p: usize,
    first: usize,
    half: usize,
    offset: isize,
    device: &Device,
) -> Result<Tensor> {
    let mut m = vec![0f32; p * p];
    let queries: Vec<usize> = (first..first + half)
        .filter(|&q| q as isize + offset >= 0)
        .collect();
    for &q in &queries {
        m[q * p + (q as isize + offset) as usize] = 1.0 / queries.len() as f32;
    }
    Ok(Tensor::from_vec(m, (p, p), device)?)
}

/// Every [`HeadKind`]'s scores [n_layers, n_heads] on `tokens` [batch, pos] = (BOS +) r + r,
/// where `half` = |r|, from one forward pass: the attention each head puts on the kind's stripe,
/// averaged over the second copy's positions and the batch. An induction score near 1 means a
/// clean induction head.
pub fn all_head_scores(
    model: &HookedTransformer,
    tokens: &Tensor,
    half: usize,
) -> Result<std::collections::HashMap<HeadKind, Tensor>> {
    let (b, p) = tokens.dims2()?;
    if half == 0 || p < 2 * half {
        return Err(Error::Invalid(format!(
            "tokens of length {p} cannot hold two copies of {half} tokens"
        )));
    }
    let first = p - half; // the second copy sits at the end, after an optional BOS
    let points: Vec<HookPoint> = (0..model.cfg.n_layers)
        .map(|l| HookPoint::Block(l, BlockHook::Pattern))
        .collect();
    let (_, cache) = model.run_with_cache(tokens, NameFilter::Points(points))?;
    let mut out = std::collections::HashMap::new();
    for kind in HeadKind::ALL {
        let mask = stripe_mask(p, first, half, kind.offset(half), model.device())?;
        let per_layer = (0..model.cfg.n_layers)
            .map(|l| {
                let pattern = cache.block(l, BlockHook::Pattern)?.to_dtype(DType::F32)?; // [b, H, q, k]
                Ok((pattern.broadcast_mul(&mask)?.sum((2, 3))?.sum(0)? / b as f64)?)
            })
            .collect::<Result<Vec<_>>>()?;
        out.insert(kind, Tensor::stack(&per_layer, 0)?);
    }
    Ok(out)
}

/// The highest-scoring head of a [n_layers, n_heads] score tensor: (layer, head, score).
pub fn best_head(scores: &Tensor) -> Result<(usize, usize, f32)> {
    let s = scores.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(s.iter()
        .enumerate()
        .flat_map(|(l, row)| row.iter().enumerate().map(move |(h, &v)| (l, h, v)))
        .fold((0, 0, f32::MIN), |a, b| if b.2 > a.2 { b } else { a }))
}

/// The columns of [`scores_frame`] and what they mean (for the run manifest).
pub const SCORE_COLUMNS: &[(&str, &str)] = &[
    ("kind", "previous_token | duplicate_token | induction"),
    ("layer", "layer of the head, from 0"),
    ("head", "head within the layer, from 0"),
    ("label", "the head as L{layer}H{head}"),
    (
        "score",
        "mean attention on the kind's stripe over the second copy, 0..1",
    ),
];

/// A tidy table of scores: one row per (kind, layer, head) with columns
/// `kind` (str), `layer` (u32), `head` (u32), `label` (str, e.g. `L1H3`), `score` (f32).
pub fn scores_frame(
    scores: &std::collections::HashMap<HeadKind, Tensor>,
) -> Result<polars::prelude::DataFrame> {
    use polars::prelude::*;
    let (mut kind, mut layer, mut head, mut label, mut score) =
        (vec![], vec![], vec![], vec![], vec![]);
    for k in HeadKind::ALL {
        let Some(t) = scores.get(&k) else { continue };
        for (l, row) in t.to_vec2::<f32>()?.into_iter().enumerate() {
            for (h, s) in row.into_iter().enumerate() {
                kind.push(k.name());
                layer.push(l as u32);
                head.push(h as u32);
                label.push(format!("L{l}H{h}"));
                score.push(s);
            }
        }
    }
    df!("kind" => kind, "layer" => layer, "head" => head, "label" => label, "score" => score)
        .map_err(|e| Error::Invalid(format!("building the scores table: {e}")))
}
