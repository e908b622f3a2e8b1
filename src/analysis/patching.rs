//! Activation patching (TransformerLens's `get_act_patch_*`): clean activations patched into the
//! corrupted run, one grid cell at a time, and attribution patching, the linear estimate
//! (clean - corrupted) · ∂metric/∂activation from one forward and one backward pass.
//!
//! The cells become [`Job`]s of one [`super::sweep::Sweep`] over the corrupted prompts.

use super::sweep::{Job, Metric, Target};
use crate::cache::ActivationCache;
use crate::error::{Error, Result};
use crate::hooks::{BlockHook, HookPoint, Hooks, NameFilter};
use crate::intervention::{Intervention, Site};
use crate::model::HookedTransformer;
use candle_core::{DType, Var};
use serde::{Deserialize, Serialize};

/// A patching grid, named as TransformerLens's function without `get_act_patch_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
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

    /// The job that patches the clean run's activation (from `clean`) into this cell.
    pub fn job(&self, clean: &ActivationCache) -> Result<Job> {
        let site = self.site();
        Ok(Job {
            intervention: Intervention::Patch(clean.get(site.point)?.clone()),
            site,
        })
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
/// forward and one backward pass for all cells.
pub fn attribution(
    model: &HookedTransformer,
    target: &Target,
    metric: Metric,
    clean: &ActivationCache,
    cells: &[Cell],
) -> Result<Vec<f32>> {
    let mut points: Vec<HookPoint> = cells.iter().map(|c| c.site().point).collect();
    points.sort();
    points.dedup();
    // One pass at the corrupted run: a zero variable added at each point (its gradient is the
    // activation's, with every path through the model intact), the activations recorded. The
    // clean cache has the corrupted run's shapes (the same padded token positions).
    let mut hooks = Hooks::none().with_cache(NameFilter::Points(points.clone()));
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
    cells
        .iter()
        .map(|cell| {
            let site = cell.site();
            let mut x = products[&site.point].clone();
            let axes = site.point.axes();
            // Narrow to the cell's head and position (axes from the back, so the earlier
            // indices stay valid), then sum everything, the batch included: the metric is a
            // batch mean already.
            let mut picks: Vec<(usize, usize)> = vec![];
            if let (Some(h), Some(a)) = (site.head, axes.head) {
                picks.push((a, h));
            }
            if let (Some(p), Some(a)) = (site.pos, axes.pos) {
                picks.push((a, p));
            }
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

/// The columns of the patching table and what each means.
pub const PATCH_COLUMNS: &[(&str, &str)] = &[
    ("grid", "resid_pre | attn_out | mlp_out | attn_head_out_all_pos | attn_head_out_by_pos | attn_head_pattern_all_pos (TransformerLens's get_act_patch_<grid>)"),
    ("layer", "the patched layer"),
    ("position", "the patched token position (null when every position is patched)"),
    ("head", "the patched head (per-head grids only)"),
    ("value", "the metric normalised: (raw - corrupted) / (clean - corrupted), 0 = the corrupted run, 1 = the clean run"),
    ("raw", "the metric (mean over the pairs) of the corrupted run with this cell patched from the clean run; for attribution, corrupted + the linear estimate of the change"),
    ("method", "activation (a patched forward pass) | attribution ((clean - corrupted) · gradient at the corrupted run)"),
];

/// A tidy table of patching results; see [`PATCH_COLUMNS`].
pub fn patch_frame(rows: &[PatchRow]) -> Result<polars::prelude::DataFrame> {
    use polars::prelude::*;
    let opt = |v: Option<usize>| v.map(|x| x as u32);
    df!(
        "grid" => rows.iter().map(|r| r.cell.grid.name()).collect::<Vec<_>>(),
        "layer" => rows.iter().map(|r| r.cell.layer as u32).collect::<Vec<_>>(),
        "position" => rows.iter().map(|r| opt(r.cell.pos)).collect::<Vec<_>>(),
        "head" => rows.iter().map(|r| opt(r.cell.head)).collect::<Vec<_>>(),
        "value" => rows.iter().map(|r| r.value).collect::<Vec<_>>(),
        "raw" => rows.iter().map(|r| r.raw).collect::<Vec<_>>(),
        "method" => rows.iter().map(|r| r.method).collect::<Vec<_>>()
    )
    .map_err(|e| Error::Invalid(format!("building the patching table: {e}")))
}
