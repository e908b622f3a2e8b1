//! Weight matrices packed once, at load, for the forward's products `x @ W` (`linear`).
//!
//! A product's time goes into a small kernel that keeps a 14 × 32 tile of the output in
//! registers while it walks k. It runs near the cores' peak only when it reads the 32 columns of
//! W as one contiguous stream, so general matmuls (candle's `gemm`, BLAS) copy ("pack") W into
//! 32-column panels on every call. With the forward's few rows (128 tokens) that copy costs a
//! sixth of the product; W does not change between calls, so here it is packed once, as
//! [n / 32][k][32] (the last panel zero-padded), and the activations are read in place.
//! Measured on two Zen 4 cores (`examples/profile_forward.rs`): GPT-2 small's products at 128
//! tokens ran at ~140 GFLOP/s through candle and ~200 from packed panels.
//!
//! The price is memory: every f32 weight matrix is held twice (GPT-2 small: 0.49 GB more).
//! Weights are packed only on x86-64 with AVX-512 (detected at run time). The kernel also has
//! an AVX2 and FMA form (a 6 × 16 tile, two per panel), which the attention uses
//! (`fused_attention.rs`), but on such CPUs packed weights did not beat candle's `gemm`, blocked
//! for the caches (GPT-2 small's whole forward 1.02× at 128 tokens, 0.97× at 512 and 1024 on two
//! Zen 3 cores), so they are not worth their memory there. Elsewhere, for half precision and
//! other devices, inside autograd, and for a weight replaced after loading (the packed copy
//! remembers which tensor it was made from), `linear` uses the general matmul.

// Without x86-64 the kernel and its constants are left out and nothing is packed.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use crate::error::{Error, Result};
use candle_core::{CpuStorage, DType, Device, Storage, Tensor, TensorId};
use std::sync::Arc;

/// Columns of W per panel: two AVX-512 registers of f32.
pub(super) const NR: usize = 32;
/// The instruction sets the kernel is written for, best first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Isa {
    /// 32 registers of 16 floats: a tile of 14 rows × 32 columns.
    Avx512,
    /// 16 registers of 8 floats: a tile of 6 rows × 16 columns, two per panel.
    Avx2,
}

impl Isa {
    /// The best this CPU runs, if any.
    pub(super) fn detect() -> Option<Self> {
        Self::all().next()
    }

    /// Every one this CPU runs, best first.
    fn all() -> impl Iterator<Item = Self> {
        [Self::Avx512, Self::Avx2]
            .into_iter()
            .filter(|isa| isa.runs())
    }

    /// Whether this CPU runs it (detected at run time; std caches the answer).
    #[cfg(target_arch = "x86_64")]
    fn runs(self) -> bool {
        match self {
            Self::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            Self::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn runs(self) -> bool {
        false
    }

    /// Rows of x per kernel call: as many as leave registers for two of W's and one of x.
    fn rows(self) -> usize {
        match self {
            Self::Avx512 => 14, // 14 × 2 accumulators of 16 floats
            Self::Avx2 => 6,    // 6 × 2 accumulators of 8 floats
        }
    }

    /// Columns per kernel call: two registers' worth, a whole panel or half of one.
    fn cols(self) -> usize {
        match self {
            Self::Avx512 => NR,
            Self::Avx2 => NR / 2,
        }
    }

    /// Rows of W (k) per kernel call, so that a block of a panel stays in cache while every
    /// strip of x runs against it: with AVX2 512 (GPT-2's W_out, k = 3072, 10-15 % faster on
    /// Zen 3 than in one pass; 256 and 128 no better); the AVX-512 kernel walks the whole of k.
    fn depth(self) -> usize {
        match self {
            Self::Avx512 => usize::MAX,
            Self::Avx2 => 512,
        }
    }
}

/// Rows of x at least this long are copied into strips of a tile's rows first: a strip read in
/// place walks up to 14 rows whose stride, at multiples of 4 KiB, maps them all to one L1 cache
/// set.
const PACK_X_FROM_K: usize = 1024;

/// A [k, n] f32 weight as 32-column panels, and the tensor it was packed from.
#[derive(Clone)]
pub struct Packed {
    source: TensorId,
    k: usize,
    n: usize,
    panels: Arc<Vec<f32>>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed {{ k: {}, n: {} }}", self.k, self.n)
    }
}

impl Packed {
    /// Whether this machine packs weights (x86-64 with AVX-512).
    pub fn available() -> bool {
        Isa::detect() == Some(Isa::Avx512)
    }

