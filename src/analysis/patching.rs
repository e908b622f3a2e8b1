//! Activation patching (TransformerLens's `get_act_patch_*`): clean activations patched into the
//! corrupted run, one grid cell at a time, and attribution patching, the linear estimate
//! (clean - corrupted) · ∂metric/∂activation from one forward and one backward pass.
//!
//! The cells become [`Job`]s of one [`super::sweep::Sweep`] over the corrupted prompts.

use super::sweep::{Job, Metric, Sweep, Target};
use crate::cache::ActivationCache;
use crate::data::{prompt_chunks, PairBatch};
use crate::error::{Error, Result};
use crate::hook_points::{BlockHook, HookPoint, NameFilter};
use crate::hooks::{Hooks, Splice};
use crate::intervention::{Intervention, Site};
use crate::model::HookedTransformer;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

/// A patching grid, named as TransformerLens's function without `get_act_patch_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grid {
    /// `blocks.L.hook_resid_pre` at one position: layer × position.
    ResidPre,
    /// `blocks.L.hook_attn_out` at one position: layer × position.
    AttnOut,
    /// `blocks.L.hook_mlp_out` at one position: layer × position.
    MlpOut,
    /// Each head's output (`hook_z`) at every position: layer × head.
    AttnHeadOutAllPos,
    /// Each head's output at one position: layer × head × position.
    AttnHeadOutByPos,
    /// Each head's pattern (`hook_pattern`) at every query position: layer × head.
    AttnHeadPatternAllPos,
}

impl Grid {
    pub const ALL: [Grid; 6] = [
        Grid::ResidPre,
        Grid::AttnOut,
        Grid::MlpOut,
        Grid::AttnHeadOutAllPos,
        Grid::AttnHeadOutByPos,
        Grid::AttnHeadPatternAllPos,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Grid::ResidPre => "resid_pre",
            Grid::AttnOut => "attn_out",
            Grid::MlpOut => "mlp_out",
            Grid::AttnHeadOutAllPos => "attn_head_out_all_pos",
            Grid::AttnHeadOutByPos => "attn_head_out_by_pos",
            Grid::AttnHeadPatternAllPos => "attn_head_pattern_all_pos",
        }
    }

    /// The block hook it patches.
    pub fn hook(self) -> BlockHook {
        match self {
            Grid::ResidPre => BlockHook::ResidPre,
            Grid::AttnOut => BlockHook::AttnOut,
            Grid::MlpOut => BlockHook::MlpOut,
            Grid::AttnHeadOutAllPos | Grid::AttnHeadOutByPos => BlockHook::Z,
            Grid::AttnHeadPatternAllPos => BlockHook::Pattern,
        }
    }

    fn per_head(self) -> bool {
        matches!(
            self,
            Grid::AttnHeadOutAllPos | Grid::AttnHeadOutByPos | Grid::AttnHeadPatternAllPos
        )
    }

    fn per_pos(self) -> bool {
        matches!(
            self,
            Grid::ResidPre | Grid::AttnOut | Grid::MlpOut | Grid::AttnHeadOutByPos
        )
    }

    /// Every cell of the grid for `model` and prompts of `n_pos` tokens, layer-major.
    pub fn cells(self, model: &HookedTransformer, n_pos: usize) -> Result<Vec<Cell>> {
        if self == Grid::MlpOut && model.cfg.attn_only {
            return Err(Error::Invalid(
                "the mlp_out grid needs MLPs; this model is attention-only".into(),
            ));
        }
        let heads: Vec<Option<usize>> = match self.per_head() {
            true => (0..model.cfg.n_heads).map(Some).collect(),
            false => vec![None],
        };
        let positions: Vec<Option<usize>> = match self.per_pos() {
            true => (0..n_pos).map(Some).collect(),
            false => vec![None],
        };
        let mut cells = vec![];
        for layer in 0..model.cfg.n_layers {
            for &head in &heads {
                for &pos in &positions {
                    cells.push(Cell {
                        grid: self,
                        layer,
                        head,
                        pos,
                    });
                }
            }
        }
        Ok(cells)
    }
}

