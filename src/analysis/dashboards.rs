//! Unit dashboards over a whole activation store (Neuronpedia's and sae_vis's views of a
//! neuron): each unit's top-k activating tokens with the context around them, its activation
//! histogram, and its direct effect on the logits. Two streaming passes over the store, never
//! holding more than one shard: the first keeps a k-heap, the range and the moments of each
//! unit; the second fills the histogram (whose bins need the range) and the activations around
//! each top example.

use crate::analysis::metrics::top_k;
use crate::error::{Error, Result};
use crate::hook_points::{BlockHook, HookPoint};
use crate::matmul::matmul;
use crate::model::HookedTransformer;
use crate::store::ActivationStore;
use candle_core::{DType, IndexOp, Tensor};
use rayon::prelude::*;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// What to build dashboards of, and how big.
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardOptions {
    /// The hook's units (its last axis, flattened: `hook_z` unit `h·d_head + i`).
    pub units: Vec<usize>,
    /// Top examples per unit.
    pub k: usize,
    /// Histogram bins.
    pub bins: usize,
    /// Tokens shown before and after each example's token (within its context).
    pub before: usize,
    pub after: usize,
    /// Tokens left out of examples, histograms and moments: BOS and the document separator,
    /// whose activations are outliers in most models, and any first positions.
    pub tokens: crate::store::TokenFilter,
}

/// One of a unit's top-activating tokens, with the tokens around it.
#[derive(Debug, Clone, PartialEq)]
pub struct TopExample {
    pub activation: f32,
    /// Token index in the store (context · context_len + position).
    pub token: u64,
    pub context: usize,
    pub position: usize,
    /// The window's first position, and its tokens with the unit's activation on each.
    pub window_start: usize,
    pub window: Vec<(u32, f32)>,
}

/// A histogram of `counts.len()` equal bins over `lo..=hi`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub lo: f32,
    pub hi: f32,
    pub counts: Vec<u64>,
}

/// Everything a unit's dashboard shows.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitDashboard {
    pub unit: usize,
    /// Tokens counted (the store's, less BOS and separators unless asked for).
    pub tokens: u64,
    pub max: f32,
    pub min: f32,
    pub mean: f32,
    /// Fraction of tokens where the unit is above zero.
    pub frac_active: f32,
    /// Strongest first; ties to the earlier token.
    pub examples: Vec<TopExample>,
    pub histogram: Histogram,
}

/// Ordered so that the heap's top is the weakest kept example: smaller value, then later token.
type Key = (Reverse<OrdF32>, u64);