    /// Packs `w` [k, n], stored in any layout (the unembedding is a transposed view), where
    /// packed weights are used: f32 on the CPU of a machine with AVX-512. `None` elsewhere.
    pub fn new(w: &Tensor) -> Result<Option<Self>> {
        if !Self::available() || !w.device().is_cpu() || w.dtype() != DType::F32 || w.rank() != 2 {
            return Ok(None);
        }
        let (k, n) = w.dims2()?;
        if k == 0 || n == 0 {
            return Ok(None);
        }
        let (storage, layout) = w.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
            return Ok(None);
        };
        let (rs, cs) = (layout.stride()[0], layout.stride()[1]);
        let panels = pack(&data[layout.start_offset()..], rs, cs, k, n);
        drop(storage);
        Ok(Some(Self {
            source: w.id(),
            k,
            n,
            panels: Arc::new(panels),
        }))
    }

    /// `x @ w` [m, n] for `x` [m, k], from the panels, if `w` is still the tensor they were
    /// packed from and `x` is f32 on the CPU outside autograd; `None` where the general matmul
    /// must compute it.
    pub fn matmul(&self, x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
        if w.id() != self.source
            || x.dtype() != DType::F32
            || !x.device().is_cpu()
            || x.track_op()
            || w.track_op()
        {
            return Ok(None);
        }
        let (m, k) = x.dims2()?;
        if k != self.k {
            return Err(Error::ShapeMismatch {
                what: "x @ W (x's last dimension against W's rows)".into(),
                expected: vec![m, self.k],
                got: vec![m, k],
            });
        }
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
            return Ok(None);
        };
        let x_rows = &data[layout.start_offset()..][..m * k];
        let mut out = vec![0f32; m * self.n];
        let panels = Panels {
            data: &self.panels,
            stride: k * NR,
        };
        product(x_rows, m, k, panels, self.n, &mut out, self.n, true);
        drop(storage);
        Ok(Some(Tensor::from_vec(out, (m, self.n), &Device::Cpu)?))
    }
}

/// W [k, n] (W[p, j] at `w[p·rs + j·cs]`) as 32-column panels [n / 32][k][32], the last one
/// zero-padded.
pub(super) fn pack(w: &[f32], rs: usize, cs: usize, k: usize, n: usize) -> Vec<f32> {
    let mut panels = vec![0f32; n.div_ceil(NR) * k * NR];
    for (j, panel) in panels.chunks_mut(k * NR).enumerate() {
        let cols = (n - j * NR).min(NR);
        for (p, row) in panel.chunks_mut(NR).enumerate() {
            for (l, v) in row[..cols].iter_mut().enumerate() {
                *v = w[p * rs + (j * NR + l) * cs];
            }
        }
    }
    panels
}

/// Panels from [`pack`], panel j at `data[j·stride..]`: a product may use the first k rows of
/// each (`stride` = the packed k · 32) and the first panels only.
#[derive(Clone, Copy)]
pub(super) struct Panels<'a> {
    pub data: &'a [f32],
    pub stride: usize,
}

/// out [m, n] (rows `ldo` apart) = x [m, k] @ W, W as `panels`, with the best kernel this CPU
/// runs (the caller has checked that there is one). With `parallel`, the panels are shared out
/// among rayon's threads; each thread runs every strip of x (a tile's rows) against each of its
/// panels, so a panel is read from memory once and then from cache.
#[allow(clippy::too_many_arguments)]
pub(super) fn product(
    x: &[f32],
    m: usize,
    k: usize,
    panels: Panels,
    n: usize,
    out: &mut [f32],
    ldo: usize,
    parallel: bool,
) {
    let isa = Isa::detect().expect("the packed product is called only where a kernel runs");
    product_on(isa, x, m, k, panels, n, out, ldo, parallel)
}