impl Grid {
    /// The grid's axes, as TransformerLens's `get_act_patch_<grid>` lays out its result.
    pub fn axes(self) -> &'static [&'static str] {
        match (self.per_head(), self.per_pos()) {
            (false, _) => &["layer", "pos"],
            (true, false) => &["layer", "head"],
            (true, true) => &["layer", "head", "pos"],
        }
    }

    /// The grid's shape for `model` and prompts of `n_pos` tokens (see [`Grid::axes`]).
    pub fn shape(self, model: &HookedTransformer, n_pos: usize) -> Vec<usize> {
        let (l, h) = (model.cfg.n_layers, model.cfg.n_heads);
        match (self.per_head(), self.per_pos()) {
            (false, _) => vec![l, n_pos],
            (true, false) => vec![l, h],
            (true, true) => vec![l, h, n_pos],
        }
    }
}

/// A patching metric's scale: 0 at the corrupted run, 1 at the clean run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalised {
    pub clean: f32,
    pub corrupted: f32,
}

impl Normalised {
    /// The scale from the clean and corrupted runs' metric; an error when they agree (there
    /// is nothing for patching to restore).
    pub fn new(clean: f32, corrupted: f32, metric: Metric) -> Result<Self> {
        if (clean - corrupted).abs() < 1e-6 {
            return Err(Error::Invalid(format!(
                "the clean and corrupted prompts give the same {} ({clean:.6}): there is nothing for patching to restore; use pairs whose answers differ",
                metric.name()
            )));
        }
        Ok(Self { clean, corrupted })
    }

    /// `raw` on the 0 (corrupted) .. 1 (clean) scale.
    pub fn of(&self, raw: f32) -> f32 {
        (raw - self.corrupted) / (self.clean - self.corrupted)
    }
}

/// Activation patching of `grids` from the clean into the corrupted prompts of a batch: the
/// cells, the sweep that patches each, and the scale that normalises the metric.
pub struct Patching<'m> {
    pub cells: Vec<Cell>,
    /// One job per cell, in `cells` order, patching from the clean prompts (source 0).
    pub sweep: Sweep<'m>,
    pub scale: Normalised,
    /// The clean prompts' token ids [batch, pos].
    pub clean: Tensor,
    pub target: Target,
    pub metric: Metric,
    tokens_per_pass: usize,
    n_pos: usize,
}

impl<'m> Patching<'m> {
    /// Plans the patching of every cell of `grids` (the metric measured on both runs, in
    /// chunks of at most `tokens_per_pass` tokens); [`Sweep::compute`] or a resumable runner
    /// computes it.
    pub fn new(
        model: &'m HookedTransformer,
        batch: &PairBatch,
        grids: &[Grid],
        metric: Metric,
        tokens_per_pass: usize,
    ) -> Result<Self> {
        let clean_target = Target::new(batch, false)?;
        let clean_value = Sweep::new(model, clean_target, metric, vec![], tokens_per_pass)?;
        let target = Target::new(batch, true)?;
        let n_pos = batch.clean.dim(1)?;
        let cells: Vec<Cell> = grids
            .iter()
            .map(|g| g.cells(model, n_pos))
            .collect::<Result<Vec<_>>>()?
            .concat();
        let jobs = cells
            .iter()
            .map(|c| Job::from_source(c.site(), 0))
            .collect();
        let sweep = Sweep::with_sources(
            model,
            target.clone(),
            vec![batch.clean.clone()],
            metric,
            jobs,
            tokens_per_pass,
        )?;
        let scale = Normalised::new(clean_value.baseline(), sweep.baseline(), metric)?;
        Ok(Self {
            cells,
            sweep,
            scale,
            clean: batch.clean.clone(),
            target,
            metric,
            tokens_per_pass,
            n_pos,
        })
    }

    /// The rows of the sweep's `values` (one per cell; `None` for cells another shard ran).
    pub fn rows(&self, values: &[Option<f32>]) -> Vec<PatchRow> {
        self.cells
            .iter()
            .zip(values)
            .filter_map(|(cell, v)| {
                v.map(|raw| PatchRow {
                    cell: *cell,
                    method: "activation",
                    raw,
                    value: self.scale.of(raw),
                })
            })
            .collect()
    }

