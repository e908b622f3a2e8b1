//! The hooks of one forward pass: closures and interventions at hook points, and the cache
//! they fill.

use crate::cache::ActivationCache;
use crate::error::{Error, Result};
use crate::hook_points::{HookPoint, NameFilter};
use crate::intervention::{Fired, Intervention, InterventionSpec, Site};
use candle_core::Tensor;

/// A hook function: sees the activation at its hook point and may return a replacement
/// (same shape), or `None` to leave it unchanged.
pub type HookFn<'a> = Box<dyn FnMut(&Tensor, HookPoint) -> Result<Option<Tensor>> + 'a>;

/// What one hook does at its site: run a closure, or apply an [`Intervention`].
enum Action<'a> {
    Closure(HookFn<'a>),
    Intervene(Intervention),
}

/// One hook, with how many times it has changed an activation.
struct Entry<'a> {
    site: Site,
    action: Action<'a>,
    count: usize,
}

impl Entry<'_> {
    fn spec(&self) -> InterventionSpec {
        match &self.action {
            Action::Closure(_) => InterventionSpec::closure(self.site.clone()),
            Action::Intervene(iv) => iv.spec(self.site.clone()),
        }
    }
}

/// Everything that reads or replaces activations during a forward pass: closures,
/// [`Intervention`]s at [`Site`]s, and an optional cache being recorded. They run at each hook
/// point in the order added; the cache records what comes out of them.
///
/// ```
/// use hooklens::{BlockHook, HookPoint, Hooks, Intervention, NameFilter, Site};
/// let z = HookPoint::block(1, BlockHook::Z);
/// let hooks = Hooks::none()
///     .intervene(Site::head(z, 2), Intervention::Zero) // ablate L1H2
///     .with_cache(NameFilter::Points(vec![HookPoint::LnFinalScale]));
/// ```
#[derive(Default)]
pub struct Hooks<'a> {
    entries: Vec<Entry<'a>>,
    cache: Option<ActivationCache>,
    /// The position of the first token of the current pass, and whether the pass is one step of
    /// KV-cached generation (whose positional sites may belong to another step).
    window: (usize, bool),
}

impl<'a> Hooks<'a> {
    /// No hooks: a plain forward pass.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds a closure at `point`.
    pub fn add(
        mut self,
        point: HookPoint,
        f: impl FnMut(&Tensor, HookPoint) -> Result<Option<Tensor>> + 'a,
    ) -> Self {
        self.entries.push(Entry {
            site: Site::at(point),
            action: Action::Closure(Box::new(f)),
            count: 0,
        });
        self
    }

    /// Adds an intervention at `site` (a [`HookPoint`] converts to the whole activation).
    pub fn intervene(mut self, site: impl Into<Site>, intervention: Intervention) -> Self {
        self.entries.push(Entry {
            site: site.into(),
            action: Action::Intervene(intervention),
            count: 0,
        });
        self
    }

    /// Also records every activation that passes `filter` (after the hooks at its point).
    pub fn with_cache(mut self, filter: NameFilter) -> Self {
        self.cache = Some(ActivationCache::recording(filter));
        self
    }

    /// The sites of every hook and intervention, in the order added.
    pub fn sites(&self) -> impl Iterator<Item = &Site> {
        self.entries.iter().map(|e| &e.site)
    }

    /// What each hook is and how often it has fired so far (one count per forward pass that
    /// reached its site), in the order added: the record for a run's manifest.
    pub fn fired(&self) -> Vec<Fired> {
        self.entries
            .iter()
            .map(|e| Fired {
                spec: e.spec(),
                count: e.count,
            })
            .collect()
    }

    /// Errors if any hook has never fired, naming it: a patch that silently did nothing is
    /// the bug this guards against.
    pub fn check_all_fired(&self) -> Result<()> {
        self.check_fired_since(&vec![0; self.entries.len()])
    }

    pub(crate) fn counts(&self) -> Vec<usize> {
        self.entries.iter().map(|e| e.count).collect()
    }

    /// Errors if a hook has not fired since the counts were `before`.
    pub(crate) fn check_fired_since(&self, before: &[usize]) -> Result<()> {
        match self.entries.iter().zip(before).find(|(e, &b)| e.count == b) {
            Some((e, _)) => Err(Error::NotFired {
                what: e.spec().to_string(),
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn set_window(&mut self, offset: usize, incremental: bool) {
        self.window = (offset, incremental);
    }

    /// The recorded cache (empty if none was asked for), leaving an empty one in its place.
    pub(crate) fn take_cache(&mut self) -> ActivationCache {
        self.cache.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Whether anything (a hook or the cache) wants the activation at `point`: optional
    /// activations such as `attn.hook_result` are computed only then.
    pub fn wants(&self, point: HookPoint) -> bool {
        self.entries.iter().any(|e| e.site.point == point)
            || self.cache.as_ref().is_some_and(|c| c.records(&point))
    }

    /// Runs the hooks at `point` over `x`, records the result if the cache asks for it, and
    /// returns it.
    pub(crate) fn apply(&mut self, point: HookPoint, mut x: Tensor) -> Result<Tensor> {
        let window = self.window;
        for e in self.entries.iter_mut().filter(|e| e.site.point == point) {
            let new = match &mut e.action {
                Action::Closure(f) => {
                    e.count += 1;
                    f(&x, point)?
                }
                Action::Intervene(iv) => {
                    let new = iv.apply(&e.site, &x, window)?;
                    e.count += new.is_some() as usize;
                    new
                }
            };
            if let Some(new) = new {
                if new.dims() != x.dims() {
                    return Err(Error::ShapeMismatch {
                        what: format!("the value returned by the hook on {point}"),
                        expected: x.dims().to_vec(),
                        got: new.dims().to_vec(),
                    });
                }
                x = new.to_dtype(x.dtype())?;
            }
        }
        if let Some(cache) = self.cache.as_mut() {
            cache.record(point, &x);
        }
        Ok(x)
    }
}