/// [`product`] with the kernel for `isa`, which this CPU must run.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, clippy::too_many_arguments)] // SIMD kernel over raw pointers; the bounds are checked here
fn product_on(
    isa: Isa,
    x: &[f32],
    m: usize,
    k: usize,
    panels: Panels,
    n: usize,
    out: &mut [f32],
    ldo: usize,
    parallel: bool,
) {
    use rayon::prelude::*;
    if m == 0 || n == 0 {
        return;
    }
    assert!(isa.runs(), "{isa:?} does not run on this CPU");
    let n_panels = n.div_ceil(NR);
    assert!(
        x.len() >= m * k
            && ldo >= n
            && out.len() >= (m - 1) * ldo + n
            && k * NR <= panels.stride
            && panels.data.len() >= (n_panels - 1) * panels.stride + k * NR,
        "packed product: operands smaller than their shapes"
    );
    let mr = isa.rows();
    let strips = m.div_ceil(mr);
    // Each strip is k × mr values apart; a value (row r, column p) sits at r·rs + p·cs in it.
    let packed_x: Vec<f32>;
    let (x, rs, cs) = if k >= PACK_X_FROM_K {
        let mut strip_major = vec![0f32; strips * k * mr];
        for (i, row) in x[..m * k].chunks(k).enumerate() {
            let strip = &mut strip_major[(i / mr) * k * mr..];
            for (p, v) in row.iter().enumerate() {
                strip[p * mr + i % mr] = *v;
            }
        }
        packed_x = strip_major;
        (&packed_x[..], 1, mr)
    } else {
        (x, k, 1)
    };
    let threads = match parallel && m * n * k >= 1 << 20 {
        true => rayon::current_num_threads().min(n_panels),
        false => 1, // or too small to pay for waking a thread
    };
    let per_thread = n_panels.div_ceil(threads);
    let out = OutPtr(out.as_mut_ptr());
    // k in blocks (one where the kernel walks the whole of it; with k = 0 one block of none,
    // which writes zeros).
    let block = isa.depth().min(k).max(1);
    let run = |t: usize| {
        for j in t * per_thread..((t + 1) * per_thread).min(n_panels) {
            // Each block of k is added to the sums of the blocks before it while this panel's
            // columns of out are still in cache.
            for from in (0..k.max(1)).step_by(block) {
                let depth = block.min(k - from);
                // A panel's columns, one tile's width at a time (the whole panel, or half).
                for c in (0..(n - j * NR).min(NR)).step_by(isa.cols()) {
                    let cols = (n - j * NR - c).min(isa.cols());
                    for s in 0..strips {
                        let rows = (m - s * mr).min(mr);
                        // SAFETY: the strip lies in `x` (its last row r < rows, column p < k),
                        // the block of the panel in `panels` (rows from + p < k, columns c + l
                        // < 32), and the tile (rows × cols from row s·mr, column j·32 + c, rows
                        // ldo apart) in `out`, as asserted above; threads write disjoint column
                        // ranges; this CPU runs `isa`.
                        unsafe {
                            tile(
                                isa,
                                rows,
                                depth,
                                x.as_ptr().add(s * k * mr + from * cs),
                                rs,
                                cs,
                                panels.data.as_ptr().add(j * panels.stride + from * NR + c),
                                out.get().add(s * mr * ldo + j * NR + c),
                                ldo,
                                cols,
                                from > 0,
                            )
                        }
                    }
                }
            }
        }
    };
    match threads {
        1 => run(0),
        _ => (0..threads).into_par_iter().for_each(run),
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
fn product_on(
    _: Isa,
    _: &[f32],
    _: usize,
    _: usize,
    _: Panels,
    _: usize,
    _: &mut [f32],
    _: usize,
    _: bool,
) {
    unreachable!("no packed panels without the kernel")
}

/// The output pointer, shared by the threads that write its disjoint column ranges.
struct OutPtr(*mut f32);
#[allow(unsafe_code)] // each thread writes only its own columns
unsafe impl Sync for OutPtr {}
impl OutPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// One tile of `rows` (1 to the ISA's) × `cols` (1 to 32) outputs, written or, with `add`,
/// added to: the kernel for that many rows.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn tile(
    isa: Isa,
    rows: usize,
    k: usize,
    x: *const f32,
    rs: usize,
    cs: usize,
    panel: *const f32,
    out: *mut f32,
    ldo: usize,
    cols: usize,
    add: bool,
) {
    macro_rules! rows {
        ($kernel:ident $args:tt: $($r:literal)*) => {
            match rows {
                $($r => $kernel::<$r> $args,)*
                _ => unreachable!("a strip of {isa:?} has 1 to {} rows", isa.rows()),
            }
        };
    }
    match isa {
        Isa::Avx512 => {
            debug_assert!(!add, "the AVX-512 kernel walks the whole of k");
            rows!(kernel_avx512(k, x, rs, cs, panel, out, ldo, cols): 1 2 3 4 5 6 7 8 9 10 11 12 13 14)
        }
        Isa::Avx2 => rows!(kernel_avx2(k, x, rs, cs, panel, out, ldo, cols, add): 1 2 3 4 5 6),
    }
}

/// out[r, l] = Σ_p x[r·rs + p·cs] · panel[p·32 + l] for r < R, l < cols: R × 32 sums in
/// 2R registers, one pass over k, stored once.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn kernel_avx512<const R: usize>(
    k: usize,
    x: *const f32,
    rs: usize,
    cs: usize,
    panel: *const f32,
    out: *mut f32,
    ldo: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    for p in 0..k {
        let w_lo = _mm512_loadu_ps(panel.add(p * NR));
        let w_hi = _mm512_loadu_ps(panel.add(p * NR + 16));
        let x_p = x.add(p * cs);
        for r in 0..R {
            let x_rp = _mm512_set1_ps(*x_p.add(r * rs));
            lo[r] = _mm512_fmadd_ps(x_rp, w_lo, lo[r]);
            hi[r] = _mm512_fmadd_ps(x_rp, w_hi, hi[r]);
        }
    }
    // Lanes past `cols` (the zero padding of the last panel) are not stored.
    let mask = |from: usize| ((1u32 << cols.saturating_sub(from).min(16)) - 1) as __mmask16;
    for r in 0..R {
        _mm512_mask_storeu_ps(out.add(r * ldo), mask(0), lo[r]);
        _mm512_mask_storeu_ps(out.add(r * ldo + 16), mask(16), hi[r]);
    }
}

