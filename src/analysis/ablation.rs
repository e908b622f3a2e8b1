//! Ablation: knock out units (attention heads, MLP layers, neurons) by zero, mean or resample
//! ablation and measure what changes. The sweep itself is [`super::sweep`]; this file says what a
//! unit is and what each kind of ablation puts in its place.

use super::metrics::top_k;
use super::sweep::{Job, Metric, Sweep, Target};
use crate::data::{prompt_chunks, PairBatch};
use crate::error::{Error, Result};
use crate::hook_points::{BlockHook, HookPoint, NameFilter};
use crate::hooks::Hooks;
use crate::intervention::{Intervention, Site};
use crate::model::HookedTransformer;
use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// Hooks that zero-ablate each (layer, head) in `heads` (its `hook_z`) at every position.
///
/// ```
/// // Knock out L1H0 and L1H2 together.
/// let hooks = hooklens::analysis::ablation::zero_ablate_heads(&[(1, 0), (1, 2)]);
/// assert_eq!(hooks.sites().count(), 2);
/// ```
pub fn zero_ablate_heads<'a>(heads: &[(usize, usize)]) -> Hooks<'a> {
    heads.iter().fold(Hooks::none(), |hooks, &(layer, head)| {
        hooks.intervene(Unit::Head { layer, head }.site(), Intervention::Zero)
    })
}

/// Something to ablate, named as on the command line: `L3H2` (head 2 of layer 3, its
/// `hook_z`), `MLP3` (layer 3's MLP output, `hook_mlp_out`), `L3N42` (neuron 42 of layer 3,
/// `mlp.hook_post`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Unit {
    Head { layer: usize, head: usize },
    Mlp { layer: usize },
    Neuron { layer: usize, neuron: usize },
}

impl Unit {
    /// Where the ablation applies, at every position.
    pub fn site(self) -> Site {
        match self {
            Unit::Head { layer, head } => Site::head(HookPoint::block(layer, BlockHook::Z), head),
            Unit::Mlp { layer } => Site::at(HookPoint::block(layer, BlockHook::MlpOut)),
            Unit::Neuron { layer, neuron } => {
                Site::neuron(HookPoint::block(layer, BlockHook::MlpPost), neuron)
            }
        }
    }

    /// `head`, `mlp` or `neuron`: the table's `unit_kind`.
    pub fn kind(self) -> &'static str {
        match self {
            Unit::Head { .. } => "head",
            Unit::Mlp { .. } => "mlp",
            Unit::Neuron { .. } => "neuron",
        }
    }

    pub fn layer(self) -> usize {
        match self {
            Unit::Head { layer, .. } | Unit::Mlp { layer } | Unit::Neuron { layer, .. } => layer,
        }
    }

    /// Checks the unit against the model: layer, head and neuron in range, an MLP present.
    pub fn check(self, model: &HookedTransformer) -> Result<()> {
        let c = &model.cfg;
        model.block(self.layer())?;
        match self {
            Unit::Head { head, .. } => model.check_head(head),
            _ if c.attn_only => Err(Error::Invalid(format!(
                "unit {self}: this model is attention-only and has no MLPs"
            ))),
            Unit::Neuron { neuron, .. } if neuron >= c.d_mlp => Err(Error::Invalid(format!(
                "unit {self}: neuron {neuron} is out of range: each MLP has {} neurons",
                c.d_mlp
            ))),
            _ => Ok(()),
        }
    }

    /// Every head of the model, in layer then head order.
    pub fn all_heads(model: &HookedTransformer) -> Vec<Unit> {
        let c = &model.cfg;
        (0..c.n_layers)
            .flat_map(|layer| (0..c.n_heads).map(move |head| Unit::Head { layer, head }))
            .collect()
    }

    /// Every MLP layer (none for an attention-only model).
    pub fn all_mlps(model: &HookedTransformer) -> Vec<Unit> {
        match model.cfg.attn_only {
            true => vec![],
            false => (0..model.cfg.n_layers)
                .map(|layer| Unit::Mlp { layer })
                .collect(),
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unit::Head { layer, head } => write!(f, "L{layer}H{head}"),
            Unit::Mlp { layer } => write!(f, "MLP{layer}"),
            Unit::Neuron { layer, neuron } => write!(f, "L{layer}N{neuron}"),
        }
    }
}

