//! Non-finite values (NaN, ±Inf): a cheap check of each pass's output, and a diagnosis that
//! names the first hook point holding one, so that a broken checkpoint or an intervention that
//! overflows is reported where it starts instead of surfacing as NaN tables and plots.

use crate::error::{Error, Result};
use crate::hooks::Hooks;
use crate::model::HookedTransformer;
use crate::weights::Weights;
use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};

/// Whether every value of `x` is finite. On the CPU in f32, f16 or bf16 a scan of its values
/// where they lie (a transposed weight is not copied first); elsewhere x − x (0 where x is
/// finite, NaN where it is NaN or ±Inf) summed, which keeps a NaN.
pub fn all_finite(x: &Tensor) -> Result<bool> {
    let (storage, layout) = x.storage_and_layout();
    if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, dense_offsets(layout)) {
        match cpu {
            CpuStorage::F32(v) => return Ok(every(&v[start..end], f32::is_finite)),
            CpuStorage::F16(v) => return Ok(every(&v[start..end], half::f16::is_finite)),
            CpuStorage::BF16(v) => return Ok(every(&v[start..end], half::bf16::is_finite)),
            _ => {}
        }
    }
    drop(storage);
    let zero = x.sub(x)?.sum_all()?.to_dtype(DType::F32)?;
    Ok(zero.to_scalar::<f32>()?.is_finite())
}

/// Whether `ok` holds for every value of `v`: pieces on rayon's threads, each folded without
/// a branch, so that the loop vectorises. Each forward checks its logits (25 million values for
/// 512 tokens of a 49k vocabulary); one value at a time, in the calling thread, that was 2 % of
/// SmolLM2's forward.
fn every<T: Copy + Sync>(v: &[T], ok: impl Fn(T) -> bool + Sync) -> bool {
    use rayon::prelude::*;
    v.par_chunks(1 << 14)
        .all(|piece| piece.iter().fold(true, |all, &x| all & ok(x)))
}

/// The storage range of a layout that covers a dense block once, in any order (a contiguous
/// tensor, or a transposed or permuted view of one): its strides, smallest first, are the
/// running products of the dimensions they step over.
fn dense_offsets(l: &Layout) -> Option<(usize, usize)> {
    let start = l.start_offset();
    if l.shape().elem_count() == 0 {
        return Some((start, start));
    }
    let mut axes: Vec<(usize, usize)> = l
        .stride()
        .iter()
        .zip(l.dims())
        .filter(|(_, d)| **d > 1)
        .map(|(s, d)| (*s, *d))
        .collect();
    axes.sort_unstable();
    let mut size = 1;
    for (stride, dim) in axes {
        if stride != size {
            return None;
        }
        size *= dim;
    }
    Some((start, start + size))
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
            if !all_finite(t)? {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn views_are_read_in_place_and_only_their_own_values_count() -> Result<()> {
        let mut v: Vec<f32> = (0..12).map(|i| i as f32).collect();
        v[5] = f32::INFINITY; // row 1, column 1 of [3, 4]
        let x = Tensor::from_vec(v, (3, 4), &Device::Cpu)?;
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let x = x.to_dtype(dtype)?;
            assert!(!all_finite(&x)?, "{dtype:?}");
            // A transposed view covers the same values: read in place, no copy.
            assert!(dense_offsets(x.t()?.layout()).is_some());
            assert!(!all_finite(&x.t()?)?, "{dtype:?} transposed");
            // A view without the Inf (columns 2..4) is finite, though its storage is not.
            let cols = x.narrow(1, 2, 2)?;
            assert!(dense_offsets(cols.layout()).is_none());
            assert!(all_finite(&cols)?, "{dtype:?} narrowed");
            assert!(all_finite(&x.i(2)?)?, "{dtype:?} row 2");
            assert!(!all_finite(&x.i(1)?)?, "{dtype:?} row 1");
        }
        let empty = Tensor::zeros((0, 4), DType::F32, &Device::Cpu)?;
        assert!(all_finite(&empty)?);
        // Many pieces (the logits' size): a NaN in the last one is found.
        let mut big = vec![1f32; 100_003];
        assert!(every(&big, f32::is_finite));
        big[100_002] = f32::NAN;
        assert!(!all_finite(&Tensor::from_vec(big, 100_003, &Device::Cpu)?)?);
        Ok(())
    }
}
