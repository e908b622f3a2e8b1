//! Interventions as data: an [`Intervention`] (zero, mean, resample, patch, scale, add) applied
//! at a [`Site`] (a hook point, optionally narrowed to one head, position and neuron, and to a
//! range of batch rows).
//!
//! They are values, not closures, so a run can list them in its manifest ([`InterventionSpec`])
//! and report how often each fired ([`Fired`]). Add them to [`crate::Hooks`] with
//! [`crate::Hooks::intervene`]; several at one site apply in the order added.

use crate::error::{Error, Result};
use crate::hook_points::HookPoint;
use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Range;

/// Where an intervention applies: a hook point, and optionally one head, one position and one
/// neuron (the last axis) of its activation, and a range of batch rows (a sweep runs many
/// interventions as one batch, each on its own rows). Positions count from the start of the
/// sequence, also in KV-cached generation. `None` means every index of that axis.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Site {
    pub point: HookPoint,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neuron: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Range<usize>>,
}

impl Site {
    /// The whole activation at `point`.
    pub fn at(point: HookPoint) -> Self {
        Self {
            point,
            head: None,
            pos: None,
            neuron: None,
            rows: None,
        }
    }

    /// One head of a per-head activation (`hook_z`, `hook_pattern`, ...), every position.
    pub fn head(point: HookPoint, head: usize) -> Self {
        Self::at(point).with_head(head)
    }

    /// One MLP neuron (or residual dimension), every position.
    pub fn neuron(point: HookPoint, neuron: usize) -> Self {
        Self::at(point).with_neuron(neuron)
    }

    pub fn with_head(mut self, head: usize) -> Self {
        self.head = Some(head);
        self
    }

    pub fn with_pos(mut self, pos: usize) -> Self {
        self.pos = Some(pos);
        self
    }

    pub fn with_neuron(mut self, neuron: usize) -> Self {
        self.neuron = Some(neuron);
        self
    }

    /// Only batch rows `rows` (of every pass this site is in).
    pub fn with_rows(mut self, rows: Range<usize>) -> Self {
        self.rows = Some(rows);
        self
    }

    /// Which part of `x` the site selects: all of it, a 0/1 mask (1 on the selected indices),
    /// or nothing when its position lies in another step of KV-cached generation. `window` is
    /// the position of `x`'s first row and whether this pass is such a step.
    fn select(&self, x: &Tensor, (offset, incremental): (usize, bool)) -> Result<Selection> {
        let axes = self.point.axes();
        let dims = x.dims();
        // (axis, first index, one past the last)
        let mut picks: Vec<(usize, usize, usize)> = vec![];
        let mut pick = |axis: Option<usize>, index: Option<usize>, what: &str| -> Result<()> {
            let Some(i) = index else { return Ok(()) };
            let axis = axis.ok_or_else(|| Error::BadSite {
                site: self.to_string(),
                reason: format!("{} has no {what} axis", self.point),
            })?;
            if i >= dims[axis] {
                return Err(match what {
                    "head" => Error::HeadOutOfRange {
                        head: i,
                        n_heads: dims[axis],
                    },
                    _ => Error::BadSite {
                        site: self.to_string(),
                        reason: format!("{what} {i} is out of range: the axis has {}", dims[axis]),
                    },
                });
            }
            picks.push((axis, i, i + 1));
            Ok(())
        };
        pick(axes.head, self.head, "head")?;
        pick(axes.neuron, self.neuron, "neuron")?;
        if let Some(p) = self.pos {
            let axis = axes.pos.ok_or_else(|| Error::BadSite {
                site: self.to_string(),
                reason: format!("{} has no position axis", self.point),
            })?;
            let n = dims[axis];
            if p < offset || p >= offset + n {
                // In KV-cached generation a later or earlier pass holds this position; in a
                // full pass the position lies beyond the prompt.
                return match incremental {
                    false => Err(Error::PositionOutOfRange { pos: p, len: n }),
                    true => Ok(Selection::Outside),
                };
            }
            picks.push((axis, p - offset, p - offset + 1));
        }
        if let Some(r) = &self.rows {
            if r.is_empty() || r.end > dims[0] {
                return Err(Error::BadSite {
                    site: self.to_string(),
                    reason: format!("rows {r:?} are not in the batch of {}", dims[0]),
                });
            }
            picks.push((0, r.start, r.end));
        }
        if picks.is_empty() {
            return Ok(Selection::All);
        }
        // Shape [1, .., n_axis, .., 1] with the selected axes at full size, 1 at the picks.
        let shape: Vec<usize> = (0..dims.len())
            .map(|a| match picks.iter().any(|(pa, ..)| *pa == a) {
                true => dims[a],
                false => 1,
            })
            .collect();
        let n: usize = shape.iter().product();
        let strides: Vec<usize> = (0..shape.len())
            .map(|a| shape[a + 1..].iter().product())
            .collect();
        let mask: Vec<u8> = (0..n)
            .map(|flat| {
                picks
                    .iter()
                    .all(|&(a, lo, hi)| (lo..hi).contains(&(flat / strides[a] % shape[a])))
                    as u8
            })
            .collect();
        let mask = Tensor::from_vec(mask, shape, x.device())?.broadcast_as(dims)?;
        Ok(Selection::Mask(mask))
    }
}