impl FromStr for Unit {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "unknown unit `{s}`: write L<layer>H<head> (a head, e.g. L1H2), MLP<layer> (an MLP layer, e.g. MLP0) or L<layer>N<neuron> (a neuron, e.g. L0N42)"
            ))
        };
        let num = |t: &str| t.parse::<usize>().map_err(|_| bad());
        if let Some(l) = s.strip_prefix("MLP") {
            return Ok(Unit::Mlp { layer: num(l)? });
        }
        let rest = s.strip_prefix('L').ok_or_else(bad)?;
        if let Some((l, h)) = rest.split_once('H') {
            return Ok(Unit::Head {
                layer: num(l)?,
                head: num(h)?,
            });
        }
        if let Some((l, n)) = rest.split_once('N') {
            return Ok(Unit::Neuron {
                layer: num(l)?,
                neuron: num(n)?,
            });
        }
        Err(bad())
    }
}

/// What replaces an ablated unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ablation {
    /// Zero.
    Zero,
    /// Its mean over the reference prompts at each position (prompts shorter than the
    /// position left out).
    Mean,
    /// Its value on another prompt of the dataset, drawn with the seed (the same draw for
    /// every unit).
    Resample,
}

impl Ablation {
    pub fn name(self) -> &'static str {
        match self {
            Ablation::Zero => "zero",
            Ablation::Mean => "mean",
            Ablation::Resample => "resample",
        }
    }
}

/// The hook points whose activations mean and resample ablation of `units` read.
pub fn source_points(units: &[Unit]) -> Vec<HookPoint> {
    let mut v: Vec<HookPoint> = units.iter().map(|u| u.site().point).collect();
    v.sort();
    v.dedup();
    v
}

/// One sweep job per unit: `ablation` of the unit at every position. Mean ablation reads each
/// unit's hook point's mean from `means` ([1, pos or 1, ...], see [`position_means`]); resample
/// ablation patches from the sweep's source prompts 0, the drawn prompts
/// ([`resample_tokens`]).
pub fn ablation_jobs(
    units: &[Unit],
    ablation: Ablation,
    means: Option<&HashMap<HookPoint, Tensor>>,
) -> Result<Vec<Job>> {
    units
        .iter()
        .map(|unit| {
            let site = unit.site();
            Ok(match ablation {
                Ablation::Zero => Job::new(site, Intervention::Zero),
                Ablation::Resample => Job::from_source(site, 0),
                Ablation::Mean => {
                    let mean = means.and_then(|m| m.get(&site.point)).ok_or_else(|| {
                        Error::Invalid(format!(
                            "mean ablation of {unit} needs the mean of {}",
                            site.point
                        ))
                    })?;
                    Job::new(site, Intervention::Mean(mean.clone()))
                }
            })
        })
        .collect()
}

/// What mean ablation averages over.
#[derive(Debug, Clone)]
pub enum MeanReference {
    /// The batch's clean prompts, at each position.
    Dataset,
    /// Other prompts (tokens [batch, pos] and their lengths), at each position.
    Prompts(Tensor, Vec<usize>),
    /// A corpus: one mean per hook point, one token's shape (an activation store's
    /// `means.safetensors`), the same at every position.
    Means(HashMap<HookPoint, Tensor>),
}

/// The corpus means of `units`' hook points, [1, 1, ...] each (the same at every prompt and
/// position): each must be in `means`.
fn corpus_means(
    units: &[Unit],
    means: &HashMap<HookPoint, Tensor>,
) -> Result<HashMap<HookPoint, Tensor>> {
    units
        .iter()
        .map(|unit| {
            let point = unit.site().point;
            let mean = means.get(&point).ok_or_else(|| {
                Error::Invalid(format!(
                    "mean ablation of {unit} needs the mean of {point} over the corpus, which the store does not hold; capture it (--hooks {point})"
                ))
            })?;
            Ok((point, mean.unsqueeze(0)?.unsqueeze(0)?))
        })
        .collect()
}

