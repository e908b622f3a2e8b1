//! The sweep engine: many interventions on a dataset of prompts, each measured by a metric,
//! without a loop of full forward passes. Ablation and activation-patching sweeps are lists of
//! [`Job`]s (a [`Site`] and what to put there, a [`Value`]) run through one [`Sweep`].
//!
//! The prompts run in chunks of at most `tokens_per_pass` tokens, and a job's value is the mean
//! of its chunks' values weighted by their sizes: memory is bounded by `tokens_per_pass`
//! whatever the dataset's size (prompts and their token ids aside).
//!
//! What it saves over the naive loop, each exact up to float32 rounding (tests compare every
//! sweep with [`naive`]):
//! - **prefix reuse**: a job at layer L starts from the cached residual stream entering L;
//! - **causal suffix**: a job at position p recomputes only positions p.. , reading the keys
//!   and values of earlier positions from the cache, as generation does;
//! - **batching**: the jobs of a layer run as one batch, each on its own rows
//!   ([`Site::with_rows`]);
//! - **metric-aware unembedding**: a last-position metric unembeds one position per prompt, and
//!   the logit difference only the two columns of `W_U` it reads.

use crate::analysis::metrics::next_token_losses;
use crate::cache::ActivationCache;
use crate::data::{prompt_chunks, PairBatch};
use crate::error::{Error, Result};
use crate::hook_points::{BlockHook, HookPoint, NameFilter};
use crate::hooks::{Hooks, Splice};
use crate::intervention::{Fired, Intervention, Site};
use crate::model::{HookedTransformer, LayerKv};
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::ops::Range;