enum Selection {
    All,
    Mask(Tensor),
    /// The site's position is not in this (KV-cached) pass.
    Outside,
}

impl From<HookPoint> for Site {
    fn from(point: HookPoint) -> Self {
        Site::at(point)
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.point)?;
        for (name, v) in [
            ("head", self.head),
            ("pos", self.pos),
            ("neuron", self.neuron),
        ] {
            if let Some(v) = v {
                write!(f, "[{name} {v}]")?;
            }
        }
        if let Some(r) = &self.rows {
            write!(f, "[rows {r:?}]")?;
        }
        Ok(())
    }
}

/// What to do to the activation at a site. Sources (`Mean`, `Resample`, `Patch`) have the
/// activation's shape (batch first); their position axis may be longer than a pass's and is
/// then narrowed to the pass's positions.
#[derive(Debug, Clone)]
pub enum Intervention {
    /// Set to zero.
    Zero,
    /// Set to the mean over a reference batch: build with [`Intervention::mean_of`].
    Mean(Tensor),
    /// Set each batch row to a row of `source` (another run's activations) drawn at random with
    /// `seed`: resample ablation.
    Resample { source: Tensor, seed: u64 },
    /// Set to `source`, the activation of a cached run (batch of 1 or the run's batch size).
    Patch(Tensor),
    /// Multiply by a factor.
    Scale(f64),
    /// Add a vector (broadcast over the activation, e.g. [d_model] on the residual stream).
    Add(Tensor),
}

impl Intervention {
    /// Mean ablation: the mean of `reference` [batch, ...] over its batch.
    pub fn mean_of(reference: &Tensor) -> Result<Self> {
        let dtype = reference.dtype();
        let mean = reference.to_dtype(DType::F32)?.mean_keepdim(0)?;
        Ok(Intervention::Mean(mean.to_dtype(dtype)?))
    }