/// The mean of `act` [batch, pos, ...] over the prompts whose length covers each position:
/// [1, pos, ...]. Equal lengths give the plain batch mean.
pub fn position_mean(act: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let (b, p) = (act.dim(0)?, act.dim(1)?);
    if lengths.len() != b {
        return Err(Error::Invalid(format!(
            "{} prompt lengths for a batch of {b}",
            lengths.len()
        )));
    }
    let mean = weighted_sum(act, lengths, &position_counts(lengths, p))?;
    Ok(mean.to_dtype(act.dtype())?)
}

/// How many of the prompts of `lengths` cover each of `p` positions.
fn position_counts(lengths: &[usize], p: usize) -> Vec<usize> {
    (0..p)
        .map(|i| lengths.iter().filter(|&&l| l > i).count())
        .collect()
}

/// The sum over the rows of `act` [rows, pos, ...] of each position's activation weighted
/// 1 / count[pos] where the row's length covers the position: [1, pos, ...] in f32.
fn weighted_sum(act: &Tensor, lengths: &[usize], count: &[usize]) -> Result<Tensor> {
    let (b, p) = (act.dim(0)?, act.dim(1)?);
    let w: Vec<f32> = lengths
        .iter()
        .flat_map(|&l| (0..p).map(move |i| (i < l) as u8 as f32))
        .zip(count.iter().cycle())
        .map(|(m, &c)| if c == 0 { 0.0 } else { m / c as f32 })
        .collect();
    // [batch, pos, 1, ..] weights, summed over the batch.
    let mut shape = vec![b, p];
    shape.resize(act.rank(), 1);
    let w = Tensor::from_vec(w, shape, act.device())?;
    Ok(act
        .to_dtype(DType::F32)?
        .broadcast_mul(&w)?
        .sum_keepdim(0)?)
}

/// [`position_mean`] of each of `points` over the prompts `tokens` [batch, pos] of `lengths`,
/// run in chunks of at most `tokens_per_pass` tokens: [1, pos, ...] each, in the model's dtype.
pub fn position_means(
    model: &HookedTransformer,
    tokens: &Tensor,
    lengths: &[usize],
    points: &[HookPoint],
    tokens_per_pass: usize,
) -> Result<HashMap<HookPoint, Tensor>> {
    let p = tokens.dim(1)?;
    let count = position_counts(lengths, p);
    let mut sums: HashMap<HookPoint, Tensor> = HashMap::new();
    for rows in prompt_chunks(lengths.len(), p, tokens_per_pass)? {
        let chunk = tokens.narrow(0, rows.start, rows.len())?;
        let (_, cache) = model.run_with_cache(&chunk, NameFilter::Points(points.to_vec()))?;
        for &point in points {
            let part = weighted_sum(cache.get(point)?, &lengths[rows.clone()], &count)?;
            let sum = match sums.remove(&point) {
                Some(sum) => (sum + part)?,
                None => part,
            };
            sums.insert(point, sum);
        }
    }
    sums.into_iter()
        .map(|(point, sum)| Ok((point, sum.to_dtype(model.dtype())?)))
        .collect()
}

/// The source prompts of resample ablation: for prompt i, the tokens of another prompt of
/// `tokens` [batch, pos], drawn with `seed` ([`resample_rows`]).
pub fn resample_tokens(tokens: &Tensor, seed: u64) -> Result<Tensor> {
    let rows = resample_rows(tokens.dim(0)?, seed)?;
    Ok(tokens.index_select(&Tensor::new(rows, tokens.device())?, 0)?)
}