/// What a sweep measures, averaged over the prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Mean next-token cross-entropy (nats) over each prompt's positions.
    Loss,
    /// logit(answer) - logit(wrong answer) at each prompt's last position.
    LogitDiff,
    /// Probability of the answer at each prompt's last position.
    Prob,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Loss => "loss",
            Metric::LogitDiff => "logit_diff",
            Metric::Prob => "prob",
        }
    }

    /// The metric of each prompt from full logits [batch, pos, d_vocab].
    pub fn of_logits(self, logits: &Tensor, t: &Target) -> Result<Vec<f32>> {
        Ok(self.per_prompt(logits, t)?.to_vec1::<f32>()?)
    }

    /// The metric of each prompt as a tensor [batch] (f32), differentiable: attribution
    /// patching takes its gradient.
    pub fn per_prompt(self, logits: &Tensor, t: &Target) -> Result<Tensor> {
        let (b, p, v) = logits.dims3()?;
        let logits = logits.to_dtype(DType::F32)?;
        let dev = logits.device();
        if self == Metric::Loss {
            // Mean over each prompt's real predictions: weights 1 / (len - 1) on positions
            // 0..len - 1, 0 on padding.
            let w: Vec<f32> = (0..b)
                .flat_map(|r| {
                    let n = t.lengths[r] - 1;
                    (0..p - 1).map(move |i| if i < n { 1.0 / n as f32 } else { 0.0 })
                })
                .collect();
            let w = Tensor::from_vec(w, (b, p - 1), dev)?;
            return Ok((next_token_losses(&logits, &t.tokens)? * w)?.sum(1)?);
        }
        // [batch, vocab]: each prompt's last position.
        let last: Vec<u32> = (0..b).map(|r| (r * p + t.lengths[r] - 1) as u32).collect();
        let last = logits
            .reshape((b * p, v))?
            .index_select(&Tensor::new(last, dev)?, 0)?;
        let ids = |ids: &[u32]| Tensor::new(ids, dev)?.unsqueeze(1);
        let answer = ids(&t.answers)?;
        Ok(match self {
            Metric::LogitDiff => {
                let wrong = ids(&t.wrong)?;
                (last.gather(&answer, 1)? - last.gather(&wrong, 1)?)?.squeeze(1)?
            }
            _ => candle_nn::ops::softmax(&last, D::Minus1)?
                .gather(&answer, 1)?
                .squeeze(1)?,
        })
    }

    /// The metric of each row of `resid` [rows, s, d_model], the final residual stream of
    /// positions `offset..offset + s` (row r is prompt r % batch). Only what the metric reads
    /// is unembedded. `base` supplies what the rows share with the unintervened run: the
    /// metric of a prompt whose last position lies before `offset`, and the losses there.
    fn of_resid(
        self,
        model: &HookedTransformer,
        resid: &Tensor,
        offset: usize,
        t: &Target,
        base: &Base,
    ) -> Result<Vec<f32>> {
        let prompt = |r: usize| r % t.len();
        if self == Metric::Loss {
            let after = position_losses(model, resid, offset, t)?;
            // Predictions before `offset` are the base run's (only the real ones: a padded
            // prompt may end before `offset`).
            return Ok(after
                .iter()
                .enumerate()
                .map(|(r, after)| {
                    let len = t.lengths[prompt(r)];
                    let before = &base.losses[prompt(r)][..offset.min(len - 1)];
                    let sum: f64 = before.iter().chain(after).map(|&l| l as f64).sum();
                    (sum / (len - 1) as f64) as f32
                })
                .collect());
        }
        let (rows, s, d) = resid.dims3()?;
        let flat = resid.reshape((rows * s, d))?;
        // Last-position metrics: one position per row, or the base value if it is not here.
        let mut out = vec![f32::NAN; rows];
        let mut idx = vec![];
        let mut which = vec![];
        for (r, v) in out.iter_mut().enumerate() {
            let last = t.lengths[prompt(r)] - 1;
            match last >= offset {
                true => {
                    idx.push((r * s + last - offset) as u32);
                    which.push(r);
                }
                false => *v = base.value[prompt(r)],
            }
        }
        if idx.is_empty() {
            return Ok(out);
        }
        let x = flat.index_select(&Tensor::new(idx, flat.device())?, 0)?; // [n, d]
        let values: Vec<f32> = match self {
            Metric::LogitDiff => {
                let x = model.ln_final.forward(
                    &x.unsqueeze(0)?,
                    HookPoint::LnFinalScale,
                    HookPoint::LnFinalNormalized,
                    &mut Hooks::none(),
                )?;
                let x = x.squeeze(0)?.to_dtype(DType::F32)?;
                // logit(a) - logit(w), each x · W_U[:, i] + b_U[i] (soft-capped where the model
                // caps its logits).
                let pick = |ids: Vec<u32>| -> Result<Tensor> {
                    let w = model.unembed_rows(&ids)?;
                    let ids = Tensor::new(ids, x.device())?;
                    let b = match &model.b_u {
                        Some(b) => b.to_dtype(DType::F32)?.index_select(&ids, 0)?,
                        None => Tensor::zeros(ids.dim(0)?, DType::F32, x.device())?,
                    };
                    model.soft_cap_logits((x.mul(&w)?.sum(1)? + b)?)
                };
                let a = pick(which.iter().map(|&r| t.answers[prompt(r)]).collect())?;
                let w = pick(which.iter().map(|&r| t.wrong[prompt(r)]).collect())?;
                (a - w)?.to_vec1::<f32>()?
            }
            _ => {
                let probs =
                    candle_nn::ops::softmax_last_dim(&model.unembed(&x, &mut Hooks::none())?)?;
                let ids: Vec<u32> = which.iter().map(|&r| t.answers[prompt(r)]).collect();
                let ids = Tensor::new(ids, x.device())?.unsqueeze(1)?;
                probs.gather(&ids, 1)?.squeeze(1)?.to_vec1::<f32>()?
            }
        };
        for (r, v) in which.into_iter().zip(values) {
            out[r] = v;
        }
        Ok(out)
    }
}