#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF32(f32);
impl Eq for OrdF32 {}
impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for OrdF32 {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

#[derive(Debug, Clone)]
struct Pass1 {
    heap: BinaryHeap<Key>,
    min: f32,
    max: f32,
    sum: f64,
    active: u64,
}

/// Dashboards of `opts.units` of hook `hook` over every token of `store`; `progress` gets the
/// tokens of each shard read (twice: two passes).
pub fn dashboards(
    store: &ActivationStore,
    hook: &str,
    opts: &DashboardOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<UnitDashboard>> {
    let (_, stored) = store.spec.hook(hook)?;
    let read = |s: usize| store.read(s, hook);
    dashboards_of(store, hook, stored.width(), &read, opts, progress)
}

/// [`dashboards`] of units computed from each shard by `units_of` ([tokens, width] for shard
/// i): an SAE's features of a stored hook, say. `what` names them in errors.
pub fn dashboards_of(
    store: &ActivationStore,
    what: &str,
    width: usize,
    units_of: &dyn Fn(usize) -> Result<Tensor>,
    opts: &DashboardOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<UnitDashboard>> {
    if let Some(&u) = opts.units.iter().find(|&&u| u >= width) {
        return Err(Error::bad_parameter(
            "units",
            u,
            format!("{what} has {width} units, 0..{width}"),
        ));
    }
    if opts.k == 0 || opts.bins == 0 {
        return Err(Error::bad_parameter(
            "top_k",
            opts.k,
            "top examples and histogram bins must be at least 1",
        ));
    }
    let n_units = opts.units.len();
    let shards = store.spec.shards;
    let c = store.spec.context_len;
    let first_token = |s: usize| (store.spec.shard_contexts(s).start * c) as u64;
    // The units in contiguous groups, one per thread: each reads a shard row by row once.
    let groups: Vec<std::ops::Range<usize>> = {
        let per = n_units.div_ceil(rayon::current_num_threads().max(1)).max(1);
        (0..n_units)
            .step_by(per)
            .map(|a| a..(a + per).min(n_units))
            .collect()
    };
    let columns = |x: &Tensor| -> Result<Vec<f32>> {
        // [rows, width] -> [rows, units]
        let idx = Tensor::new(
            opts.units.iter().map(|&u| u as u32).collect::<Vec<_>>(),
            x.device(),
        )?;
        Ok(x.index_select(&idx, 1)?.flatten_all()?.to_vec1()?)
    };

    let mut acc: Vec<Pass1> = vec![
        Pass1 {
            heap: BinaryHeap::new(),
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            sum: 0.0,
            active: 0
        };
        n_units
    ];
    let mut tokens = 0u64;
    for s in 0..shards {
        let x = columns(&units_of(s)?)?;
        let ids = store.column(s, "token_id")?;
        let pos = store.column(s, "position")?;
        let counted = |r: usize| opts.tokens.keeps(ids[r], pos[r]);
        let rows = x.len() / n_units.max(1);
        let base = first_token(s);
        split(&mut acc, &groups)
            .into_par_iter()
            .zip(groups.par_iter())
            .for_each(|(part, g)| {
                for r in (0..rows).filter(|&r| counted(r)) {
                    let row = &x[r * n_units + g.start..r * n_units + g.end];
                    for (a, &v) in part.iter_mut().zip(row) {
                        a.min = a.min.min(v);
                        a.max = a.max.max(v);
                        a.sum += v as f64;
                        a.active += (v > 0.0) as u64;
                        let key = (Reverse(OrdF32(v)), base + r as u64);
                        if a.heap.len() < opts.k {
                            a.heap.push(key);
                        } else if a.heap.peek().is_some_and(|top| key < *top) {
                            a.heap.pop();
                            a.heap.push(key);
                        }
                    }
                }
            });
        tokens += (0..rows).filter(|&r| counted(r)).count() as u64;
        progress(rows);
    }

    // The examples strongest first, and which (unit, example, offset) each window token needs.
    let mut dash: Vec<UnitDashboard> = acc
        .iter()
        .zip(&opts.units)
        .map(|(a, &unit)| {
            let mut keys: Vec<Key> = a.heap.clone().into_vec();
            keys.sort();
            let examples = keys
                .into_iter()
                .map(|(Reverse(OrdF32(v)), t)| {
                    let (context, position) = ((t / c as u64) as usize, (t % c as u64) as usize);
                    let window_start = position.saturating_sub(opts.before);
                    let end = (position + opts.after + 1).min(c);
                    TopExample {
                        activation: v,
                        token: t,
                        context,
                        position,
                        window_start,
                        window: vec![(0, 0.0); end - window_start],
                    }
                })
                .collect();
            let (lo, hi) = (a.min, a.max);
            UnitDashboard {
                unit,
                tokens,
                max: a.max,
                min: a.min,
                mean: (a.sum / tokens.max(1) as f64) as f32,
                frac_active: a.active as f32 / tokens.max(1) as f32,
                examples,
                histogram: Histogram {
                    lo,
                    hi,
                    counts: vec![0; opts.bins],
                },
            }
        })
        .collect();
    let mut wanted: Vec<(u64, usize, usize, usize)> = vec![]; // (token, unit index, example, offset)
    for (ui, d) in dash.iter().enumerate() {
        for (ei, e) in d.examples.iter().enumerate() {
            let first = e.token - (e.position - e.window_start) as u64;
            wanted.extend((0..e.window.len()).map(|o| (first + o as u64, ui, ei, o)));
        }
    }
    wanted.sort();

    for s in 0..shards {
        let x = columns(&units_of(s)?)?;
        let ids = store.column(s, "token_id")?;
        let pos = store.column(s, "position")?;
        let counted = |r: usize| opts.tokens.keeps(ids[r], pos[r]);
        let rows = ids.len();
        let base = first_token(s);
        let bins = opts.bins;
        split(&mut dash, &groups)
            .into_par_iter()
            .zip(groups.par_iter())
            .for_each(|(part, g)| {
                for r in (0..rows).filter(|&r| counted(r)) {
                    let row = &x[r * n_units + g.start..r * n_units + g.end];
                    for (d, &v) in part.iter_mut().zip(row) {
                        let h = &mut d.histogram;
                        let span = (h.hi - h.lo).max(f32::MIN_POSITIVE);
                        let b = (((v - h.lo) / span) * bins as f32) as usize;
                        h.counts[b.min(bins - 1)] += 1;
                    }
                }
            });
        let lo = wanted.partition_point(|w| w.0 < base);
        let hi = wanted.partition_point(|w| w.0 < base + rows as u64);
        for &(t, ui, ei, o) in &wanted[lo..hi] {
            let r = (t - base) as usize;
            dash[ui].examples[ei].window[o] = (ids[r], x[r * n_units + ui]);
        }
        progress(rows);
    }
    Ok(dash)
}

/// `v` cut into the consecutive `groups` (which cover it), one mutable part per thread.
fn split<'a, T>(v: &'a mut [T], groups: &[std::ops::Range<usize>]) -> Vec<&'a mut [T]> {
    let mut parts = Vec::with_capacity(groups.len());
    let mut rest = v;
    for g in groups {
        let (a, b) = rest.split_at_mut(g.len());
        parts.push(a);
        rest = b;
    }
    parts
}

/// Per unit: the tokens whose logits it raises most, and those it lowers most (token, effect).
pub type LogitEffects = Vec<(Vec<(u32, f32)>, Vec<(u32, f32)>)>;

/// The direction each unit of `hook` writes into the residual stream, [width, d_model]:
/// `W_out`'s rows for `mlp.hook_post` neurons, `W_O`'s rows for `attn.hook_z` units
/// (h·d_head + i), the basis vectors for hooks of width d_model (the residual stream, attention
/// and MLP outputs); `None` for other hooks.
pub fn output_directions(model: &HookedTransformer, hook: &HookPoint) -> Result<Option<Tensor>> {
    let cfg = &model.cfg;
    let dirs = match hook {
        HookPoint::Block(l, BlockHook::MlpPost) => match &model.block(*l)?.mlp {
            Some(mlp) => mlp.w_out.clone(), // [d_mlp, d_model]
            None => return Ok(None),
        },
        // W_O [n_heads, d_head, d_model] -> [n_heads·d_head, d_model]
        HookPoint::Block(l, BlockHook::Z) => model
            .W_O(*l)?
            .reshape((cfg.n_heads * cfg.d_head, cfg.d_model))?,
        h if h.axes().head.is_none() && model.hook_shape(h)? == [cfg.d_model] => {
            Tensor::eye(cfg.d_model, DType::F32, model.device())?
        }
        _ => return Ok(None),
    };
    Ok(Some(dirs.to_dtype(DType::F32)?))
}

/// The direct effect on the logits of the units `units` whose residual-stream directions are
/// the rows of `directions` [width, d_model] (see [`output_directions`]): direction · W_U,
/// without the final norm's scale, as the `k` tokens raised most and the `k` lowered most.
pub fn logit_effects(
    model: &HookedTransformer,
    directions: &Tensor,
    units: &[usize],
    k: usize,
) -> Result<LogitEffects> {
    let idx = Tensor::new(
        units.iter().map(|&u| u as u32).collect::<Vec<_>>(),
        directions.device(),
    )?;
    let directions = directions.index_select(&idx, 0)?; // [units, d_model]
    let w_u = model.w_u.to_dtype(DType::F32)?;
    let mut out = Vec::with_capacity(units.len());
    for start in (0..units.len()).step_by(64) {
        let n = 64.min(units.len() - start);
        let logits = matmul(&directions.i(start..start + n)?, &w_u)?; // [n, d_vocab]
        for row in logits.to_vec2::<f32>()? {
            let neg: Vec<f32> = row.iter().map(|v| -v).collect();
            let bottom = top_k(&neg, k).into_iter().map(|(t, v)| (t, -v)).collect();
            out.push((top_k(&row, k), bottom));
        }
    }
    Ok(out)
}

/// For each of `units`, the `k` other rows of `directions` [n, d] most similar to its own by
/// cosine (an SAE's features with the nearest decoder directions): (row, cosine), best first.
pub fn most_similar(
    directions: &Tensor,
    units: &[usize],
    k: usize,
) -> Result<Vec<Vec<(u32, f32)>>> {
    let d = directions.to_dtype(DType::F32)?;
    let unit = d.broadcast_div(&d.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?)?;
    let mut out = Vec::with_capacity(units.len());
    for chunk in units.chunks(64) {
        let idx = Tensor::new(
            chunk.iter().map(|&u| u as u32).collect::<Vec<_>>(),
            d.device(),
        )?;
        let cos = matmul(&unit.index_select(&idx, 0)?, &unit.t()?)?; // [chunk, n]
        for (row, &u) in cos.to_vec2::<f32>()?.into_iter().zip(chunk) {
            let mut best = top_k(&row, k + 1);
            best.retain(|&(j, _)| j as usize != u);
            best.truncate(k);
            out.push(best);
        }
    }
    Ok(out)
}
