//! The hooks of one forward pass: closures and interventions at hook points, SAEs spliced
//! in, and the cache they fill.

use crate::cache::ActivationCache;
use crate::error::{Error, Result};
use crate::hook_points::{BlockHook, HookPoint, NameFilter, SaeHook};
use crate::intervention::{Fired, Intervention, InterventionSpec, Site};
use crate::sae::Sae;
use candle_core::{DType, Tensor};

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

/// An SAE (or transcoder) spliced into the forward pass: its output replaces the activation
/// at the hook point it writes ([`Sae::writes`]), as in SAELens's `HookedSAETransformer`.
/// With `error_term`, the activation minus what the unhooked SAE reconstructs is added back,
/// so that the forward pass is unchanged until something intervenes inside the SAE
/// (SAELens's `use_error_term`).
#[derive(Debug, Clone, Copy)]
pub struct Splice<'a> {
    pub sae: &'a Sae,
    pub error_term: bool,
}

impl<'a> Splice<'a> {
    /// The SAE's output replaces the activation.
    pub fn new(sae: &'a Sae) -> Self {
        Self {
            sae,
            error_term: false,
        }
    }

    /// The SAE with its error term: the forward pass is unchanged, and interventions on its
    /// hook points (`hook_sae_acts_post`, ...) change it by what they change in the output.
    pub fn with_error_term(sae: &'a Sae) -> Self {
        Self {
            sae,
            error_term: true,
        }
    }

    /// The SAE's hook point `hook`, named after the point it writes.
    pub fn point(&self, hook: SaeHook) -> Result<HookPoint> {
        match self.sae.writes() {
            HookPoint::Block(l, h) => Ok(HookPoint::Sae(l, h, hook)),
            p => Err(Error::BadSae {
                path: self.sae.path.clone(),
                reason: format!("SAEs are spliced inside blocks; this one writes {p}"),
            }),
        }
    }

    fn spec(&self) -> InterventionSpec {
        let mut spec = InterventionSpec::closure(Site::at(self.sae.writes()));
        spec.kind = match self.error_term {
            false => "sae".into(),
            true => "sae_with_error_term".into(),
        };
        spec.sae = Some(self.sae.path.clone());
        spec
    }
}

/// A splice, the input a transcoder read earlier in the pass, and how often it has fired.
struct Spliced<'a> {
    splice: Splice<'a>,
    input: Option<Tensor>,
    count: usize,
}

