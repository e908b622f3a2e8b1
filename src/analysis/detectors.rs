//! Attention-head detectors: how strongly each head attends along a fixed "stripe" of the
//! pattern (previous token, duplicate token, induction) on repeated random tokens.

use crate::error::{Error, Result};
use crate::hook_points::{BlockHook, HookPoint, NameFilter};
use crate::model::HookedTransformer;
use candle_core::{DType, Device, Tensor};

/// The stripe a head type attends along, for input BOS + r + r with `half` = |r|.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
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

/// The `k` heads that score highest as `kind` on 8 sequences of repeated random tokens (16
/// tokens repeated, or fewer in a short context; after `bos` when given), drawn with `seed`:
/// (layer, head), best first.
pub fn top_heads(
    model: &HookedTransformer,
    kind: HeadKind,
    k: usize,
    bos: Option<u32>,
    seed: u64,
) -> Result<Vec<(usize, usize)>> {
    use rand::SeedableRng;
    let half = 16.min((model.cfg.n_ctx - 1) / 2);
    let range = crate::data::random_token_range(&model.cfg, None, None)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tokens =
        crate::data::repeated_random_tokens(&mut rng, 8, half, bos, range, model.device())?;
    let scores: Vec<f32> = all_head_scores(model, &tokens, half)?[&kind]
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let nh = model.cfg.n_heads;
    Ok(super::metrics::top_k(&scores, k)
        .into_iter()
        .map(|(i, _)| (i as usize / nh, i as usize % nh))
        .collect())
}

/// One head's attention pattern on one prompt: ((layer, head), pattern [query][key]).
pub type HeadPattern = ((usize, usize), Vec<Vec<f32>>);

/// The attention pattern of every head of `layers` on the one prompt `tokens` [1, pos],
/// layer-major.
pub fn head_patterns(
    model: &HookedTransformer,
    tokens: &Tensor,
    layers: &[usize],
) -> Result<Vec<HeadPattern>> {
    let points = layers
        .iter()
        .map(|&l| HookPoint::block(l, BlockHook::Pattern))
        .collect();
    let (_, cache) = model.run_with_cache(tokens, NameFilter::Points(points))?;
    let mut out = vec![];
    for &l in layers {
        let p = cache
            .block(l, BlockHook::Pattern)?
            .get(0)?
            .to_dtype(DType::F32)?; // [head, q, k]
        for h in 0..model.cfg.n_heads {
            out.push(((l, h), p.get(h)?.to_vec2()?));
        }
    }
    Ok(out)
}