/// The next-token loss of each row of `resid` [rows, s, d_model] (the final residual stream
/// of positions `offset..offset + s`; row r is prompt r % batch) at its real positions from
/// `offset` on: row r's losses at positions offset..len - 1.
fn position_losses(
    model: &HookedTransformer,
    resid: &Tensor,
    offset: usize,
    t: &Target,
) -> Result<Vec<Vec<f32>>> {
    let (rows, s, d) = resid.dims3()?;
    let flat = resid.reshape((rows * s, d))?;
    // Position i predicts token i + 1.
    let mut picks = vec![]; // (row, flat index into `flat`, target token)
    for r in 0..rows {
        let b = r % t.len();
        for i in offset..t.lengths[b] - 1 {
            picks.push((r, (r * s + i - offset) as u32, t.rows[b][i + 1]));
        }
    }
    let mut out = vec![vec![]; rows];
    // Chunks keep the logits small: 128 positions of a 50k vocabulary are 26 MB, under the
    // allocator's mmap threshold, so the buffers are reused rather than mapped anew.
    for chunk in picks.chunks(128) {
        let idx: Vec<u32> = chunk.iter().map(|p| p.1).collect();
        let x = flat.index_select(&Tensor::new(idx, flat.device())?, 0)?;
        let logits = model.unembed(&x, &mut Hooks::none())?;
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let next: Vec<u32> = chunk.iter().map(|p| p.2).collect();
        let next = Tensor::new(next, flat.device())?.unsqueeze(1)?;
        let l = lp.gather(&next, 1)?.squeeze(1)?.to_vec1::<f32>()?;
        for (p, l) in chunk.iter().zip(l) {
            out[p.0].push(-l);
        }
    }
    Ok(out)
}

/// The prompts a sweep intervenes on: token ids [batch, pos] (right-padded), each prompt's
/// length, and the answer and wrong-answer ids the last-position metrics read.
#[derive(Debug, Clone)]
pub struct Target {
    pub tokens: Tensor,
    pub rows: Vec<Vec<u32>>,
    pub lengths: Vec<usize>,
    pub answers: Vec<u32>,
    pub wrong: Vec<u32>,
}

impl Target {
    /// The clean prompts of `batch` (ablation), or the corrupted ones (patching).
    pub fn new(batch: &PairBatch, corrupted: bool) -> Result<Self> {
        let tokens = match corrupted {
            true => batch.corrupted.clone(),
            false => batch.clean.clone(),
        };
        Ok(Self {
            rows: tokens.to_dtype(DType::U32)?.to_vec2::<u32>()?,
            tokens,
            lengths: batch.lengths.clone(),
            answers: batch.answers.clone(),
            wrong: batch.wrong.clone(),
        })
    }

    /// The prompts `rows`.
    pub fn slice(&self, rows: Range<usize>) -> Result<Self> {
        Ok(Self {
            tokens: self.tokens.narrow(0, rows.start, rows.len())?,
            rows: self.rows[rows.clone()].to_vec(),
            lengths: self.lengths[rows.clone()].to_vec(),
            answers: self.answers[rows.clone()].to_vec(),
            wrong: self.wrong[rows].to_vec(),
        })
    }

    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }
}

/// What a job puts at its site.
#[derive(Debug, Clone)]
pub enum Value {
    /// An intervention, the same whatever the chunk of prompts; a `Patch` or `Mean` source
    /// with one row per prompt is cut to each chunk's rows.
    Set(Intervention),
    /// Each prompt's own activation at the site in the run of the sweep's source prompts `k`
    /// (row i for prompt i): the clean prompts in activation patching, the drawn prompts in
    /// resample ablation. Computed one chunk of prompts at a time, so memory does not grow
    /// with the dataset.
    Source(usize),
}

/// One intervention of a sweep.
#[derive(Debug, Clone)]
pub struct Job {
    pub site: Site,
    pub value: Value,
}

impl Job {
    /// `intervention` at `site`.
    pub fn new(site: Site, intervention: Intervention) -> Self {
        Self {
            site,
            value: Value::Set(intervention),
        }
    }

    /// Patch `site` from the run of the sweep's source prompts `source` (see [`Value::Source`]).
    pub fn from_source(site: Site, source: usize) -> Self {
        Self {
            site,
            value: Value::Source(source),
        }
    }

    /// The layer the job's pass starts at: the site's.
    fn layer(&self) -> Result<usize> {
        self.site.point.layer().ok_or_else(|| Error::BadSite {
            site: self.site.to_string(),
            reason: "sweeps intervene inside blocks (blocks.L.*), not on the embeddings".into(),
        })
    }

