//! Non-finite values (NaN, ±Inf): a cheap check of each pass's output, and a diagnosis that
//! names the first hook point holding one, so that a broken checkpoint or an intervention that
//! overflows is reported where it starts instead of surfacing as NaN tables and plots.

use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::model::HookedTransformer;
use crate::weights::Weights;
use candle_core::{DType, Storage, Tensor};

/// Whether every value of `x` is finite. On the CPU in f32 a scan of its storage; elsewhere
/// x − x (0 where x is finite, NaN where it is NaN or ±Inf) summed, which keeps a NaN.
pub fn all_finite(x: &Tensor) -> Result<bool> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let (storage, layout) = x.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(cpu.as_slice::<f32>()?[start..end]
                .iter()
                .all(|v| v.is_finite()));
        }
    }
    let zero = x.sub(x)?.sum_all()?.to_dtype(DType::F32)?;
    Ok(zero.to_scalar::<f32>()?.is_finite())
}

/// How to go on regardless.
pub const ALLOW: &str = "Nothing is computed from them; to compute and write them anyway, pass \
     --allow-nonfinite (LoadOptions::allow_nonfinite in the library)";

/// An error unless every value of `x`, `what` an iterative routine (an SVD, an
/// eigendecomposition) is about to take, is finite: with NaN or Inf it would not converge.
pub fn ensure_finite(x: &Tensor, what: &str) -> Result<()> {
    match all_finite(x)? {
        true => Ok(()),
        false => Err(Error::NonFinite {
            what: what.to_string(),
            first: None,
            hint: "a decomposition of them cannot converge; check the weights".into(),
        }),
    }
}

impl Weights {
    /// The names of the tensors holding NaN or ±Inf.
    pub fn nonfinite(&self) -> Result<Vec<String>> {
        let mut bad = vec![];
        for (name, t) in &self.tensors {
            if !all_finite(&t.to_dtype(DType::F32)?.contiguous()?)? {
                bad.push(name.clone());
            }
        }
        Ok(bad)
    }
}

impl HookedTransformer {
    /// Checks, when the model was loaded without `allow_nonfinite`, that `out`, `what` a pass
    /// computed, is finite. If not, `rerun` runs the pass again without interventions, every
    /// hook point checked, and the error names the first one that held NaN or Inf.
    pub(crate) fn check_finite(
        &self,
        out: &Tensor,
        what: &str,
        rerun: impl FnOnce(&mut Hooks) -> Result<Tensor>,
    ) -> Result<()> {
        if self.allow_nonfinite || all_finite(out)? {
            return Ok(());
        }
        let mut watch = Hooks::none().watch_nonfinite();
        let (first, cause) = match (rerun(&mut watch), watch.first_nonfinite()) {
            (Ok(_), Some(p)) => (
                Some(p.to_string()),
                "in the model's own forward: its weights or input hold them, or its activations \
                 overflow in this dtype",
            ),
            (Ok(_), None) => (
                None,
                "only with this pass's hooks: an intervention or splice produced them",
            ),
            (Err(e), _) => return Err(e),
        };
        Err(Error::NonFinite {
            what: what.to_string(),
            first,
            hint: format!("{cause}. {ALLOW}"),
        })
    }

    /// The first hook point of a plain forward over `tokens` [batch, pos] whose activation
    /// holds NaN or Inf, if any.
    pub fn first_nonfinite(&self, tokens: &Tensor) -> Result<Option<crate::HookPoint>> {
        let mut watch = Hooks::none().watch_nonfinite();
        self.forward_unchecked(tokens, 0, None, &mut watch)?;
        Ok(watch.first_nonfinite())
    }
}