    /// Attribution patching of every cell (one forward and one backward pass), as rows.
    pub fn attribution_rows(&self, model: &HookedTransformer) -> Result<Vec<PatchRow>> {
        let est = attribution(
            model,
            &self.target,
            self.metric,
            &self.clean,
            &self.cells,
            self.tokens_per_pass,
        )?;
        let corrupted = self.scale.corrupted;
        Ok(self
            .cells
            .iter()
            .zip(est)
            .map(|(cell, d)| PatchRow {
                cell: *cell,
                method: "attribution",
                raw: corrupted + d,
                value: self.scale.of(corrupted + d),
            })
            .collect())
    }

    /// The normalised values of `grid` among `rows` (of `method`), laid out as
    /// [`Grid::shape`]; cells without a row are NaN.
    pub fn grid(&self, grid: Grid, rows: &[PatchRow], method: &str) -> Result<Tensor> {
        let shape = grid.shape(self.sweep.model(), self.n_pos);
        let mut values = vec![f32::NAN; shape.iter().product()];
        let n_heads = self.sweep.model().cfg.n_heads;
        for r in rows
            .iter()
            .filter(|r| r.cell.grid == grid && r.method == method)
        {
            let c = r.cell;
            let (h, p) = (c.head.unwrap_or(0), c.pos.unwrap_or(0));
            let i = match grid.axes() {
                [_, "pos"] => c.layer * self.n_pos + p,
                [_, "head"] => c.layer * n_heads + h,
                _ => (c.layer * n_heads + h) * self.n_pos + p,
            };
            values[i] = r.value;
        }
        Ok(Tensor::from_vec(values, shape, &candle_core::Device::Cpu)?)
    }
}

/// TransformerLens's `get_act_patch_<grid>` in one call: the metric of the corrupted prompts
/// with each cell patched from the clean ones, normalised (0 corrupted, 1 clean), laid out as
/// [`Grid::shape`] ([layer, pos], [layer, head] or [layer, head, pos]).
pub fn act_patch(
    model: &HookedTransformer,
    grid: Grid,
    batch: &PairBatch,
    metric: Metric,
    tokens_per_pass: usize,
) -> Result<Tensor> {
    let p = Patching::new(model, batch, &[grid], metric, tokens_per_pass)?;
    let values: Vec<Option<f32>> = p.sweep.compute()?.into_iter().map(Some).collect();
    p.grid(grid, &p.rows(&values), "activation")
}

/// One cell of a patching grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cell {
    pub grid: Grid,
    pub layer: usize,
    pub head: Option<usize>,
    pub pos: Option<usize>,
}

impl Cell {
    pub fn site(&self) -> Site {
        let mut site = Site::at(HookPoint::block(self.layer, self.grid.hook()));
        site.head = self.head;
        site.pos = self.pos;
        site
    }
}