    /// The first position the job can change: its site's, or 0.
    fn first_pos(&self) -> usize {
        self.site.pos.unwrap_or(0)
    }
}

/// What the unintervened run gives the batches of one chunk of prompts: the prompts, the
/// residual stream entering each layer, the keys and values of every layer, the metric (and
/// per-position losses) of each prompt, and the source runs' activations at the jobs' sites
/// (computed when a batch first needs them).
struct Base {
    target: Target,
    resid_pre: Vec<Tensor>,
    kv: Vec<LayerKv>,
    value: Vec<f32>,
    losses: Vec<Vec<f32>>,
    sources: Option<Vec<ActivationCache>>,
}

/// Jobs that run as one pass over one chunk of prompts: all at `layer`, recomputing
/// positions `offset..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub chunk: usize,
    pub layer: usize,
    pub offset: usize,
    pub jobs: Vec<usize>,
}

/// What one batch gave: each job (index into [`Sweep::jobs`]) with the metric averaged over
/// the batch's chunk of prompts, and the batch's interventions with their fire counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResult {
    pub values: Vec<(usize, f32)>,
    pub fired: Vec<Fired>,
}

/// A planned sweep: the prompts split into chunks, jobs grouped into batches over each chunk,
/// and the unintervened run they start from.
pub struct Sweep<'m> {
    model: &'m HookedTransformer,
    splices: Vec<Splice<'m>>,
    target: Target,
    sources: Vec<Tensor>,
    metric: Metric,
    jobs: Vec<Job>,
    chunks: Vec<Range<usize>>,
    batches: Vec<Batch>,
    /// Each prompt's unintervened metric.
    values: Vec<f32>,
    /// The base run of the chunk the batches are on.
    base: RefCell<Option<(usize, Base)>>,
}

impl<'m> Sweep<'m> {
    /// Plans the sweep: the prompts in chunks of at most `tokens_per_pass` tokens, and over
    /// each chunk the jobs sorted by (layer, position), a batch holding jobs of one layer that
    /// together fit in `tokens_per_pass` token positions (at least one job), whose positions
    /// lie close enough that recomputing from the first costs little. Runs the prompts once,
    /// chunk by chunk, for the unintervened metric. The plan depends only on the jobs and
    /// these numbers, so a resumed or sharded sweep runs the same batches, and memory is
    /// bounded by `tokens_per_pass`, not by the number of prompts.
    pub fn new(
        model: &'m HookedTransformer,
        target: Target,
        metric: Metric,
        jobs: Vec<Job>,
        tokens_per_pass: usize,
    ) -> Result<Self> {
        Self::spliced(model, &[], target, vec![], metric, jobs, tokens_per_pass)
    }

    /// [`Self::new`] with `sources`, token ids [batch, pos] of the target's shape, whose runs
    /// supply the activations of [`Value::Source`] jobs.
    pub fn with_sources(
        model: &'m HookedTransformer,
        target: Target,
        sources: Vec<Tensor>,
        metric: Metric,
        jobs: Vec<Job>,
        tokens_per_pass: usize,
    ) -> Result<Self> {
        Self::spliced(model, &[], target, sources, metric, jobs, tokens_per_pass)
    }

