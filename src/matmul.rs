//! Matrix products for the forward pass and the circuit analyses: candle's, or with the `blas`
//! feature OpenBLAS's `sgemm`/`dgemm` for f32 and f64 on the CPU.
//!
//! candle's CPU matmul (the `gemm` crate) matches OpenBLAS on large products on these two cores
//! (180–205 GFLOP/s on 1024×768×3072) but not on the forward's smaller and transposed ones
//! (SmolLM2 at 128 tokens: 1.15–1.5× faster with OpenBLAS, run to run), nor on batched per-head
//! products, which candle runs one after another. The BLAS path reads strided operands in place
//! (a row stride, or a transposed matrix, per batch element), so views such as
//! `q.transpose(1, 2)` need no copy. Half-precision tensors, other devices and tensors that
//! autograd tracks (training) go through candle; on CUDA, strided views are copied first.

use crate::error::Result;
use candle_core::Tensor;

/// What computes f32 CPU products in this build on this machine (for benchmark reports): the
/// forward's weight products from packed panels where the CPU has AVX-512 or AVX2 (see
/// [`crate::model::Packed`]; with AVX2 only for inputs under 256 rows), the other products
/// through candle's matmul or OpenBLAS.
pub fn backend() -> &'static str {
    match (crate::model::Packed::available(), cfg!(feature = "blas")) {
        (true, true) => "packed weights (AVX-512 or AVX2), else OpenBLAS (feature blas)",
        (true, false) => "packed weights (AVX-512 or AVX2), else candle/gemm (default build)",
        (false, true) => "OpenBLAS (feature blas)",
        (false, false) => "candle/gemm (default build)",
    }
}

/// `a @ b` for `a` [.., m, k] and `b` [.., k, n] with the same leading dimensions (as candle's
/// `matmul`): [.., m, n].
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "blas")]
    if blas::applies(a, b) {
        return blas::matmul(a, b);
    }
    if !a.device().is_cpu() {
        // candle's CUDA matmul reads only operands whose batch elements lie one after another
        // (a per-head view of [batch, pos, head, d_head] does not): copy such views first.
        return Ok(a.contiguous()?.matmul(&b.contiguous()?)?);
    }
    Ok(contiguous_if_needed(a.matmul(b), a, b)?)
}

/// `a @ b` with `b` broadcast over `a`'s leading dimensions (as candle's `broadcast_matmul`).
pub fn broadcast_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ra, rb) = (a.rank(), b.rank());
    let lead = match ra.cmp(&rb) {
        std::cmp::Ordering::Less => &b.dims()[..rb - 2],
        _ => &a.dims()[..ra - 2],
    };
    let shape = |x: &Tensor| -> Vec<usize> {
        let d = x.dims();
        lead.iter().chain(&d[d.len() - 2..]).copied().collect()
    };
    matmul(&a.broadcast_as(shape(a))?, &b.broadcast_as(shape(b))?)
}

/// candle's CPU matmul refuses leading dimensions that do not collapse to one stride (a
/// transposed view over a batch of several); those are made contiguous and tried again.
fn contiguous_if_needed(
    first: candle_core::Result<Tensor>,
    a: &Tensor,
    b: &Tensor,
) -> candle_core::Result<Tensor> {
    use candle_core::Error::{MatMulUnexpectedStriding, WithBacktrace};
    match first {
        Err(MatMulUnexpectedStriding(_)) => a.contiguous()?.matmul(&b.contiguous()?),
        Err(WithBacktrace { inner, .. }) if matches!(*inner, MatMulUnexpectedStriding(_)) => {
            a.contiguous()?.matmul(&b.contiguous()?)
        }
        other => other,
    }
}