    /// The kind's name as the manifest writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            Intervention::Zero => "zero",
            Intervention::Mean(_) => "mean",
            Intervention::Resample { .. } => "resample",
            Intervention::Patch(_) => "patch",
            Intervention::Scale(_) => "scale",
            Intervention::Add(_) => "add",
        }
    }

    /// The serialisable description: site and kind, scalars, and source shapes (not tensors).
    pub fn spec(&self, site: Site) -> InterventionSpec {
        let (factor, seed, source_shape) = match self {
            Intervention::Zero => (None, None, None),
            Intervention::Scale(f) => (Some(*f), None, None),
            Intervention::Resample { source, seed } => (None, Some(*seed), Some(source.dims())),
            Intervention::Mean(t) | Intervention::Patch(t) | Intervention::Add(t) => {
                (None, None, Some(t.dims()))
            }
        };
        InterventionSpec {
            site,
            kind: self.kind().to_string(),
            factor,
            seed,
            source_shape: source_shape.map(<[usize]>::to_vec),
            sae: None,
        }
    }

    /// The new activation at `site` for `x`, or `None` if the site's position is not in this
    /// pass. `window` is the position of `x`'s first row and whether the pass is one step of
    /// KV-cached generation.
    pub(crate) fn apply(
        &self,
        site: &Site,
        x: &Tensor,
        window: (usize, bool),
    ) -> Result<Option<Tensor>> {
        let offset = window.0;
        let selection = site.select(x, window)?;
        if matches!(selection, Selection::Outside) {
            return Ok(None);
        }
        let pos_axis = site.point.axes().pos;
        let new = match self {
            Intervention::Zero => x.zeros_like()?,
            Intervention::Scale(f) => x.affine(*f, 0.0)?,
            Intervention::Add(v) => x.broadcast_add(&v.to_dtype(x.dtype())?)?,
            Intervention::Mean(m) => fit(m, x, pos_axis, offset, site)?,
            Intervention::Patch(s) => fit(s, x, pos_axis, offset, site)?,
            Intervention::Resample { source, seed } => {
                // Seeded per pass: the same seed draws the same rows every time.
                let mut rng = StdRng::seed_from_u64(*seed);
                let n = source.dim(0)?;
                let rows: Vec<u32> = (0..x.dim(0)?)
                    .map(|_| rng.random_range(0..n as u32))
                    .collect();
                let rows = Tensor::new(rows, source.device())?;
                fit(&source.index_select(&rows, 0)?, x, pos_axis, offset, site)?
            }
        };
        Ok(Some(match selection {
            Selection::Mask(mask) => mask.where_cond(&new, x)?,
            _ => new,
        }))
    }
}

/// `source` narrowed to the pass's positions, cast and broadcast to `x`'s shape, with an error
/// that names the site when the shapes do not fit.
fn fit(
    source: &Tensor,
    x: &Tensor,
    pos_axis: Option<usize>,
    offset: usize,
    site: &Site,
) -> Result<Tensor> {
    let mut s = source.clone();
    if let Some(a) = pos_axis {
        let (have, want) = (s.dim(a)?, x.dim(a)?);
        if have != want && have >= offset + want {
            s = s.narrow(a, offset, want)?;
        }
    }
    s.to_dtype(x.dtype())?
        .broadcast_as(x.dims())
        .map_err(|_| Error::ShapeMismatch {
            what: format!("the source of the intervention at {site}"),
            expected: x.dims().to_vec(),
            got: source.dims().to_vec(),
        })
}

/// An intervention as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterventionSpec {
    pub site: Site,
    /// `zero`, `mean`, `resample`, `patch`, `scale`, `add`, `closure` for a hook function, or
    /// `sae` / `sae_with_error_term` for a spliced SAE.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_shape: Option<Vec<usize>>,
    /// The folder of a spliced SAE (kind `sae` or `sae_with_error_term`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sae: Option<std::path::PathBuf>,
}

impl InterventionSpec {
    pub(crate) fn closure(site: Site) -> Self {
        Self {
            site,
            kind: "closure".into(),
            factor: None,
            seed: None,
            source_shape: None,
            sae: None,
        }
    }
}

impl fmt::Display for InterventionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {} hook at {}", self.kind, self.site)
    }
}

