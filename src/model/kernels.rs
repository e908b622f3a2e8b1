//! Fused CPU kernels for the forward pass's element-wise work, used when nothing needs the
//! intermediate values (no hook on them, no autograd, f32 on the CPU).
//!
//! Profiling GPT-2 small at 512 tokens (`examples/profile_forward.rs`) put 40 % of the time
//! outside matmuls once those ran on BLAS, most of it in two places: the attention softmax (scale,
//! causal mask, softmax: three passes over [batch, heads, pos, pos], half of it masked) and the
//! tanh GELU (one `tanhf` per element on one core).

use crate::error::Result;
use candle_core::{CpuStorage, CustomOp1, DType, InplaceOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Whether the fused kernels can compute on `x`: f32 on the CPU, not tracked by autograd.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op()
}

/// softmax(scores · scale + causal mask) over the last dimension of `scores` [.., p, offset + p],
/// computed in place: query i (at position offset + i) attends to keys 0..=offset + i. The same
/// values as the three separate passes, in one pass that skips the masked keys and allocates
/// nothing (a fresh [heads, pos, pos] buffer per layer costs more in page faults than the
/// softmax itself at 1024 tokens). `scores` must be a tensor nothing else holds.
pub fn causal_softmax(scores: Tensor, scale: f64, offset: usize) -> Result<Tensor> {
    let scores = scores.contiguous()?;
    scores.inplace_op1(&CausalSoftmax {
        scale: scale as f32,
        offset,
    })?;
    Ok(scores)
}

struct CausalSoftmax {
    scale: f32,
    offset: usize,
}

impl InplaceOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(s), Some((start, end))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("causal softmax: contiguous f32 scores only");
        };
        let dims = l.dims();
        let (p, n) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        if n != self.offset + p {
            candle_core::bail!(
                "causal softmax: {n} keys for {p} queries at offset {}",
                self.offset
            );
        }
        s[start..end]
            .par_chunks_mut(n.max(1))
            .enumerate()
            .for_each(|(row, x)| {
                let (x, masked) = x.split_at_mut(self.offset + row % p + 1);
                masked.fill(0.0);
                for v in x.iter_mut() {
                    *v *= self.scale;
                }
                let max = lanes(x, f32::NEG_INFINITY, f32::max);
                for v in x.iter_mut() {
                    *v = exp(*v - max);
                }
                let sum = lanes(x, 0.0, |a, b| a + b);
                for v in x.iter_mut() {
                    *v /= sum;
                }
            });
        Ok(())
    }
}

/// Folds `x` with `f` in eight independent lanes, then folds the lanes: the loop vectorises
/// where one running accumulator would be a serial chain.
#[inline(always)]
fn lanes(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = f(*a, v);
        }
    }
    rest.iter().chain(&acc).fold(init, |a, &v| f(a, v))
}

/// GPT-2's tanh GELU, ½x(1 + tanh(√(2/π)(x + 0.044715x³))), written as x·σ(2·√(2/π)(x + 0.044715x³))
/// (the same function: ½(1 + tanh y) = σ(2y)), one `exp` per element, on all cores.
pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1_no_bwd(&GeluNew)?)
}

struct GeluNew;

impl CustomOp1 for GeluNew {
    fn name(&self) -> &'static str {
        "gelu-new"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(s), Some((start, end))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("gelu: contiguous f32 input only");
        };
        const C: f32 = 2.0 * 0.797_884_6; // 2·√(2/π)
        let mut out = vec![0f32; end - start];
        out.par_chunks_mut(4096)
            .zip(s[start..end].par_chunks(4096))
            .for_each(|(dst, src)| {
                for (d, &x) in dst.iter_mut().zip(src) {
                    *d = x / (1.0 + exp(-C * (x + 0.044715 * x * x * x)));
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// e^x to within 2 ulp (Cephes's `expf`): x = n·ln 2 + r with |r| ≤ ½ ln 2, e^r from a degree-7
/// polynomial, 2^n written into the exponent bits. Plain arithmetic, so the loops above
/// vectorise; libm's `expf` is a call per element. Below −87.3 (where e^x leaves the normal
/// floats) it returns e^−87.3 ≈ 1e−38; from 88.03 (n = 127 rounds up to 128) it is +∞.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer in the low bits
    let x = x.clamp(-87.3, 88.8);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4; // ln 2 in two parts, exact n·ln2_hi
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let e_r = p * r * r + r + 1.0;
    let bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    // 2^n for n in -126..=128 (128 gives +inf through the exponent field's all-ones).
    let two_n = f32::from_bits(bits.wrapping_add(127) << 23);
    e_r * two_n
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn causal_softmax_equals_scale_mask_softmax() {
        for (p, offset) in [(1, 0), (7, 0), (5, 3), (1, 9)] {
            let n = offset + p;
            let s = Tensor::randn(0f32, 3.0, (2, 3, p, n), &Device::Cpu).unwrap();
            let mask: Vec<f32> = (0..p)
                .flat_map(|i| {
                    (0..n).map(move |j| {
                        if j <= offset + i {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (p, n), &Device::Cpu).unwrap();
            let composed = candle_nn::ops::softmax(
                &(&s * 0.125).unwrap().broadcast_add(&mask).unwrap(),
                D::Minus1,
            )
            .unwrap();
            let fused = causal_softmax(s.copy().unwrap(), 0.125, offset).unwrap();
            assert!(max_diff(&fused, &composed) < 1e-6, "p {p} offset {offset}");
        }
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f64;
        for i in -873_000..=880_000 {
            let x = i as f32 * 1e-4;
            let (ours, exact) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((ours - exact).abs() / exact);
        }
        assert!(
            worst < 2.5 * f32::EPSILON as f64,
            "relative error {worst:e}"
        );
        assert_eq!(exp(-1000.0), exp(-87.3));
        assert_eq!(exp(100.0), f32::INFINITY);
    }

    #[test]
    fn gelu_new_equals_the_tanh_form() {
        let x = Tensor::arange(-2000i64, 2000, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .affine(0.01, 0.0)
            .unwrap();
        let xs = (&x * 30.0).unwrap(); // also far into both tails
        for x in [x, xs] {
            // Relative to 1 + |x|: a float32 rounding of the result.
            let scale = (x.abs().unwrap() + 1.0).unwrap();
            let fused = (gelu_new(&x).unwrap() / &scale).unwrap();
            let tanh_form = (x.gelu().unwrap() / &scale).unwrap();
            let d = max_diff(&fused, &tanh_form);
            assert!(d < 1e-6, "{d}");
        }
    }
}