#[cfg(feature = "blas")]
#[allow(unsafe_code)] // calls into the C BLAS library
mod blas {
    use crate::error::{Error, Result};
    use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};
    use std::os::raw::c_int;

    const ROW_MAJOR: c_int = 101;
    const NO_TRANS: c_int = 111;
    const TRANS: c_int = 112;

    #[link(name = "openblas")]
    extern "C" {
        fn openblas_set_num_threads(n: c_int);
        fn cblas_sgemm(
            order: c_int,
            trans_a: c_int,
            trans_b: c_int,
            m: c_int,
            n: c_int,
            k: c_int,
            alpha: f32,
            a: *const f32,
            lda: c_int,
            b: *const f32,
            ldb: c_int,
            beta: f32,
            c: *mut f32,
            ldc: c_int,
        );
        fn cblas_dgemm(
            order: c_int,
            trans_a: c_int,
            trans_b: c_int,
            m: c_int,
            n: c_int,
            k: c_int,
            alpha: f64,
            a: *const f64,
            lda: c_int,
            b: *const f64,
            ldb: c_int,
            beta: f64,
            c: *mut f64,
            ldc: c_int,
        );
    }

    /// Whether BLAS computes `a @ b`: f32 or f64 on the CPU, not tracked by autograd.
    pub fn applies(a: &Tensor, b: &Tensor) -> bool {
        a.device().is_cpu()
            && a.dtype() == b.dtype()
            && matches!(a.dtype(), DType::F32 | DType::F64)
            && !a.track_op()
            && !b.track_op()
    }

    pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (da, db) = (a.dims(), b.dims());
        let r = da.len();
        if r < 2 || db.len() != r || da[..r - 2] != db[..r - 2] || da[r - 1] != db[r - 2] {
            return Err(Error::ShapeMismatch {
                what: "matmul operands".into(),
                expected: da.to_vec(),
                got: db.to_vec(),
            });
        }
        // A matrix BLAS cannot read in place (both trailing strides > 1) is copied first.
        let readable = |x: &Tensor| -> Result<Tensor> {
            match view(x.layout()) {
                Some(_) => Ok(x.clone()),
                None => Ok(x.contiguous()?),
            }
        };
        Ok(readable(a)?.apply_op2_no_bwd(&readable(b)?, &Gemm)?)
    }

    /// How BLAS reads the trailing [rows, cols] matrix of `l`: transposed or not, and its
    /// leading dimension; `None` if neither (both strides above 1).
    fn view(l: &Layout) -> Option<(bool, usize)> {
        let (d, s) = (l.dims(), l.stride());
        let r = d.len();
        let (rows, cols, sr, sc) = (d[r - 2], d[r - 1], s[r - 2], s[r - 1]);
        if (sc == 1 || cols == 1) && (rows == 1 || sr >= cols) {
            Some((false, if rows == 1 { cols.max(1) } else { sr }))
        } else if (sr == 1 || rows == 1) && (cols == 1 || sc >= rows) {
            Some((true, if cols == 1 { rows.max(1) } else { sc }))
        } else {
            None
        }
    }

    /// The storage offset of each matrix of the batch, in row-major order of the leading
    /// dimensions (any strides, broadcast ones included).
    fn offsets(l: &Layout) -> Vec<usize> {
        let (d, s) = (l.dims(), l.stride());
        let lead = d.len() - 2;
        let mut out = vec![l.start_offset()];
        for i in 0..lead {
            out = out
                .iter()
                .flat_map(|&o| (0..d[i]).map(move |j| o + j * s[i]))
                .collect();
        }
        out
    }

    struct Gemm;

    /// Multiply-adds below which a product runs in the calling thread (a few µs of one core's
    /// BLAS). Not higher: a one-row product with a weight matrix is bound by memory, and two
    /// threads read it faster (KV-cache generation 18 against 23 tok/s with 2^20 here).
    const PARALLEL_MIN_MACS: usize = 1 << 16;

    /// A raw pointer that parallel jobs share; each job writes its own block of the output.
    #[derive(Clone, Copy)]
    struct Shared<T>(*mut T);
    // SAFETY: the jobs' output blocks are disjoint and the inputs are only read.
    unsafe impl<T> Send for Shared<T> {}
    unsafe impl<T> Sync for Shared<T> {}

    /// One BLAS call: output rows `rows` and columns `cols` of batch element `batch`.
    struct Job {
        batch: usize,
        rows: (usize, usize),
        cols: (usize, usize),
    }

    /// The calls for `batches` products of [m, n]: one per batch element when there are enough
    /// of them for the threads, otherwise each product split by columns when it is wider than
    /// tall, by rows otherwise.
    fn jobs(batches: usize, m: usize, n: usize, threads: usize) -> Vec<Job> {
        let parts = if batches >= threads {
            1
        } else {
            threads.div_ceil(batches)
        };
        let split = |len: usize| -> Vec<(usize, usize)> {
            let step = len.div_ceil(parts).next_multiple_of(16).max(1);
            (0..len)
                .step_by(step)
                .map(|s| (s, (s + step).min(len)))
                .collect()
        };
        // Columns where the product is wider than tall (the linear layers at up to n tokens,
        // the unembedding, generation's single rows): each thread then reads only its half of
        // the weights. Measured A/B in one process, 2026-11-24: forward at 128 tokens 4 %
        // faster (SmolLM2 and GPT-2 small), equal at 512; alone, the shapes run at the same rate
        // either way.
        let rows = m >= n || n < 16 * parts;
        let (row_blocks, col_blocks) = match rows {
            true => (split(m), vec![(0, n)]),
            false => (vec![(0, m)], split(n)),
        };
        (0..batches)
            .flat_map(|batch| {
                let cols = col_blocks.clone();
                row_blocks.iter().flat_map(move |&rows| {
                    cols.clone()
                        .into_iter()
                        .map(move |cols| Job { batch, rows, cols })
                })
            })
            .collect()
    }

    /// The calling thread does the BLAS work: the products are split across rayon's threads
    /// here, so OpenBLAS's own threads would only compete with them (and spin between calls).
    fn single_threaded_blas() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: sets an integer in the library; no memory is passed.
        ONCE.call_once(|| unsafe { openblas_set_num_threads(1) });
    }

    impl Gemm {
        fn run<T: Blas>(
            a: &[T],
            la: &Layout,
            b: &[T],
            lb: &Layout,
        ) -> candle_core::Result<(Vec<T>, Shape)> {
            use rayon::prelude::*;
            let (da, db) = (la.dims(), lb.dims());
            let r = da.len();
            let (m, k, n) = (da[r - 2], da[r - 1], db[r - 1]);
            let ((ta, lda), (tb, ldb)) = match (view(la), view(lb)) {
                (Some(va), Some(vb)) => (va, vb),
                _ => candle_core::bail!("blas gemm: operands are not BLAS-readable"),
            };
            let (oa, ob) = (offsets(la), offsets(lb));
            let mut c = vec![T::default(); oa.len() * m * n];
            let int = |x: usize| c_int::try_from(x).map_err(candle_core::Error::wrap);
            let trans = |t: bool| if t { TRANS } else { NO_TRANS };
            let (ilda, ildb, ildc) = (int(lda)?, int(ldb)?, int(n)?);
            int(m.max(n).max(k))?;
            if m * n > 0 && k > 0 {
                single_threaded_blas();
                let out = Shared(c.as_mut_ptr());
                let (pa, pb) = (Shared(a.as_ptr().cast_mut()), Shared(b.as_ptr().cast_mut()));
                // Small products (generation's attention) stay in the calling thread: handing
                // them to rayon's pool and back costs more than they take.
                let parallel = oa.len() * m * n * k >= PARALLEL_MIN_MACS;
                let threads = if parallel {
                    rayon::current_num_threads()
                } else {
                    1
                };
                let run = |j: &Job| {
                    let (rows, cols) = (j.rows.1 - j.rows.0, j.cols.1 - j.cols.0);
                    // Where the block's first row of A, first column of B and first element
                    // of C lie: a transposed operand steps by 1 along its rows.
                    let a_at = oa[j.batch] + j.rows.0 * if ta { 1 } else { lda };
                    let b_at = ob[j.batch] + j.cols.0 * if tb { ldb } else { 1 };
                    let c_at = j.batch * m * n + j.rows.0 * n + j.cols.0;
                    let (pa, pb, out) = (pa, pb, out);
                    // SAFETY: `view` and `offsets` keep every element read inside `a` and
                    // `b`; the blocks of `c` are disjoint and inside it.
                    let (ap, bp, cp) = unsafe { (pa.0.add(a_at), pb.0.add(b_at), out.0.add(c_at)) };
                    let dims = [rows as c_int, cols as c_int, k as c_int];
                    // SAFETY: as above.
                    unsafe { T::gemm(trans(ta), trans(tb), dims, ap, ilda, bp, ildb, cp, ildc) };
                };
                let jobs = jobs(oa.len(), m, n, threads);
                match parallel {
                    true => jobs.par_iter().for_each(run),
                    false => jobs.iter().for_each(run),
                }
            }
            let mut shape = da[..r - 2].to_vec();
            shape.extend([m, n]);
            Ok((c, Shape::from(shape)))
        }
    }

    /// The BLAS routine for one element type.
    trait Blas: Copy + Default + Send + Sync {
        /// C = A·B (row-major) through `cblas_?gemm`.
        ///
        /// # Safety
        /// The pointers must address matrices of the given sizes and leading dimensions.
        #[allow(clippy::too_many_arguments)]
        unsafe fn gemm(
            ta: c_int,
            tb: c_int,
            dims: [c_int; 3],
            a: *const Self,
            lda: c_int,
            b: *const Self,
            ldb: c_int,
            c: *mut Self,
            ldc: c_int,
        );
    }

    impl Blas for f32 {
        unsafe fn gemm(
            ta: c_int,
            tb: c_int,
            [m, n, k]: [c_int; 3],
            a: *const f32,
            lda: c_int,
            b: *const f32,
            ldb: c_int,
            c: *mut f32,
            ldc: c_int,
        ) {
            // SAFETY: the caller's contract.
            unsafe { cblas_sgemm(ROW_MAJOR, ta, tb, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc) }
        }
    }

    impl Blas for f64 {
        unsafe fn gemm(
            ta: c_int,
            tb: c_int,
            [m, n, k]: [c_int; 3],
            a: *const f64,
            lda: c_int,
            b: *const f64,
            ldb: c_int,
            c: *mut f64,
            ldc: c_int,
        ) {
            // SAFETY: the caller's contract.
            unsafe { cblas_dgemm(ROW_MAJOR, ta, tb, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc) }
        }
    }

    impl candle_core::CustomOp2 for Gemm {
        fn name(&self) -> &'static str {
            "blas-gemm"
        }

        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            match (s1, s2) {
                (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                    let (c, shape) = Self::run(a, l1, b, l2)?;
                    Ok((CpuStorage::F32(c), shape))
                }
                (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                    let (c, shape) = Self::run(a, l1, b, l2)?;
                    Ok((CpuStorage::F64(c), shape))
                }
                _ => candle_core::bail!("blas gemm: f32 or f64 operands of one dtype only"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, IndexOp};

    fn close(a: &Tensor, b: &Tensor) {
        assert_eq!(a.dims(), b.dims());
        let d: f64 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-4, "{d}");
    }

    /// The BLAS path reads views in place; each must give candle's product of the copies.
    #[test]
    fn strided_views_multiply_like_their_copies() {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            let x = Tensor::randn(0f32, 1.0, (2, 5, 3, 4), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let y = Tensor::randn(0f32, 1.0, (2, 5, 4, 6), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let reference = |a: &Tensor, b: &Tensor| {
                a.contiguous()
                    .unwrap()
                    .matmul(&b.contiguous().unwrap())
                    .unwrap()
            };
            // Plain, transposed operands, a [b, p, h, d] -> [b, h, p, d] view (row stride h·d),
            // a column slice (row stride wider than the row), one row, and a 2-d product.
            let xt = x.transpose(2, 3).unwrap().contiguous().unwrap();
            let cases: Vec<(Tensor, Tensor)> = vec![
                (x.clone(), y.clone()),
                (xt.t().unwrap(), y.clone()),
                (
                    x.clone(),
                    y.transpose(2, 3)
                        .unwrap()
                        .contiguous()
                        .unwrap()
                        .t()
                        .unwrap(),
                ),
                (
                    x.transpose(1, 2)
                        .unwrap()
                        .contiguous()
                        .unwrap()
                        .transpose(1, 2)
                        .unwrap(),
                    y.clone(),
                ),
                (
                    y.narrow(3, 1, 4).unwrap().transpose(2, 3).unwrap(),
                    y.narrow(3, 0, 4).unwrap(),
                ),
                (x.narrow(2, 1, 1).unwrap(), y.clone()),
                (x.i((0, 0)).unwrap(), y.i((1, 2)).unwrap()),
            ];
            for (a, b) in &cases {
                close(&matmul(a, b).unwrap(), &reference(a, b));
            }
            // Single products large enough to be split across threads, by rows (tall) and by
            // columns (wide), with transposed operands so the blocks start mid-row.
            let tall = Tensor::randn(0f32, 1.0, (100, 37), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let wide = Tensor::randn(0f32, 1.0, (37, 90), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let tall_t = tall.t().unwrap().contiguous().unwrap().t().unwrap();
            let wide_t = wide.t().unwrap().contiguous().unwrap().t().unwrap();
            for (a, b) in [
                (&tall, &wide),
                (&tall_t, &wide_t),
                (&wide_t.t().unwrap(), &tall_t.t().unwrap()),
            ] {
                close(&matmul(a, b).unwrap(), &reference(a, b));
            }
            // Broadcast: one matrix against a batch.
            let w = y.i((0, 0)).unwrap();
            close(
                &broadcast_matmul(&x, &w).unwrap(),
                &x.broadcast_matmul(&w).unwrap(),
            );
        }
    }
}
