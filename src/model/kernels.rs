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
use std::mem::MaybeUninit;

/// Whether the fused kernels can compute on `x`: f32 on the CPU, not tracked by autograd.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op()
}

/// Below this many elements a kernel runs in the calling thread: handing work to rayon's pool
/// and back costs tens of microseconds (two thread wake-ups), more than a generation step's
/// one-row kernels take.
const PARALLEL_MIN: usize = 32 * 1024;

/// Calls `f(i, piece)` for each `chunk`-sized piece `i` of `out`: on rayon's threads when `out`
/// is large, in the calling thread otherwise; compiled [`wide`] (so mark `f` `#[inline(always)]`).
fn for_each_chunk<T: Send>(out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk = chunk.max(1);
    if out.len() >= PARALLEL_MIN {
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| {
            wide(
                #[inline(always)]
                || f(i, c),
            )
        });
    } else {
        wide(
            #[inline(always)]
            || out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c)),
        );
    }
}

/// A new buffer of `len` values, piece `i` of `chunk` filled by `f(i, piece)` as
/// [`for_each_chunk`] runs it. Each piece is zeroed by the thread that fills it, while it is in
/// cache: a zeroed buffer (`vec![0.0; len]`) is written in the calling thread while the others
/// wait (the element-wise kernels' outputs were 1 % of SmolLM2's forward at 512 tokens).
fn fill_chunks(len: usize, chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = Box::<[f32]>::new_uninit_slice(len);
    for_each_chunk(
        &mut out,
        chunk,
        #[inline(always)]
        |i, piece| {
            for v in piece.iter_mut() {
                v.write(0.0);
            }
            // SAFETY: every value of the piece was just written.
            #[allow(unsafe_code)]
            let piece = unsafe { &mut *(piece as *mut [MaybeUninit<f32>] as *mut [f32]) };
            f(i, piece)
        },
    );
    // SAFETY: every piece was written.
    #[allow(unsafe_code)]
    unsafe { out.assume_init() }.into_vec()
}

/// Runs `body` compiled for AVX-512, or else AVX2 and FMA, where the CPU has them: the build
/// targets baseline x86-64, whose loops vectorise 4 floats wide (SSE2); inlined here they run
/// 16 or 8 wide (the attention softmax and GELU ~2x faster, `examples/profile_forward.rs`).
/// Only if inlined: mark the closure `#[inline(always)]`, or LLVM may compile a long one apart
/// for baseline x86-64 (the one-task-per-head attention's softmax did, 1.7x slower on Zen 3).
#[inline(always)]
pub(super) fn wide<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match super::packed::Isa::detect() {
        Some(super::packed::Isa::Avx512) => {
            #[target_feature(enable = "avx512f")]
            fn run<R>(body: impl FnOnce() -> R) -> R {
                body()
            }
            #[allow(unsafe_code)]
            // SAFETY: this CPU has AVX-512.
            return unsafe { run(body) };
        }
        Some(super::packed::Isa::Avx2) => {
            #[target_feature(enable = "avx2,fma")]
            fn run<R>(body: impl FnOnce() -> R) -> R {
                body()
            }
            #[allow(unsafe_code)]
            // SAFETY: this CPU has AVX2 and FMA.
            return unsafe { run(body) };
        }
        None => {}
    }
    body()
}

/// softmax(scores · scale + causal mask) over the last dimension of `scores` [.., p, offset + p],
/// computed in place: query i (at position offset + i) attends to keys 0..=offset + i, or with a
/// sliding `window` to the last `window` of them. The same
/// values as the three separate passes, in one pass that skips the masked keys and allocates
/// nothing (a fresh [heads, pos, pos] buffer per layer costs more in page faults than the
/// softmax itself at 1024 tokens). `scores` must be a tensor nothing else holds.
pub fn causal_softmax(
    scores: Tensor,
    scale: f64,
    offset: usize,
    window: Option<usize>,
) -> Result<Tensor> {
    let scores = scores.contiguous()?;
    scores.inplace_op1(&CausalSoftmax {
        scale: scale as f32,
        offset,
        window: window.unwrap_or(usize::MAX),
    })?;
    Ok(scores)
}

struct CausalSoftmax {
    scale: f32,
    offset: usize,
    window: usize,
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
        for_each_chunk(
            &mut s[start..end],
            n,
            #[inline(always)]
            |row, x| causal_softmax_row(x, self.offset + row % p + 1, self.window, self.scale),
        );
        Ok(())
    }
}