/// The hook points the clean cache needs for `grids`.
pub fn clean_points(model: &HookedTransformer, grids: &[Grid]) -> Vec<HookPoint> {
    let mut v: Vec<HookPoint> = grids
        .iter()
        .flat_map(|g| (0..model.cfg.n_layers).map(|l| HookPoint::block(l, g.hook())))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Attribution patching of `cells`: for each, the sum over the cell's entries of
/// (clean − corrupted) · ∂metric/∂activation at the corrupted run (`target`), an estimate of
/// the change of the metric (averaged over the prompts) that patching the cell causes. One
/// forward and one backward pass for all cells over each chunk of the clean prompts `clean`
/// [batch, pos] and the target. A backward pass keeps every activation of its chunk and the
/// logits over the whole vocabulary, so a chunk holds 1/16 of `tokens_per_pass` tokens (at
/// least one prompt).
pub fn attribution(
    model: &HookedTransformer,
    target: &Target,
    metric: Metric,
    clean: &Tensor,
    cells: &[Cell],
    tokens_per_pass: usize,
) -> Result<Vec<f32>> {
    let sites: Vec<Site> = cells.iter().map(Cell::site).collect();
    let mut points: Vec<HookPoint> = sites.iter().map(|s| s.point).collect();
    points.sort();
    points.dedup();
    let n = target.len();
    let mut total = vec![0f64; sites.len()];
    let p = clean.dim(1)?;
    for rows in prompt_chunks(n, p, (tokens_per_pass / 16).max(p))? {
        let clean = clean.narrow(0, rows.start, rows.len())?;
        let (_, cache) = model.run_with_cache(&clean, NameFilter::Points(points.clone()))?;
        let t = target.slice(rows.clone())?;
        let part = attribution_sites(model, &[], &t, metric, &cache, &sites)?;
        for (sum, x) in total.iter_mut().zip(part) {
            *sum += x as f64 * rows.len() as f64 / n as f64;
        }
    }
    Ok(total.into_iter().map(|x| x as f32).collect())
}

/// [`attribution`] of any sites (a head, position or neuron of a hook point, or all of it)
/// with `splices` spliced in: at `hook_sae_acts_post` the sites are SAE features. `clean` is
/// the clean run's cache with the same splices.
pub fn attribution_sites(
    model: &HookedTransformer,
    splices: &[Splice],
    target: &Target,
    metric: Metric,
    clean: &ActivationCache,
    sites: &[Site],
) -> Result<Vec<f32>> {
    let mut points: Vec<HookPoint> = sites.iter().map(|s| s.point).collect();
    points.sort();
    points.dedup();
    // One pass at the corrupted run: a zero variable added at each point (its gradient is the
    // activation's, with every path through the model intact), the activations recorded. The
    // clean cache has the corrupted run's shapes (the same padded token positions).
    let mut hooks = Hooks::spliced(splices)?.with_cache(NameFilter::Points(points.clone()));
    let mut deltas = vec![];
    for &point in &points {
        let act = clean.get(point)?;
        let delta = Var::zeros(act.dims(), act.dtype(), act.device())?;
        hooks = hooks.intervene(point, Intervention::Add(delta.as_tensor().clone()));
        deltas.push((point, delta));
    }
    let run = model.run(&target.tokens, hooks)?;
    let (logits, corrupted) = (run.output, run.cache);
    let value = metric.per_prompt(&logits, target)?.mean_all()?;
    let grads = value.backward()?;
    let mut products = std::collections::HashMap::new();
    for (point, delta) in &deltas {
        let grad = grads.get(delta.as_tensor()).ok_or_else(|| {
            Error::Invalid(format!(
                "the metric does not depend on {point}: no gradient"
            ))
        })?;
        let diff = (clean.get(*point)?.to_dtype(DType::F32)?
            - corrupted.get(*point)?.detach().to_dtype(DType::F32)?)?;
        products.insert(*point, (diff * grad.to_dtype(DType::F32)?)?);
    }
    sites
        .iter()
        .map(|site| {
            let mut x = products[&site.point].clone();
            let axes = site.point.axes();
            // Narrow to the site's head, position and neuron (axes from the back, so the
            // earlier indices stay valid), then sum everything, the batch included: the
            // metric is a batch mean already.
            let mut picks: Vec<(usize, usize)> = [
                (axes.head, site.head),
                (axes.pos, site.pos),
                (axes.neuron, site.neuron),
            ]
            .into_iter()
            .filter_map(|(a, i)| Some((a?, i?)))
            .collect();
            picks.sort_by_key(|p| std::cmp::Reverse(p.0));
            for (axis, i) in picks {
                x = x.narrow(axis, i, 1)?;
            }
            Ok(x.sum_all()?.to_scalar::<f32>()?)
        })
        .collect()
}

/// One value of a patching grid: the cell, by which method, the metric (raw) and its
/// normalised form.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchRow {
    pub cell: Cell,
    /// `activation` (the patched run) or `attribution` (the linear estimate).
    pub method: &'static str,
    pub raw: f32,
    pub value: f32,
}