/// For each of `n` prompts, another prompt's index, drawn with `seed`.
pub fn resample_rows(n: usize, seed: u64) -> Result<Vec<u32>> {
    if n < 2 {
        return Err(Error::Invalid(
            "resample ablation draws from other prompts of the dataset: give at least 2 prompts"
                .into(),
        ));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    Ok((0..n)
        .map(|i| {
            let j = rng.random_range(0..n - 1);
            (j + (j >= i) as usize) as u32
        })
        .collect())
}

/// How to pick a layer's top neurons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NeuronRank {
    /// Largest mean activation (`mlp.hook_post`) over all the prompts' real positions.
    Mean,
    /// Largest |direct logit attribution| to answer - wrong at the last position.
    Dla,
}

/// The `k` top neurons of each of `layers` on the clean prompts of `batch`, by `rank`, run in
/// chunks of at most `tokens_per_pass` tokens.
pub fn top_neurons(
    model: &HookedTransformer,
    batch: &PairBatch,
    layers: &[usize],
    k: usize,
    rank: NeuronRank,
    tokens_per_pass: usize,
) -> Result<Vec<Unit>> {
    if model.cfg.attn_only {
        return Err(Error::Invalid(
            "this model is attention-only: it has no MLP neurons to rank".into(),
        ));
    }
    for &l in layers {
        model.block(l)?;
    }
    let scores: Vec<(usize, Vec<f32>)> = match rank {
        NeuronRank::Mean => {
            let points: Vec<HookPoint> = layers
                .iter()
                .map(|&l| HookPoint::block(l, BlockHook::MlpPost))
                .collect();
            // The mean over every prompt's real positions: position means weighted by how
            // many prompts cover each position.
            let p = batch.clean.dim(1)?;
            let count = position_counts(&batch.lengths, p);
            let total: usize = batch.lengths.iter().sum();
            let w: Vec<f32> = count.iter().map(|&c| c as f32 / total as f32).collect();
            let w = Tensor::from_vec(w, (1, p, 1), model.device())?;
            let means = position_means(
                model,
                &batch.clean,
                &batch.lengths,
                &points,
                tokens_per_pass,
            )?;
            layers
                .iter()
                .zip(&points)
                .map(|(&l, point)| {
                    // [1, pos, d_mlp] -> [d_mlp]
                    let m = means[point]
                        .to_dtype(DType::F32)?
                        .broadcast_mul(&w)?
                        .sum((0, 1))?;
                    Ok((l, m.to_vec1::<f32>()?))
                })
                .collect::<Result<_>>()?
        }
        NeuronRank::Dla => {
            let dla = super::dla::dla_on(model, batch, true, tokens_per_pass)?;
            layers
                .iter()
                .map(|&l| {
                    let mut v = vec![0f32; model.cfg.d_mlp];
                    for c in &dla.contributions {
                        if let (Some(cl), Some(n)) = (c.layer, c.neuron) {
                            if cl as usize == l {
                                v[n as usize] = c.value.abs();
                            }
                        }
                    }
                    (l, v)
                })
                .collect()
        }
    };
    Ok(scores
        .into_iter()
        .flat_map(|(layer, s)| {
            top_k(&s, k).into_iter().map(move |(n, _)| Unit::Neuron {
                layer,
                neuron: n as usize,
            })
        })
        .collect())
}

/// One result of an ablation sweep: a unit, how it was ablated, and the metric before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct AblationRow {
    pub unit: Unit,
    pub ablation: Ablation,
    pub metric: Metric,
    pub baseline: f32,
    pub ablated: f32,
}

/// An ablation sweep: each of `units` ablated by each of `kinds` at every position of a batch's
/// clean prompts, measured by each metric (one [`Sweep`] per metric over the same jobs).
pub struct AblationSweep<'m> {
    pub units: Vec<Unit>,
    pub kinds: Vec<Ablation>,
    pub sweeps: Vec<Sweep<'m>>,
}