/// One query's row of scores -> its pattern, in place: the keys it sees are those before
/// `end` and, with a sliding `window`, not `window` or more before it; the rest become 0.
#[inline(always)]
pub(super) fn causal_softmax_row(x: &mut [f32], end: usize, window: usize, scale: f32) {
    let (x, masked) = x.split_at_mut(end);
    masked.fill(0.0);
    let (before, x) = x.split_at_mut(end.saturating_sub(window));
    before.fill(0.0);
    // Three passes, not five: each folds the values it writes.
    let max = map_lanes(x, f32::NEG_INFINITY, |v| v * scale, f32::max);
    let sum = map_lanes(x, 0.0, |v| exp(v - max), |a, b| a + b);
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Replaces each value v of `x` by `map(v)` and folds the new values as [`lanes`] does.
#[inline(always)]
fn map_lanes(
    x: &mut [f32],
    init: f32,
    map: impl Fn(f32) -> f32,
    f: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut acc = [init; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *v = map(*v);
            *a = f(*a, *v);
        }
    }
    let rest = chunks.into_remainder().iter_mut().fold(init, |a, v| {
        *v = map(*v);
        f(a, *v)
    });
    acc.iter().fold(rest, |a, &v| f(a, v))
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

/// Σ x², in eight lanes as [`lanes`] (which cannot square: it folds its lanes with `f` too).
#[inline(always)]
fn sum_of_squares(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    rest + acc.iter().sum::<f32>()
}

/// GPT-2's tanh GELU, ½x(1 + tanh(√(2/π)(x + 0.044715x³))), written as x·σ(2·√(2/π)(x + 0.044715x³))
/// (the same function: ½(1 + tanh y) = σ(2y)), one `exp` per element, on all cores.
pub fn gelu_new(x: &Tensor) -> Result<Tensor> {
    const C: f32 = 2.0 * 0.797_884_6; // 2·√(2/π)
    map(x, "gelu-new", |x| {
        x / (1.0 + exp(-C * (x + 0.044715 * x * x * x)))
    })
}

/// SiLU x·σ(x) (llama's MLP activation), on all cores.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    map(x, "silu", |x| x / (1.0 + exp(-x)))
}

fn map(
    x: &Tensor,
    name: &'static str,
    f: impl Fn(f32) -> f32 + Send + Sync + 'static,
) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1_no_bwd(&Map { name, f })?)
}

/// Elements per piece of an element-wise kernel's work.
const CHUNK: usize = 4096;

/// An element-wise f32 function applied in parallel chunks. Generic over the function (not a
/// `fn` pointer), so that it is inlined and the loop vectorised: GELU over GPT-2 small's MLP at
/// 128 tokens took 3.0 ms a layer through a pointer, 0.75 ms inlined (`profile_forward`).
struct Map<F> {
    name: &'static str,
    f: F,
}

impl<F: Fn(f32) -> f32 + Send + Sync> CustomOp1 for Map<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(s), Some((start, end))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("{}: contiguous f32 input only", self.name);
        };
        let src = &s[start..end];
        let out = fill_chunks(
            end - start,
            CHUNK,
            #[inline(always)]
            |i, dst| {
                for (d, &x) in dst.iter_mut().zip(&src[i * CHUNK..]) {
                    *d = (self.f)(x);
                }
            },
        );
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `y += bias` in place over the rows of `y` [rows, n] (bias [n]): the bias of a linear layer,
/// added to the matmul's fresh output without allocating a second one. `y` must be a tensor
/// nothing else holds.
pub fn add_bias(y: Tensor, bias: &Tensor) -> Result<Tensor> {
    let bias = bias.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let y = y.contiguous()?;
    y.inplace_op1(&AddBias(bias))?;
    Ok(y)
}

struct AddBias(Vec<f32>);

impl InplaceOp1 for AddBias {
    fn name(&self) -> &'static str {
        "add-bias"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(s), Some((start, end))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("add-bias: contiguous f32 only");
        };
        let n = self.0.len();
        if l.dims().last() != Some(&n) {
            candle_core::bail!("add-bias: {} biases for rows of {:?}", n, l.dims());
        }
        for_each_chunk(
            &mut s[start..end],
            n * 16,
            #[inline(always)]
            |_, rows| {
                for row in rows.chunks_exact_mut(n) {
                    for (y, b) in row.iter_mut().zip(&self.0) {
                        *y += b;
                    }
                }
            },
        );
        Ok(())
    }
}