/// Everything that reads or replaces activations during a forward pass: closures,
/// [`Intervention`]s at [`Site`]s, SAEs [spliced](Self::splice) in, and an optional cache being
/// recorded. At each hook point the hooks run in the order added, the cache records what comes
/// out of them, and an SAE writing there then replaces it.
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
    splices: Vec<Spliced<'a>>,
    cache: Option<ActivationCache>,
    /// The position of the first token of the current pass, and whether the pass is one step of
    /// KV-cached generation (whose positional sites may belong to another step).
    window: (usize, bool),
    /// Set by [`Self::watch_nonfinite`]: every activation is checked, the first point holding
    /// NaN or Inf is kept in `.1`.
    watch: (bool, Option<HookPoint>),
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

    /// Splices an SAE in: at the hook point it writes, its output replaces the activation
    /// (after that point's hooks, which edit what an SAE reads, and its cache entry, which
    /// keeps the activation the model computed). Its own hook points (`<point>.hook_sae_input`,
    /// `hook_sae_acts_pre`, `hook_sae_acts_post`, `hook_sae_recons`, `hook_sae_error`,
    /// `hook_sae_output`) can then be cached and intervened on like any other. A transcoder
    /// reads its input hook point (after that point's hooks) and replaces its output hook
    /// point's activation. Several SAEs splice at once; two writing one point is an error.
    ///
    /// The exception to SAELens: a skip transcoder's output includes its skip connection
    /// (`x·W_skipᵀ`), which SAELens's `HookedSAETransformer` leaves out.
    pub fn splice(mut self, splice: Splice<'a>) -> Result<Self> {
        let writes = splice.point(SaeHook::Output)?;
        if let Some(other) = self
            .splices
            .iter()
            .find(|s| s.splice.sae.writes() == splice.sae.writes())
        {
            return Err(Error::Invalid(format!(
                "two SAEs splice at {}: {} and {}; splice one per hook point",
                writes.base(),
                other.splice.sae.path.display(),
                splice.sae.path.display()
            )));
        }
        self.splices.push(Spliced {
            splice,
            input: None,
            count: 0,
        });
        Ok(self)
    }

    /// No hooks but `splices` spliced in.
    pub fn spliced(splices: &[Splice<'a>]) -> Result<Self> {
        splices.iter().try_fold(Self::none(), |h, &s| h.splice(s))
    }

    /// The SAE spliced at `point` (the hook point it writes), if any.
    pub fn spliced_at(&self, point: HookPoint) -> Option<Splice<'a>> {
        self.splices
            .iter()
            .map(|s| s.splice)
            .find(|s| s.sae.writes() == point)
    }

    /// Also records every activation that passes `filter` (after the hooks at its point).
    pub fn with_cache(mut self, filter: NameFilter) -> Self {
        self.cache = Some(ActivationCache::recording(filter));
        self
    }

    /// The sites of every hook and intervention, in the order added, then those every
    /// spliced SAE reads and writes.
    pub fn sites(&self) -> impl Iterator<Item = Site> + '_ {
        let spliced = self.splices.iter().flat_map(|s| {
            let sae = s.splice.sae;
            [Site::at(sae.hook), Site::at(sae.writes())]
        });
        self.entries.iter().map(|e| e.site.clone()).chain(spliced)
    }

    /// What each hook is and how often it has fired so far (one count per forward pass that
    /// reached its site), in the order added, then each spliced SAE: the record for a run's
    /// manifest.
    pub fn fired(&self) -> Vec<Fired> {
        let entries = self.entries.iter().map(|e| Fired {
            spec: e.spec(),
            count: e.count,
        });
        let splices = self.splices.iter().map(|s| Fired {
            spec: s.splice.spec(),
            count: s.count,
        });
        entries.chain(splices).collect()
    }

    /// Errors if any hook has never fired, naming it: a patch that silently did nothing is
    /// the bug this guards against.
    pub fn check_all_fired(&self) -> Result<()> {
        self.check_fired_since(&vec![0; self.entries.len()])
    }

    pub(crate) fn counts(&self) -> Vec<usize> {
        self.fired().iter().map(|f| f.count).collect()
    }

    /// Errors if a hook has not fired since the counts were `before`.
    pub(crate) fn check_fired_since(&self, before: &[usize]) -> Result<()> {
        match self
            .fired()
            .into_iter()
            .zip(before)
            .find(|(f, &b)| f.count == b)
        {
            Some((f, _)) => Err(Error::NotFired {
                what: f.spec.to_string(),
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

    /// Checks every activation for NaN and Inf (one reduction per hook point, so for diagnosis
    /// rather than every pass); [`Self::first_nonfinite`] then names the first point that held
    /// one. `attn.hook_attn_scores` is not checked: its masked entries are −∞ by design.
    pub fn watch_nonfinite(mut self) -> Self {
        self.watch = (true, None);
        self
    }

    /// The first hook point of the passes so far whose activation held NaN or Inf, when
    /// watched ([`Self::watch_nonfinite`]).
    pub fn first_nonfinite(&self) -> Option<HookPoint> {
        self.watch.1
    }

    /// Whether anything (a hook, the cache or a watch) wants the activation at `point`:
    /// optional activations such as `attn.hook_result` are computed only then.
    pub fn wants(&self, point: HookPoint) -> bool {
        self.watch.0
            || self.sites().any(|s| s.point == point)
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
        let scores = matches!(point, HookPoint::Block(_, BlockHook::AttnScores));
        if self.watch.0 && self.watch.1.is_none() && !scores && !crate::finite::all_finite(&x)? {
            self.watch.1 = Some(point);
        }
        for s in self.splices.iter_mut() {
            if s.splice.sae.hook_out.is_some() && s.splice.sae.hook == point {
                s.input = Some(x.clone());
            }
        }
        match self
            .splices
            .iter()
            .position(|s| s.splice.sae.writes() == point)
        {
            Some(i) => self.run_splice(i, x),
            None => Ok(x),
        }
    }

    /// The output of splice `i` replacing `y`, the activation at the point it writes, each
    /// step through the SAE's hook points (SAELens's order).
    fn run_splice(&mut self, i: usize, y: Tensor) -> Result<Tensor> {
        let splice = self.splices[i].splice;
        let sae = splice.sae;
        let x = match sae.hook_out {
            None => y.clone(),
            Some(_) => self.splices[i]
                .input
                .take()
                .ok_or_else(|| Error::NotFired {
                    what: format!(
                        "{} (the input of the transcoder spliced at {})",
                        sae.hook,
                        sae.writes()
                    ),
                })?,
        };
        let (b, p) = (x.dim(0)?, x.dim(1)?);
        let width = x.elem_count() / (b * p).max(1);
        if width != sae.d_in {
            return Err(Error::BadSae {
                path: sae.path.clone(),
                reason: format!(
                    "d_in {} does not fit {}, whose activations have {width} values per token",
                    sae.d_in, sae.hook
                ),
            });
        }
        // [batch, pos, ...] -> [batch, pos, d_in]
        let flat = x.reshape((b, p, sae.d_in))?.to_dtype(DType::F32)?;
        let at = |h| splice.point(h);
        let sae_in = self.apply(at(SaeHook::Input)?, flat.clone())?;
        let pre = self.apply(at(SaeHook::ActsPre)?, sae.encode_pre(&sae_in)?)?;
        let acts = self.apply(at(SaeHook::ActsPost)?, sae.activate(&pre, &sae_in)?)?;
        let recons = self.apply(at(SaeHook::Recons)?, sae.decode(&acts)?)?;
        let mut out = recons
            .broadcast_add(&sae.skip(&sae_in)?)?
            .reshape(y.dims())?;
        if splice.error_term {
            // What the unhooked SAE misses, a constant for gradients (as SAELens computes it
            // under no_grad).
            let clean = sae.forward(&flat)?.reshape(y.dims())?;
            let error = (y.to_dtype(DType::F32)? - clean)?.detach();
            out = (out + self.apply(at(SaeHook::Error)?, error)?)?;
        }
        let out = self.apply(at(SaeHook::Output)?, out)?;
        self.splices[i].count += 1;
        Ok(out.to_dtype(y.dtype())?)
    }
}