    /// [`Self::with_sources`] on the model with `splices` spliced in (every pass, the
    /// unintervened and the source runs included): jobs may then sit at the SAEs' hook points
    /// (feature ablation, steering, patching).
    pub fn spliced(
        model: &'m HookedTransformer,
        splices: &[Splice<'m>],
        target: Target,
        sources: Vec<Tensor>,
        metric: Metric,
        jobs: Vec<Job>,
        tokens_per_pass: usize,
    ) -> Result<Self> {
        let p = target.tokens.dim(1)?;
        if metric == Metric::Loss && target.lengths.iter().any(|&l| l < 2) {
            return Err(Error::Invalid(
                "the loss metric needs prompts of at least 2 tokens (one prediction)".into(),
            ));
        }
        for s in &sources {
            if s.dims() != target.tokens.dims() {
                return Err(Error::ShapeMismatch {
                    what: "source prompts".into(),
                    expected: target.tokens.dims().to_vec(),
                    got: s.dims().to_vec(),
                });
            }
        }
        for job in &jobs {
            model.check_hook(&job.site.point)?;
            // A pass from layer L starts from the cached residual stream: a transcoder that
            // reads before L and writes from L on would miss its input.
            let l = job.layer()?;
            if let Some(s) = splices
                .iter()
                .find(|s| s.sae.hook.layer().unwrap_or(0) < l && s.sae.writes().layer() >= Some(l))
            {
                return Err(Error::BadSite {
                    site: job.site.to_string(),
                    reason: format!(
                        "a sweep cannot start inside the transcoder spliced from {} to {}",
                        s.sae.hook,
                        s.sae.writes()
                    ),
                });
            }
            if job.first_pos() >= p {
                return Err(Error::PositionOutOfRange {
                    pos: job.first_pos(),
                    len: p,
                });
            }
            match &job.value {
                Value::Source(k) if *k >= sources.len() => {
                    return Err(Error::Invalid(format!(
                        "job at {} patches from source prompts {k}; the sweep has {}",
                        job.site,
                        sources.len()
                    )))
                }
                Value::Set(Intervention::Patch(x) | Intervention::Mean(x))
                    if x.dim(0)? > 1 && x.dim(0)? != target.len() =>
                {
                    return Err(Error::Invalid(format!(
                        "job at {} has a source of {} rows for {} prompts: give one row, or one per prompt",
                        job.site,
                        x.dim(0)?,
                        target.len()
                    )))
                }
                _ => {}
            }
        }
        let chunks = prompt_chunks(target.len(), p, tokens_per_pass)?;
        let rows = chunks.first().map_or(0, Range::len);
        let mut order: Vec<(usize, usize, usize)> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| Ok((j.layer()?, j.first_pos(), i)))
            .collect::<Result<_>>()?;
        order.sort();
        // One chunk's batches; every chunk runs the same.
        let mut plan: Vec<Batch> = vec![];
        for (layer, pos, i) in order {
            match plan.last_mut() {
                // A pass holds its rows' whole prompts (the cached prefix too). A job joins a
                // batch at its layer that starts at most 1/8 of the batch's positions before
                // it: batching must not undo the causal suffix.
                Some(b)
                    if b.layer == layer
                        && (b.jobs.len() + 1) * rows * p <= tokens_per_pass
                        && (pos - b.offset) * 8 <= p - b.offset =>
                {
                    b.jobs.push(i)
                }
                _ => plan.push(Batch {
                    chunk: 0,
                    layer,
                    offset: pos,
                    jobs: vec![i],
                }),
            }
        }
        let batches = (0..chunks.len())
            .flat_map(|chunk| plan.iter().map(move |b| Batch { chunk, ..b.clone() }))
            .collect();
        let mut sweep = Self {
            model,
            splices: splices.to_vec(),
            target,
            sources,
            metric,
            jobs,
            chunks,
            batches,
            values: vec![],
            base: RefCell::new(None),
        };
        for c in 0..sweep.chunks.len() {
            let base = sweep.base_run(c)?;
            sweep.values.extend(&base.value);
            // The first batches are the first chunk's.
            if c == 0 {
                *sweep.base.get_mut() = Some((0, base));
            }
        }
        Ok(sweep)
    }

    /// The unintervened run of chunk `c`.
    fn base_run(&self, c: usize) -> Result<Base> {
        let model = self.model;
        let n = model.cfg.n_layers;
        let target = self.target.slice(self.chunks[c].clone())?;
        let points = (0..n)
            .map(|l| HookPoint::block(l, BlockHook::ResidPre))
            .collect();
        let mut hooks = Hooks::spliced(&self.splices)?.with_cache(NameFilter::Points(points));
        model.check_hooks(&hooks, 0, n, false)?;
        let mut kv = vec![LayerKv::default(); n];
        let resid = model.resid_with_kv(&target.tokens, &mut kv, &mut hooks)?;
        let cache = hooks.take_cache();
        let resid_pre = (0..n)
            .map(|l| Ok(cache.block(l, BlockHook::ResidPre)?.clone()))
            .collect::<Result<_>>()?;
        let mut base = Base {
            target,
            resid_pre,
            kv,
            value: vec![],
            losses: vec![],
            sources: None,
        };
        base.losses = match self.metric {
            Metric::Loss => position_losses(model, &resid, 0, &base.target)?,
            _ => vec![],
        };
        // At offset 0 the metric reads nothing of the base but its losses.
        base.value = self
            .metric
            .of_resid(model, &resid, 0, &base.target, &base)?;
        Ok(base)
    }