/// `a + b` for two tensors of one shape (the residual stream's additions), on all cores.
///
/// candle's own addition would do, but from 64 Ki elements it runs on candle's separate thread
/// pool, whose threads spin for about a millisecond after each operation: on two cores they
/// then take a core from the next matmul's rayon thread (measured: the first matmul after a
/// norm took 2.6 instead of 1.3 ms).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    zip(a, b, "add", |a, b| a + b)
}

/// `f(a, b)` element by element over two tensors of one shape, on all cores.
fn zip(
    a: &Tensor,
    b: &Tensor,
    name: &'static str,
    f: impl Fn(f32, f32) -> f32 + Send + Sync,
) -> Result<Tensor> {
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    Ok(a.apply_op2_no_bwd(&b, &Zip { name, f })?)
}

/// An element-wise f32 function of two inputs, in parallel chunks (generic, so that `f` is
/// inlined into the loop).
struct Zip<F> {
    name: &'static str,
    f: F,
}

impl<F: Fn(f32, f32) -> f32 + Send + Sync> candle_core::CustomOp2 for Zip<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b), Some((a0, a1)), Some((b0, b1))) =
            (s1, s2, l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("{}: contiguous f32 inputs only", self.name);
        };
        if l1.dims() != l2.dims() {
            candle_core::bail!("{}: shapes {:?} and {:?}", self.name, l1.dims(), l2.dims());
        }
        let (a, b) = (&a[a0..a1], &b[b0..b1]);
        let out = fill_chunks(
            a1 - a0,
            CHUNK,
            #[inline(always)]
            |i, dst| {
                let (a, b) = (&a[i * CHUNK..], &b[i * CHUNK..]);
                for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
                    *d = (self.f)(a, b);
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// LayerNorm (`center`: x − mean(x)) or RMSNorm over the last dimension of `x`, divided by
/// √(mean of squares + eps), times `w` and plus `b` where given: one pass over each row where
/// the composed operations take seven (and run on candle's spinning pool, see [`add`]).
pub fn norm(
    x: &Tensor,
    center: bool,
    eps: f64,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
) -> Result<Tensor> {
    let values = |t: Option<&Tensor>| -> Result<Option<Vec<f32>>> {
        Ok(match t {
            Some(t) => Some(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?),
            None => None,
        })
    };
    let op = Norm {
        center,
        eps: eps as f32,
        w: values(w)?,
        b: values(b)?,
    };
    Ok(x.contiguous()?.apply_op1_no_bwd(&op)?)
}

struct Norm {
    center: bool,
    eps: f32,
    w: Option<Vec<f32>>,
    b: Option<Vec<f32>>,
}

impl CustomOp1 for Norm {
    fn name(&self) -> &'static str {
        "norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(s), Some((start, end)), Some(&n)) =
            (s, l.contiguous_offsets(), l.dims().last())
        else {
            candle_core::bail!("norm: contiguous f32 input only");
        };
        let wrong = |v: &Option<Vec<f32>>| v.as_ref().is_some_and(|v| v.len() != n);
        if n == 0 || wrong(&self.w) || wrong(&self.b) {
            candle_core::bail!("norm: weight or bias does not match rows of {n}");
        }
        let src = &s[start..end];
        let out = fill_chunks(
            end - start,
            n,
            #[inline(always)]
            |row, y| {
                let x = &src[row * n..(row + 1) * n];
                let mean = match self.center {
                    true => lanes(x, 0.0, |a, b| a + b) / n as f32,
                    false => 0.0,
                };
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x - mean;
                }
                let scale = (sum_of_squares(y) / n as f32 + self.eps).sqrt();
                for v in y.iter_mut() {
                    *v /= scale;
                }
                if let Some(w) = &self.w {
                    for (v, w) in y.iter_mut().zip(w) {
                        *v *= w;
                    }
                }
                if let Some(b) = &self.b {
                    for (v, b) in y.iter_mut().zip(b) {
                        *v += b;
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// llama's gated MLP activation silu(gate)·up in one pass, from `x` [.., 2 · d_mlp]: each row
/// its gate pre-activations, then its up projections (the one product with W_gate and W_in side
/// by side). Returns [.., d_mlp].
pub fn silu_gate(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1_no_bwd(&SiluGate)?)
}

struct SiluGate;

impl CustomOp1 for SiluGate {
    fn name(&self) -> &'static str {
        "silu-gate"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(s), Some((start, end)), Some(&width)) =
            (s, l.contiguous_offsets(), l.dims().last())
        else {
            candle_core::bail!("silu-gate: contiguous f32 input only");
        };
        if width == 0 || width % 2 != 0 {
            candle_core::bail!("silu-gate: last dimension {width}, not gate and up side by side");
        }
        let m = width / 2;
        let src = &s[start..end];
        let rows = (CHUNK / m).max(1);
        let out = fill_chunks(
            (end - start) / 2,
            rows * m,
            #[inline(always)]
            |i, dst| {
                let src = src[i * rows * width..].chunks_exact(width);
                for (dst, row) in dst.chunks_exact_mut(m).zip(src) {
                    let (gate, up) = row.split_at(m);
                    for ((d, &g), &u) in dst.iter_mut().zip(gate).zip(up) {
                        *d = g / (1.0 + exp(-g)) * u;
                    }
                }
            },
        );
        let mut dims = l.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = m;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// Rotary embedding in the rotate-half layout on `x` [batch, pos, heads, d_head] with `cos`
/// and `sin` [pos, d_head]: x·cos + rotate_half(x)·sin, where rotate_half(x) = [−x₂, x₁], in one
/// pass instead of six (narrow, negate, concatenate, two products, a sum).
pub fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
    let (cos, sin) = (
        cos.flatten_all()?.to_vec1::<f32>()?,
        sin.flatten_all()?.to_vec1::<f32>()?,
    );
    let x = match row_stride(x.layout()) {
        Some(_) => x.clone(),
        None => x.contiguous()?,
    };
    Ok(x.apply_op1_no_bwd(&Rotary { cos, sin })?)
}

/// How far apart the rows of `l` [batch, pos, heads, d_head] lie, if each row's heads lie side
/// by side: a contiguous tensor, or some heads of a wider one (the queries or keys in the one
/// product's output for all three, read in place).
fn row_stride(l: &Layout) -> Option<usize> {
    let (&[_, p, h, d], &[s0, s1, s2, s3]) = (l.dims(), l.stride()) else {
        return None;
    };
    (s3 == 1 && s2 == d && s1 >= h * d && s0 == p * s1).then_some(s1)
}

struct Rotary {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl CustomOp1 for Rotary {
    fn name(&self) -> &'static str {
        "rotary"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(s), Some(row), [b, p, h, d]) = (s, row_stride(l), l.dims()) else {
            candle_core::bail!("rotary: f32 [batch, pos, heads, d_head], heads side by side, only");
        };
        let (b, p, h, d, half) = (*b, *p, *h, *d, *d / 2);
        if self.cos.len() != p * d || d % 2 != 0 {
            candle_core::bail!(
                "rotary: tables for {} values, {p} positions of {d}",
                self.cos.len()
            );
        }
        let src = &s[l.start_offset()..];
        // One chunk per (batch, position): all its heads share that position's angles.
        let out = fill_chunks(
            b * p * h * d,
            h * d,
            #[inline(always)]
            |bp, dst| {
                let at = (bp % p) * d;
                let (cos, sin) = (&self.cos[at..at + d], &self.sin[at..at + d]);
                let src = &src[bp * row..][..h * d];
                for (y, x) in dst.chunks_exact_mut(d).zip(src.chunks_exact(d)) {
                    let (x1, x2) = x.split_at(half);
                    for i in 0..half {
                        y[i] = x1[i] * cos[i] - x2[i] * sin[i];
                        y[half + i] = x2[i] * cos[half + i] + x1[i] * sin[half + i];
                    }
                }
            },
        );
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
        for (p, offset, window) in [
            (1, 0, None),
            (7, 0, None),
            (5, 3, None),
            (1, 9, None),
            (7, 0, Some(3)),
            (5, 3, Some(2)),
            (1, 9, Some(4)),
        ] {
            let n = offset + p;
            let s = Tensor::randn(0f32, 3.0, (2, 3, p, n), &Device::Cpu).unwrap();
            let mask = super::super::causal_mask(p, offset, window, &Device::Cpu).unwrap();
            let composed = candle_nn::ops::softmax(
                &(&s * 0.125).unwrap().broadcast_add(&mask).unwrap(),
                D::Minus1,
            )
            .unwrap();
            let fused = causal_softmax(s.copy().unwrap(), 0.125, offset, window).unwrap();
            assert!(
                max_diff(&fused, &composed) < 1e-6,
                "p {p} offset {offset} {window:?}"
            );
        }
    }

    #[test]
    fn rotary_reads_heads_in_place() {
        // q as the forward has it: 3 of 5 heads [batch, pos, heads, d_head] in a wider product.
        let all = Tensor::randn(0f32, 1.0, (2, 4, 5, 8), &Device::Cpu).unwrap();
        let q = all.narrow(2, 1, 3).unwrap();
        assert!(row_stride(q.layout()).is_some());
        let cos = Tensor::randn(0f32, 1.0, (4, 8), &Device::Cpu).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (4, 8), &Device::Cpu).unwrap();
        let in_place = rotary(&q, &cos, &sin).unwrap();
        let copied = rotary(&q.contiguous().unwrap(), &cos, &sin).unwrap();
        assert_eq!(max_diff(&in_place, &copied), 0.0);
    }

    #[test]
    fn silu_and_rotary_equal_candle() {
        let x = Tensor::randn(0f32, 4.0, (2, 5, 3, 8), &Device::Cpu).unwrap();
        assert!(max_diff(&silu(&x).unwrap(), &x.silu().unwrap()) < 1e-5);
        let up = Tensor::randn(0f32, 1.0, (2, 5, 3, 8), &Device::Cpu).unwrap();
        let gated = (x.silu().unwrap() * &up).unwrap();
        let side_by_side = Tensor::cat(&[&x, &up], 3).unwrap();
        assert!(max_diff(&silu_gate(&side_by_side).unwrap(), &gated) < 1e-5);
        // Many rows, of a width that does not divide a chunk (on rayon's threads).
        let rows = Tensor::randn(0f32, 4.0, (3, 700, 2 * 1536 + 2), &Device::Cpu).unwrap();
        let (gate, up) = (
            rows.narrow(2, 0, 1537).unwrap(),
            rows.narrow(2, 1537, 1537).unwrap(),
        );
        let gated = (gate.silu().unwrap() * up).unwrap();
        let d = max_diff(&silu_gate(&rows).unwrap(), &gated);
        let top = gated
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d <= 1e-6 * top, "{d} of up to {top}");
        assert!(
            silu_gate(&rows.narrow(2, 0, 5).unwrap()).is_err(),
            "odd width"
        );
        let angles = Tensor::randn(0f32, 3.0, (5, 8), &Device::Cpu).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let (x1, x2) = (x.narrow(3, 0, 4).unwrap(), x.narrow(3, 4, 4).unwrap());
        let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], 3).unwrap();
        let composed = (x.broadcast_mul(&cos.unsqueeze(1).unwrap()).unwrap()
            + rotated.broadcast_mul(&sin.unsqueeze(1).unwrap()).unwrap())
        .unwrap();
        assert!(max_diff(&rotary(&x, &cos, &sin).unwrap(), &composed) < 1e-6);
    }

    /// Norms and sums of one row (in the calling thread) and of many (on rayon's threads).
    #[test]
    fn norm_and_add_equal_the_composed_ops() {
        for rows in [1, 100] {
            let x = Tensor::randn(3f32, 2.0, (2, rows, 576), &Device::Cpu).unwrap();
            let w = Tensor::randn(1f32, 0.5, 576, &Device::Cpu).unwrap();
            let b = Tensor::randn(0f32, 0.5, 576, &Device::Cpu).unwrap();
            for center in [false, true] {
                let xc = match center {
                    true => x
                        .broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap())
                        .unwrap(),
                    false => x.clone(),
                };
                let scale = (xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-5)
                    .unwrap()
                    .sqrt()
                    .unwrap();
                let plain = xc.broadcast_div(&scale).unwrap();
                let weighted = plain.broadcast_mul(&w).unwrap();
                let biased = weighted.broadcast_add(&b).unwrap();
                for (wb, want) in [
                    ((None, None), &plain),
                    ((Some(&w), None), &weighted),
                    ((Some(&w), Some(&b)), &biased),
                ] {
                    let fused = norm(&x, center, 1e-5, wb.0, wb.1).unwrap();
                    let d = max_diff(&fused, want);
                    assert!(d < 1e-5, "rows {rows} center {center}: {d}");
                }
            }
            let y = Tensor::randn(0f32, 1.0, (2, rows, 576), &Device::Cpu).unwrap();
            assert!(max_diff(&add(&x, &y).unwrap(), &(&x + &y).unwrap()) == 0.0);
        }
        let x = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::ones(5, DType::F32, &Device::Cpu).unwrap();
        assert!(norm(&x, false, 1e-5, Some(&w), None).is_err());
        assert!(add(&x, &x.t().unwrap()).is_err());
    }

    #[test]
    fn add_bias_equals_broadcast_add() {
        let y = Tensor::randn(0f32, 1.0, (37, 5), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, 5, &Device::Cpu).unwrap();
        let want = y.broadcast_add(&b).unwrap();
        assert!(max_diff(&add_bias(y.copy().unwrap(), &b).unwrap(), &want) == 0.0);
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