/// The same for `cols` ≤ 16 of the panel's columns with AVX2 and FMA (with `add`, added to
/// out): 16 registers of 8 floats hold R × 16 sums and two of the panel's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn kernel_avx2<const R: usize>(
    k: usize,
    x: *const f32,
    rs: usize,
    cs: usize,
    panel: *const f32,
    out: *mut f32,
    ldo: usize,
    cols: usize,
    add: bool,
) {
    use std::arch::x86_64::*;
    // Lanes past `cols` (the zero padding of the last panel) are neither read nor stored.
    let width = _mm256_set1_epi32(cols as i32);
    let mask_lo = _mm256_cmpgt_epi32(width, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    let mask_hi = _mm256_cmpgt_epi32(width, _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15));
    let mut lo = [_mm256_setzero_ps(); R];
    let mut hi = [_mm256_setzero_ps(); R];
    if add {
        for r in 0..R {
            (lo[r], hi[r]) = match cols {
                16 => (
                    _mm256_loadu_ps(out.add(r * ldo)),
                    _mm256_loadu_ps(out.add(r * ldo + 8)),
                ),
                _ => (
                    _mm256_maskload_ps(out.add(r * ldo), mask_lo),
                    _mm256_maskload_ps(out.add(r * ldo + 8), mask_hi),
                ),
            };
        }
    }
    for p in 0..k {
        let w_lo = _mm256_loadu_ps(panel.add(p * NR));
        let w_hi = _mm256_loadu_ps(panel.add(p * NR + 8));
        let x_p = x.add(p * cs);
        for r in 0..R {
            let x_rp = _mm256_broadcast_ss(&*x_p.add(r * rs));
            lo[r] = _mm256_fmadd_ps(x_rp, w_lo, lo[r]);
            hi[r] = _mm256_fmadd_ps(x_rp, w_hi, hi[r]);
        }
    }
    if cols == 16 {
        // A whole tile: plain stores (a masked store costs several times more on Zen 3, a
        // third of a 64-long k loop, as in the attention's q·kᵀ).
        for r in 0..R {
            _mm256_storeu_ps(out.add(r * ldo), lo[r]);
            _mm256_storeu_ps(out.add(r * ldo + 8), hi[r]);
        }
        return;
    }
    for r in 0..R {
        _mm256_maskstore_ps(out.add(r * ldo), mask_lo, lo[r]);
        _mm256_maskstore_ps(out.add(r * ldo + 8), mask_hi, hi[r]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Products from the panels against candle's matmul, over the edges: rows not a multiple
    /// of a tile's, columns not a multiple of 32 or 16, short and long (strip-packed) rows, a
    /// transposed weight, one thread and several, with every kernel this CPU runs; and through
    /// `Packed::matmul` where weights are packed.
    #[test]
    fn packed_products_equal_candle_matmul() -> Result<()> {
        if Isa::detect().is_none() {
            eprintln!("neither AVX-512 nor AVX2 here: the packed kernel is not used");
        }
        if !Packed::available() {
            assert!(Packed::new(&Tensor::zeros((4, 4), DType::F32, &Device::Cpu)?)?.is_none());
        }
        let dev = Device::Cpu;
        for isa in Isa::all() {
            let mut out = vec![1f32; 3 * 5];
            let panels = Panels {
                data: &[],
                stride: 0,
            };
            product_on(isa, &[], 3, 0, panels, 5, &mut out, 5, false);
            assert_eq!(out, vec![0f32; 15], "{isa:?}: an empty sum is zero");
        }
        for (m, k, n) in [
            (1, 1, 1),
            (3, 7, 33),
            (14, 64, 32),
            (15, 100, 17),
            (29, 1024, 70),
            (130, 768, 300),
            (40, 1100, 96),
            (7, 1600, 41),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let x_rows = x.flatten_all()?.to_vec1::<f32>()?;
            for transposed in [false, true] {
                // W [k, n], stored as [k, n] or as the transposed view of [n, k].
                let stored = match transposed {
                    false => Tensor::randn(0f32, 1.0, (k, n), &dev)?,
                    true => Tensor::randn(0f32, 1.0, (n, k), &dev)?,
                };
                let w = if transposed {
                    stored.t()?
                } else {
                    stored.clone()
                };
                let want = x.matmul(&w.contiguous()?)?;
                let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
                let check = |got: Tensor, kernel: String| -> Result<()> {
                    let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                    assert!(
                        err <= 1e-5 * scale.max(1.0),
                        "{m}x{k}x{n} transposed {transposed}, {kernel}: {err} (scale {scale})"
                    );
                    Ok(())
                };
                let (rs, cs) = if transposed { (1, k) } else { (n, 1) };
                let panels = pack(&stored.flatten_all()?.to_vec1::<f32>()?, rs, cs, k, n);
                for isa in Isa::all() {
                    for parallel in [false, true] {
                        let mut out = vec![0f32; m * n];
                        let panels = Panels {
                            data: &panels,
                            stride: k * NR,
                        };
                        product_on(isa, &x_rows, m, k, panels, n, &mut out, n, parallel);
                        let got = Tensor::from_vec(out, (m, n), &dev)?;
                        check(got, format!("{isa:?}, parallel {parallel}"))?;
                    }
                }
                if let Some(packed) = Packed::new(&w)? {
                    check(
                        packed.matmul(&x, &w)?.expect("the weight packed"),
                        "Packed".into(),
                    )?;
                }
            }
        }
        Ok(())
    }

    #[test]
    fn dropping_the_panels_leaves_the_same_logits() -> Result<()> {
        // The embedded model (no download).
        let (mut model, _, _) = crate::load_model(None, &Default::default())?;
        assert_eq!(
            model.blocks[0].attn.packed[0].is_some(),
            Packed::available()
        );
        let tokens = Tensor::new(&[[1u32, 5, 9, 2, 7]], &Device::Cpu)?;
        let packed = model.forward(&tokens, &mut crate::Hooks::none())?;
        model.drop_packed_weights();
        let general = model.forward(&tokens, &mut crate::Hooks::none())?;
        let err = (packed - general)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "{err}");
        Ok(())
    }

    #[test]
    fn a_replaced_weight_is_not_read_from_its_old_panels() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::ones((8, 40), DType::F32, &dev)?;
        let Some(packed) = Packed::new(&w)? else {
            return Ok(()); // no AVX-512: nothing is packed
        };
        let replaced = (w.clone() * 2.0)?;
        let x = Tensor::ones((2, 8), DType::F32, &dev)?;
        assert!(packed.matmul(&x, &replaced)?.is_none());
        assert!(packed.matmul(&x, &w)?.is_some());
        Ok(())
    }
}