impl<'m> AblationSweep<'m> {
    /// Plans the sweep. Mean ablation averages over `reference` (see [`MeanReference`]),
    /// resample draws the batch's other prompts (with `seed`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &'m HookedTransformer,
        batch: &PairBatch,
        units: Vec<Unit>,
        kinds: Vec<Ablation>,
        metrics: &[Metric],
        reference: &MeanReference,
        seed: u64,
        tokens_per_pass: usize,
    ) -> Result<Self> {
        if units.is_empty() {
            return Err(Error::Invalid("no units to ablate".into()));
        }
        for u in &units {
            u.check(model)?;
        }
        let wants = |k: Ablation| kinds.contains(&k);
        let points = source_points(&units);
        let means = match (wants(Ablation::Mean), reference) {
            (false, _) => None,
            (true, MeanReference::Means(means)) => Some(corpus_means(&units, means)?),
            (true, MeanReference::Prompts(tokens, lengths)) => Some(position_means(
                model,
                tokens,
                lengths,
                &points,
                tokens_per_pass,
            )?),
            (true, MeanReference::Dataset) => Some(position_means(
                model,
                &batch.clean,
                &batch.lengths,
                &points,
                tokens_per_pass,
            )?),
        };
        let sources = match wants(Ablation::Resample) {
            true => vec![resample_tokens(&batch.clean, seed)?],
            false => vec![],
        };
        let mut jobs = vec![];
        for &kind in &kinds {
            jobs.extend(ablation_jobs(&units, kind, means.as_ref())?);
        }
        let sweeps = metrics
            .iter()
            .map(|&m| {
                Sweep::with_sources(
                    model,
                    Target::new(batch, false)?,
                    sources.clone(),
                    m,
                    jobs.clone(),
                    tokens_per_pass,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            units,
            kinds,
            sweeps,
        })
    }

    /// The rows of the sweeps' `values` (one list per sweep; `None` where another shard ran
    /// the job).
    pub fn rows(&self, values: &[Vec<Option<f32>>]) -> Vec<AblationRow> {
        self.sweeps
            .iter()
            .zip(values)
            .flat_map(|(s, v)| ablation_rows(&self.units, &self.kinds, s.metric(), s.baseline(), v))
            .collect()
    }
}

/// The rows of an ablation sweep whose jobs are [`ablation_jobs`] of `units` for each of
/// `kinds` in turn, measured by `metric` (`baseline` without ablation): one row per job that
/// has a value (a shard computes only some).
pub fn ablation_rows(
    units: &[Unit],
    kinds: &[Ablation],
    metric: Metric,
    baseline: f32,
    values: &[Option<f32>],
) -> Vec<AblationRow> {
    let jobs = kinds
        .iter()
        .flat_map(|&ablation| units.iter().map(move |&unit| (ablation, unit)));
    jobs.zip(values)
        .filter_map(|((ablation, unit), v)| {
            v.map(|ablated| AblationRow {
                unit,
                ablation,
                metric,
                baseline,
                ablated,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn units_parse_and_print() {
        for s in ["L1H2", "MLP0", "L3N42"] {
            assert_eq!(s.parse::<Unit>().unwrap().to_string(), s);
        }
        for bad in ["H1", "L1", "L1X2", "MLP", "LaHb", ""] {
            let e = bad.parse::<Unit>().unwrap_err().to_string();
            assert!(e.contains("unknown unit") && e.contains("L1H2"), "{e}");
        }
    }

    #[test]
    fn position_mean_leaves_out_padding() {
        // Two prompts, lengths 2 and 1: position 1 is the first prompt's alone.
        let act = Tensor::new(&[[[1f32], [2.]], [[3.], [100.]]], &Device::Cpu).unwrap();
        let m = position_mean(&act, &[2, 1]).unwrap();
        assert_eq!(
            m.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [2.0, 2.0]
        );
    }

    #[test]
    fn resampling_never_draws_the_prompt_itself() {
        let rows = resample_rows(5, 7).unwrap();
        assert!(rows
            .iter()
            .enumerate()
            .all(|(i, &j)| j as usize != i && j < 5));
        assert_eq!(rows, resample_rows(5, 7).unwrap());
        assert!(resample_rows(1, 0).is_err());
    }
}