    /// The runs of the source prompts over chunk `c`, caching the sites their jobs patch.
    fn source_runs(&self, c: usize) -> Result<Vec<ActivationCache>> {
        let rows = &self.chunks[c];
        (0..self.sources.len())
            .map(|k| {
                let mut points: Vec<HookPoint> = (self.jobs.iter())
                    .filter(|j| matches!(j.value, Value::Source(s) if s == k))
                    .map(|j| j.site.point)
                    .collect();
                points.sort();
                points.dedup();
                let tokens = self.sources[k].narrow(0, rows.start, rows.len())?;
                let hooks = Hooks::spliced(&self.splices)?.with_cache(NameFilter::Points(points));
                Ok(self.model.run(&tokens, hooks)?.cache)
            })
            .collect()
    }

    /// What the sweep measures.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The model the sweep runs.
    pub fn model(&self) -> &'m HookedTransformer {
        self.model
    }

    /// The metric of the unintervened run, averaged over the prompts.
    pub fn baseline(&self) -> f32 {
        mean(&self.values)
    }

    /// (layers, positions) of the model and prompts.
    pub fn shape(&self) -> (usize, usize) {
        (self.model.cfg.n_layers, self.target.rows[0].len())
    }

    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// The batches, chunk by chunk: the same jobs in the same batches over each chunk.
    pub fn batches(&self) -> &[Batch] {
        &self.batches
    }

    /// The prompts of each chunk, in order.
    pub fn chunks(&self) -> &[Range<usize>] {
        &self.chunks
    }

    /// A job's value over all the prompts from its value on each chunk (`parts`, in chunk
    /// order): their mean weighted by the chunks' sizes, or `None` while a chunk is missing.
    /// Summed in chunk order, so a resumed or merged run gives the same bits.
    pub fn combine(&self, parts: &[Option<f32>]) -> Option<f32> {
        let mut sum = 0f64;
        for (rows, v) in self.chunks.iter().zip(parts) {
            sum += (*v)? as f64 * rows.len() as f64;
        }
        (parts.len() == self.chunks.len()).then_some((sum / self.target.len() as f64) as f32)
    }

    /// Runs batch `i`.
    pub fn compute_batch(&self, i: usize) -> Result<BatchResult> {
        let batch = &self.batches[i];
        let mut slot = self.base.borrow_mut();
        let base = match slot.take() {
            Some((c, base)) if c == batch.chunk => base,
            _ => self.base_run(batch.chunk)?,
        };
        let base = &mut slot.insert((batch.chunk, base)).1;
        let needs_sources =
            (batch.jobs.iter()).any(|&j| matches!(self.jobs[j].value, Value::Source(_)));
        if needs_sources && base.sources.is_none() {
            base.sources = Some(self.source_runs(batch.chunk)?);
        }
        let rows = &self.chunks[batch.chunk];
        let (b, u) = (rows.len(), batch.jobs.len());
        let (l, off) = (batch.layer, batch.offset);
        let p = base.target.tokens.dim(1)?;
        let tile = |t: &Tensor| -> Result<Tensor> {
            let mut reps = vec![1; t.rank()];
            reps[0] = u;
            Ok(t.repeat(reps)?)
        };
        // [u * b, p - off, d_model]: every job's rows start from the same residual stream.
        let input = tile(&base.resid_pre[l].narrow(1, off, p - off)?)?;
        let past = base
            .kv
            .iter()
            .enumerate()
            .map(|(layer, kv)| -> Result<LayerKv> {
                if layer < l || off == 0 {
                    return Ok(LayerKv::default());
                }
                // [b, H_kv, p, d_head] -> the first `off` positions, tiled to u * b rows.
                let prefix = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
                    t.as_ref().map(|t| tile(&t.narrow(2, 0, off)?)).transpose()
                };
                Ok(LayerKv {
                    k: prefix(&kv.k)?,
                    v: prefix(&kv.v)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // The SAEs from layer l on (those before are in the cached residual stream).
        let later: Vec<Splice> = (self.splices.iter())
            .filter(|s| s.sae.hook.layer().unwrap_or(0) >= l)
            .copied()
            .collect();
        let mut hooks = Hooks::spliced(&later)?;
        // A per-prompt source, cut to this chunk's rows and tiled to every job's.
        let per_prompt = |x: &Tensor| -> Result<Tensor> {
            match x.dim(0)? > 1 {
                true => tile(&x.narrow(0, rows.start, b)?),
                false => Ok(x.clone()),
            }
        };
        for (slot, &j) in batch.jobs.iter().enumerate() {
            let job = &self.jobs[j];
            let iv = match &job.value {
                Value::Source(k) => {
                    let runs = base.sources.as_ref().ok_or_else(|| {
                        Error::Invalid("the source runs of this chunk were not made".into())
                    })?;
                    Intervention::Patch(tile(runs[*k].get(job.site.point)?)?)
                }
                Value::Set(Intervention::Patch(x)) => Intervention::Patch(per_prompt(x)?),
                Value::Set(Intervention::Mean(x)) => Intervention::Mean(per_prompt(x)?),
                Value::Set(Intervention::Resample { .. }) => {
                    return Err(Error::Invalid(
                        "a sweep resamples from source prompts (Value::Source), so that chunks and batches cannot change the draw".into(),
                    ))
                }
                Value::Set(iv) => iv.clone(),
            };
            let site = job.site.clone().with_rows(slot * b..(slot + 1) * b);
            hooks = hooks.intervene(site, iv);
        }
        let resid = self
            .model
            .forward_suffix(&input, l, off, &past, &mut hooks)?;
        let values = self
            .metric
            .of_resid(self.model, &resid, off, &base.target, base)?;
        let values = batch
            .jobs
            .iter()
            .zip(values.chunks(b))
            .map(|(&j, v)| (j, mean(v)))
            .collect();
        Ok(BatchResult {
            values,
            fired: hooks.fired(),
        })
    }

    /// Every job's value, in job order (no progress, no resume: the library call).
    pub fn compute(&self) -> Result<Vec<f32>> {
        let mut parts = vec![vec![None; self.chunks.len()]; self.jobs.len()];
        for i in 0..self.batches.len() {
            let c = self.batches[i].chunk;
            for (j, v) in self.compute_batch(i)?.values {
                parts[j][c] = Some(v);
            }
        }
        Ok(parts
            .iter()
            .map(|p| self.combine(p).unwrap_or(f32::NAN))
            .collect())
    }
}

/// The same values as [`Sweep::compute`] (of a sweep with `splices`) by the naive loop: one
/// full forward pass per job. The reference the sweep's tests compare against.
pub fn naive(
    model: &HookedTransformer,
    splices: &[Splice],
    target: &Target,
    sources: &[Tensor],
    metric: Metric,
    jobs: &[Job],
) -> Result<Vec<f32>> {
    jobs.iter()
        .map(|job| {
            let iv = match &job.value {
                Value::Set(iv) => iv.clone(),
                Value::Source(k) => {
                    let hooks = Hooks::spliced(splices)?
                        .with_cache(NameFilter::Points(vec![job.site.point]));
                    let source = model.run(&sources[*k], hooks)?.cache;
                    Intervention::Patch(source.get(job.site.point)?.clone())
                }
            };
            let hooks = Hooks::spliced(splices)?.intervene(job.site.clone(), iv);
            let run = model.run(&target.tokens, hooks)?;
            Ok(mean(&metric.of_logits(&run.output, target)?))
        })
        .collect()
}

fn mean(v: &[f32]) -> f32 {
    (v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64) as f32
}