/// How many times one hook fired (changed an activation) during a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fired {
    #[serde(flatten)]
    pub spec: InterventionSpec,
    pub count: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hook_points::BlockHook;
    use candle_core::Device;

    fn x() -> Tensor {
        // [batch 2, pos 3, heads 2, d_head 2]
        Tensor::arange(1f32, 25., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2, 2))
            .unwrap()
    }

    #[test]
    fn zero_one_head_at_one_position() {
        let site = Site::head(HookPoint::block(0, BlockHook::Z), 1).with_pos(2);
        let y = Intervention::Zero
            .apply(&site, &x(), (0, false))
            .unwrap()
            .unwrap();
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let xv = x().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, (a, b)) in v.iter().zip(&xv).enumerate() {
            let (pos, head) = (i / 4 % 3, i / 2 % 2);
            let want = if pos == 2 && head == 1 { 0.0 } else { *b };
            assert_eq!(*a, want, "flat index {i}");
        }
    }

    #[test]
    fn patch_is_exact_and_scale_scales() {
        let site = Site::neuron(HookPoint::block(0, BlockHook::Z), 0);
        let src = (x() * 10.0).unwrap();
        let y = Intervention::Patch(src.clone())
            .apply(&site, &x(), (0, false))
            .unwrap()
            .unwrap();
        let n0 = |t: &Tensor| t.narrow(3, 0, 1).unwrap().flatten_all().unwrap();
        assert_eq!(
            n0(&y).to_vec1::<f32>().unwrap(),
            n0(&src).to_vec1::<f32>().unwrap()
        );
        let n1 = |t: &Tensor| t.narrow(3, 1, 1).unwrap().flatten_all().unwrap();
        assert_eq!(
            n1(&y).to_vec1::<f32>().unwrap(),
            n1(&x()).to_vec1::<f32>().unwrap()
        );
        let s = Intervention::Scale(2.0)
            .apply(&Site::at(site.point), &x(), (0, false))
            .unwrap()
            .unwrap();
        assert_eq!(s.flatten_all().unwrap().to_vec1::<f32>().unwrap()[5], 12.0);
    }

    #[test]
    fn rows_narrow_a_site_to_part_of_the_batch() {
        let site = Site::head(HookPoint::block(0, BlockHook::Z), 0).with_rows(1..2);
        let y = Intervention::Zero
            .apply(&site, &x(), (0, false))
            .unwrap()
            .unwrap();
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, a) in v.iter().enumerate() {
            let (row, head) = (i / 12, i / 2 % 2);
            let want = if row == 1 && head == 0 {
                0.0
            } else {
                i as f32 + 1.0
            };
            assert_eq!(*a, want, "flat index {i}");
        }
        let e = Intervention::Zero
            .apply(&site.with_rows(1..3), &x(), (0, false))
            .unwrap_err();
        assert!(e.to_string().contains("not in the batch of 2"), "{e}");
    }

    #[test]
    fn bad_sites_are_errors() {
        let pattern = HookPoint::block(0, BlockHook::Pattern);
        let t = Tensor::zeros((1, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let e = Intervention::Zero
            .apply(&Site::neuron(pattern, 0), &t, (0, false))
            .unwrap_err();
        assert!(e.to_string().contains("no neuron axis"), "{e}");
        let e = Intervention::Zero
            .apply(&Site::head(pattern, 2), &t, (0, false))
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::HeadOutOfRange {
                    head: 2,
                    n_heads: 2
                }
            ),
            "{e}"
        );
        let e = Intervention::Zero
            .apply(&Site::at(pattern).with_pos(3), &t, (0, false))
            .unwrap_err();
        assert!(
            matches!(e, Error::PositionOutOfRange { pos: 3, len: 3 }),
            "{e}"
        );
        // In a KV-cached pass starting at position 5, position 3 is simply not this pass's.
        assert!(Intervention::Zero
            .apply(&Site::at(pattern).with_pos(3), &t, (5, true))
            .unwrap()
            .is_none());
    }

    #[test]
    fn mean_and_resample_take_rows_of_the_reference() {
        let m = Intervention::mean_of(&x()).unwrap();
        let site = Site::at(HookPoint::block(0, BlockHook::Z));
        let y = m.apply(&site, &x(), (0, false)).unwrap().unwrap();
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v[0], 7.0); // (1 + 13) / 2
        assert_eq!(v[12], 7.0);
        let r = Intervention::Resample {
            source: x(),
            seed: 3,
        };
        let a = r.apply(&site, &x(), (0, false)).unwrap().unwrap();
        let b = r.apply(&site, &x(), (0, false)).unwrap().unwrap();
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b, "seeded");
        assert!(a[0] == 1.0 || a[0] == 13.0);
    }

    #[test]
    fn specs_serialise_without_tensors() {
        let site = Site::head(HookPoint::block(1, BlockHook::Z), 2).with_pos(4);
        let spec = Intervention::Patch(x()).spec(site);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            json,
            r#"{"site":{"point":"blocks.1.attn.hook_z","head":2,"pos":4},"kind":"patch","source_shape":[2,3,2,2]}"#
        );
        let back: InterventionSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }
}
