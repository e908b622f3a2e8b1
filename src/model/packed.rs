//! Weight matrices packed once for the forward's products `x @ W` (`linear`).
//!
//! A product's time goes into a small kernel that keeps a tile of the output in registers
//! (14 × 32 with AVX-512, 6 × 16 with AVX2) while it walks k. It runs near the cores' peak only
//! when it reads a tile's columns of W as one contiguous stream, so general matmuls (candle's
//! `gemm`, BLAS) copy ("pack") W into panels of that width on every call. With the forward's
//! few rows that copy costs a sixth of the product or more; W does not change between calls, so
//! here it is packed once, as [n / width][k][width] (the last panel zero-padded, the first on a
//! 64-byte boundary), by the first product that reads it. Whether a product reads the panels
//! depends only on its shape, never on what ran before, so a forward gives the same bits on its
//! first call as on every later one.
//!
//! Measured on two Zen 4 cores (AVX-512, `examples/profile_forward.rs`): GPT-2 small's products
//! at 128 tokens ran at ~140 GFLOP/s through candle and ~200 from packed panels, and the panels
//! won at every length. On two Zen 3 cores (AVX2) they win only on short inputs (SmolLM2's
//! forward 1.84× at 20 tokens, 1.13× at 128, in interleaved runs against the general matmul),
//! and `gemm` is as fast from 256 rows, so products of more rows go through it
//! (`Isa::rows_max`) and a model that only ever runs long inputs there packs nothing.
//!
//! The price is memory: a packed weight is held twice (GPT-2 small: 0.49 GB more);
//! `HookedTransformer::drop_packed_weights` frees the copies. Without AVX-512 or AVX2, for half
//! precision and other devices, inside autograd, and for a weight replaced after loading (the
//! packed copy remembers which tensor it was made from), `linear` uses the general matmul.

// Without x86-64 the kernel and its constants are left out and nothing is packed.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use crate::error::{Error, Result};
use candle_core::{CpuStorage, DType, Device, Storage, Tensor, TensorId};
use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

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

    /// Columns of W per panel, a tile's width: two registers of f32. A panel's row of 16
    /// floats (AVX2) is then one cache line: 64-byte lines read whole, in order.
    pub(super) fn width(self) -> usize {
        match self {
            Self::Avx512 => 32,
            Self::Avx2 => 16,
        }
    }

    /// Whether rows of x this long are copied into strips of a tile's rows first: a strip read
    /// in place walks rows whose stride, at multiples of 4 KiB, maps them all to one L1 cache
    /// set (AVX-512 on Zen 4: from k = 1,024; AVX2 on Zen 3: a few per cent faster from 512).
    /// Intel's L1 (Emerald Rapids: 48 KiB, 12 ways) takes the strips in place: there the copy
    /// made products of k = 1,536 and 3,072 slower at every length (4-20 % at 20-64 rows,
    /// 0-10 % at 128-1,024, pairs timed in turn in one process). The sums are the same either
    /// way: the kernel reads the same values in the same order.
    fn packs_x(self, k: usize) -> bool {
        match self {
            Self::Avx512 => k >= 1024 && !intel(),
            Self::Avx2 => k >= 512,
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

    /// Rows of x run against every panel before the next rows are: with AVX-512, 18 strips
    /// (252 rows) of rows up to 1,024 long, so that their ≤ 1 MiB stays in L2 while the panels
    /// stream past, rather than all of x coming from L3 for each panel (Emerald Rapids, pairs
    /// timed in turn in one process: GPT-2's k = 768 products 1.05-1.07× faster at 512 and
    /// 1,024 rows, the unembedding 1.09× at 512; its forward 1.03× at 512 tokens, 1.05× at
    /// 1,024). Longer rows in one pass: at k = 3,072 blocks of 128 or 256 rows were slower.
    fn block_rows(self, k: usize) -> usize {
        match self {
            Self::Avx512 if k <= 1024 => 18 * self.rows(),
            _ => usize::MAX,
        }
    }

    /// Products of more rows of x than this go through the general matmul: on Zen 3 (AVX2)
    /// candle's `gemm`, blocked for the caches, is as fast from 256 rows and faster at 512
    /// (SmolLM2's forward from packed panels 1.08× at 128 tokens, 1.01× at 256 and 384, 0.92×
    /// at 512); on Zen 4 (AVX-512) the panels were faster at every length.
    fn rows_max(self) -> usize {
        match self {
            Self::Avx512 => usize::MAX,
            Self::Avx2 => 255,
        }
    }
}

/// Whether this is an Intel CPU (CPUID's vendor string), read once.
fn intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static INTEL: OnceLock<bool> = OnceLock::new();
        *INTEL.get_or_init(|| {
            let id = std::arch::x86_64::__cpuid(0);
            let vendor: Vec<u8> = [id.ebx, id.edx, id.ecx]
                .iter()
                .flat_map(|r| r.to_le_bytes())
                .collect();
            vendor == b"GenuineIntel"
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A [k, n] f32 weight as panels for this CPU's kernel, packed from the tensor `source` by the
/// first product that reads them: a model whose products all go through the general matmul
/// (long inputs on AVX2) never holds its weights twice. Packing on the first such product,
/// not a later one, keeps the result a function of the inputs alone: the kernels sum in
/// different orders, so a forward that switched kernels between calls would change in the last
/// bits.
#[derive(Clone)]
pub struct Packed {
    source: TensorId,
    k: usize,
    n: usize,
    panels: Arc<OnceLock<PanelBuf>>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed {{ k: {}, n: {} }}", self.k, self.n)
    }
}

impl Packed {
    /// Whether this machine packs weights (x86-64 with AVX-512, or AVX2 and FMA).
    pub fn available() -> bool {
        Isa::detect().is_some()
    }

    /// Panels for `w` [k, n], stored in any layout (the unembedding is a transposed view),
    /// where packed weights are used: f32 on the CPU of a machine with AVX-512 or AVX2. `None`
    /// elsewhere.
    pub fn new(w: &Tensor) -> Result<Option<Self>> {
        if !Self::available() || !w.device().is_cpu() || w.dtype() != DType::F32 || w.rank() != 2 {
            return Ok(None);
        }
        let (k, n) = w.dims2()?;
        if k == 0 || n == 0 {
            return Ok(None);
        }
        Ok(Some(Self {
            source: w.id(),
            k,
            n,
            panels: Arc::new(OnceLock::new()),
        }))
    }

    /// Bytes the panels will take once a product makes them; 0 once it has.
    pub fn bytes_to_come(&self) -> u64 {
        match (self.panels.get(), Isa::detect()) {
            (None, Some(isa)) => (self.n.div_ceil(isa.width()) * isa.width() * self.k * 4) as u64,
            _ => 0,
        }
    }

    /// `x @ w` [m, n] for `x` [m, k], from the panels (packing them from `w` on first use),
    /// if `w` is still the tensor they are for, `x` is f32 on the CPU outside autograd and has
    /// few enough rows for this CPU's kernel to beat the general matmul; `None` where the
    /// general matmul must compute it.
    pub fn matmul(&self, x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
        let Some(isa) = Isa::detect() else {
            return Ok(None);
        };
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
        if m > isa.rows_max() {
            return Ok(None);
        }
        let panels = match self.panels.get() {
            Some(panels) => panels,
            None => {
                let (storage, layout) = w.storage_and_layout();
                let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
                    return Ok(None);
                };
                let (rs, cs) = (layout.stride()[0], layout.stride()[1]);
                let data = &data[layout.start_offset()..];
                let panels = PanelBuf::pack(data, rs, cs, self.k, self.n, isa.width());
                drop(storage);
                self.panels.get_or_init(|| panels)
            }
        };
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
            return Ok(None);
        };
        let x_rows = &data[layout.start_offset()..][..m * k];
        // Not zeroed first: zeroing the output in this thread while the others waited was 4 %
        // of SmolLM2's forward at 512 tokens.
        let mut out = Box::<[f32]>::new_uninit_slice(m * self.n);
        product(
            x_rows,
            m,
            k,
            panels.panels(),
            self.n,
            &mut out,
            self.n,
            true,
        );
        drop(storage);
        // SAFETY: the product wrote every value of `out`.
        #[allow(unsafe_code)]
        let out = unsafe { out.assume_init() }.into_vec();
        Ok(Some(Tensor::from_vec(out, (m, self.n), &Device::Cpu)?))
    }
}

/// W [k, n] as panels of `width` columns, [n / width][k][width] (the last one zero-padded),
/// starting on a 64-byte boundary.
pub(super) struct PanelBuf {
    buf: Vec<f32>,
    /// Where the panels start in `buf`: its first 64-byte boundary.
    start: usize,
    k: usize,
    width: usize,
}

impl PanelBuf {
    /// Packs W [k, n], W[p, j] at `w[p·rs + j·cs]`.
    pub(super) fn pack(w: &[f32], rs: usize, cs: usize, k: usize, n: usize, width: usize) -> Self {
        use rayon::prelude::*;
        let len = n.div_ceil(width) * k * width;
        // 15 floats spare, to start at a 64-byte boundary (Vec<f32> promises only 4 bytes).
        let mut buf = vec![0f32; len + 15];
        let start = (16 - buf.as_ptr() as usize % 64 / 4) % 16;
        let fill = |(j, panel): (usize, &mut [f32])| {
            let cols = (n - j * width).min(width);
            if cs == 1 {
                // W's rows are contiguous: a panel's row is a slice of one.
                for (p, row) in panel.chunks_mut(width).enumerate() {
                    row[..cols].copy_from_slice(&w[p * rs + j * width..][..cols]);
                }
            } else {
                // Any other layout (the unembedding's columns are contiguous): a column at a time.
                for l in 0..cols {
                    let column = (j * width + l) * cs;
                    for (p, row) in panel.chunks_mut(width).enumerate() {
                        row[l] = w[column + p * rs];
                    }
                }
            }
        };
        // A weight's panels on rayon's threads; the attention's (a head's keys, already one
        // task per head) on the caller's.
        let panels = &mut buf[start..start + len];
        match len >= 1 << 20 {
            true => panels.par_chunks_mut(k * width).enumerate().for_each(fill),
            false => panels.chunks_mut(k * width).enumerate().for_each(fill),
        }
        Self {
            buf,
            start,
            k,
            width,
        }
    }

    pub(super) fn panels(&self) -> Panels<'_> {
        Panels {
            data: &self.buf[self.start..],
            stride: self.k * self.width,
            width: self.width,
        }
    }
}

/// Panels from a [`PanelBuf`], panel j at `data[j·stride..]`: a product may use the first k
/// rows of each (`stride` = the packed k · `width`) and the first panels only.
#[derive(Clone, Copy)]
pub(super) struct Panels<'a> {
    pub data: &'a [f32],
    pub stride: usize,
    pub width: usize,
}

/// Runs of panels a thread has in a parallel product: enough for a free thread to take over
/// the work of one that another process slows, few enough that each run is many tiles.
const RUNS_PER_THREAD: usize = 8;

/// out [m, n] (rows `ldo` apart) = x [m, k] @ W, W as `panels`, with the best kernel this CPU
/// runs (the caller has checked that there is one), the panels packed for its width. Every
/// value of `out` in those m × n is written (whatever it held: it may be uninitialised). With
/// `parallel`, runs of panels are shared out among rayon's threads; a thread runs every strip
/// of x (a tile's rows) against each panel of a run, so a panel is read from memory once and
/// then from cache.
#[allow(clippy::too_many_arguments)]
pub(super) fn product(
    x: &[f32],
    m: usize,
    k: usize,
    panels: Panels,
    n: usize,
    out: &mut [MaybeUninit<f32>],
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
    out: &mut [MaybeUninit<f32>],
    ldo: usize,
    parallel: bool,
) {
    use rayon::prelude::*;
    if m == 0 || n == 0 {
        return;
    }
    assert!(isa.runs(), "{isa:?} does not run on this CPU");
    let width = isa.width();
    assert_eq!(panels.width, width, "panels packed for another kernel");
    let n_panels = n.div_ceil(width);
    assert!(
        x.len() >= m * k
            && ldo >= n
            && out.len() >= (m - 1) * ldo + n
            && k * width <= panels.stride
            && panels.data.len() >= (n_panels - 1) * panels.stride + k * width,
        "packed product: operands smaller than their shapes"
    );
    let block_rows = isa.block_rows(k);
    if m > block_rows {
        // Each block's sums are the ones a single pass makes: a row's tile walks k alike.
        for from in (0..m).step_by(block_rows) {
            let rows = block_rows.min(m - from);
            let (x, out) = (&x[from * k..], &mut out[from * ldo..]);
            product_on(isa, x, rows, k, panels, n, out, ldo, parallel);
        }
        return;
    }
    let mr = isa.rows();
    let strips = m.div_ceil(mr);
    // Each strip is k × mr values apart; a value (row r, column p) sits at r·rs + p·cs in it.
    let packed_x: Box<[f32]>;
    let (x, rs, cs) = if isa.packs_x(k) {
        // Written in order, each strip's rows read side by side: twice as fast as writing
        // row after row into the strips (2.3 against 1.1 ms for 512 × 3072 on one thread).
        // The strips on rayon's threads when the product is, and not zeroed first (in the
        // calling thread, as the rest waited, this was 2 % of SmolLM2's forward at 512 tokens).
        let mut strip_major = Box::<[f32]>::new_uninit_slice(strips * k * mr);
        let fill = |(s, strip): (usize, &mut [MaybeUninit<f32>])| {
            let rows = (m - s * mr).min(mr);
            let x_rows = &x[s * mr * k..(s * mr + rows) * k];
            for (p, column) in strip.chunks_exact_mut(mr).enumerate() {
                let (values, padding) = column.split_at_mut(rows);
                for (r, v) in values.iter_mut().enumerate() {
                    v.write(x_rows[r * k + p]);
                }
                for v in padding {
                    v.write(0.0);
                }
            }
        };
        match parallel && strips > 1 {
            true => strip_major
                .par_chunks_mut(k * mr)
                .enumerate()
                .for_each(fill),
            false => strip_major.chunks_mut(k * mr).enumerate().for_each(fill),
        }
        // SAFETY: every strip wrote each of its k × mr values.
        packed_x = unsafe { strip_major.assume_init() };
        (&packed_x[..], 1, mr)
    } else {
        (x, k, 1)
    };
    // Runs of panels, several a thread, each taken by whichever thread is free: on a shared
    // host a core can lose part of its time to other work, and an even split waits for it.
    let runs = match parallel && m * n * k >= 1 << 20 {
        true => (RUNS_PER_THREAD * rayon::current_num_threads()).min(n_panels),
        false => 1, // or too small to pay for waking a thread
    };
    let per_run = n_panels.div_ceil(runs);
    let out = OutPtr(out.as_mut_ptr().cast::<f32>());
    // k in blocks (one where the kernel walks the whole of it; with k = 0 one block of none,
    // which writes zeros).
    let block = isa.depth().min(k).max(1);
    // While the strips run against a panel, the next panel is fetched into L2, each strip a
    // share of its rows spread over its steps: a layer's weights come from memory, and the
    // first strip of each panel waited for them. All of it during the first strip asked for
    // more than memory gives (the forward at 128 tokens 1.12-1.15x faster than without
    // prefetching; spread, 1.07-1.10x faster again).
    let share = k.div_ceil(strips);
    let run = |r: usize| {
        for j in r * per_run..((r + 1) * per_run).min(n_panels) {
            let next = match j + 1 < n_panels {
                // SAFETY: panel j + 1 lies in `panels`, as asserted above.
                true => unsafe { panels.data.as_ptr().add((j + 1) * panels.stride) },
                false => std::ptr::null(),
            };
            // Each block of k is added to the sums of the blocks before it while this panel's
            // columns of out are still in cache.
            let cols = (n - j * width).min(width);
            for from in (0..k.max(1)).step_by(block) {
                let depth = block.min(k - from);
                for s in 0..strips {
                    let rows = (m - s * mr).min(mr);
                    // This strip's share of the next panel: rows `first` to `first + ahead`.
                    let first = (s * share).min(k);
                    let ahead = match next.is_null() {
                        true => 0,
                        false => share.min(k - first),
                    };
                    // SAFETY: the strip lies in `x` (its last row r < rows, column p < k), the
                    // block of the panel in `panels` (rows from + p < k, columns l < width),
                    // and the tile (rows × cols from row s·mr, column j·width, rows ldo apart)
                    // in `out`, as asserted above, and so does the share of the next panel
                    // (rows first + p < k of panel j + 1); runs write disjoint column ranges;
                    // this CPU runs `isa`.
                    unsafe {
                        tile(
                            isa,
                            rows,
                            depth,
                            x.as_ptr().add(s * k * mr + from * cs),
                            rs,
                            cs,
                            panels.data.as_ptr().add(j * panels.stride + from * width),
                            next.wrapping_add(first * width),
                            ahead,
                            out.get().add(s * mr * ldo + j * width),
                            ldo,
                            cols,
                            from > 0,
                        )
                    }
                }
            }
        }
    };
    match runs {
        1 => run(0),
        _ => (0..runs).into_par_iter().for_each(run),
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
    _: &mut [MaybeUninit<f32>],
    _: usize,
    _: bool,
) {
    unreachable!("no packed panels without the kernel")
}

/// `out`, initialised, as a product's destination, which the product overwrites.
#[cfg(test)]
fn dest(out: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and a product writes only floats into it, so
    // `out` stays initialised.
    #[allow(unsafe_code)]
    unsafe {
        &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>])
    }
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

/// One tile of `rows` (1 to the ISA's) × `cols` (1 to its width) outputs, written or, with `add`,
/// added to: the kernel for that many rows. `next_rows` rows of the next panel, from `next`,
/// are fetched into L2 alongside (AVX-512).
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
    next: *const f32,
    next_rows: usize,
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
            rows!(kernel_avx512(k, x, rs, cs, panel, next, next_rows, out, ldo, cols): 1 2 3 4 5 6 7 8 9 10 11 12 13 14)
        }
        Isa::Avx2 => rows!(kernel_avx2(k, x, rs, cs, panel, out, ldo, cols, add): 1 2 3 4 5 6),
    }
}

/// out[r, l] = Σ_p x[r·rs + p·cs] · panel[p·32 + l] for r < R, l < cols: R × 32 sums in
/// 2R registers, one pass over k, stored once; `next_rows` rows of 32 floats from `next`
/// fetched into L2 alongside, spread evenly over the k steps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn kernel_avx512<const R: usize>(
    k: usize,
    x: *const f32,
    rs: usize,
    cs: usize,
    panel: *const f32,
    next: *const f32,
    next_rows: usize,
    out: *mut f32,
    ldo: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    let gap = k.checked_div(next_rows).unwrap_or(0).max(1);
    let mut fetched = 0;
    for p in 0..k {
        if fetched < next_rows && p == fetched * gap {
            _mm_prefetch::<_MM_HINT_T1>(next.add(fetched * 32) as *const i8);
            _mm_prefetch::<_MM_HINT_T1>(next.add(fetched * 32 + 16) as *const i8);
            fetched += 1;
        }
        let w_lo = _mm512_loadu_ps(panel.add(p * 32));
        let w_hi = _mm512_loadu_ps(panel.add(p * 32 + 16));
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

/// The same for a 16-column panel (`panel[p·16 + l]`, `cols` ≤ 16) with AVX2 and FMA (with
/// `add`, added to out): 16 registers of 8 floats hold R × 16 sums and two of the panel's.
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
        let w_lo = _mm256_loadu_ps(panel.add(p * 16));
        let w_hi = _mm256_loadu_ps(panel.add(p * 16 + 8));
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
    /// of a tile's or of a block's, columns not a multiple of 32 or 16, short and long
    /// (strip-packed) rows, a
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
                width: isa.width(),
            };
            product_on(isa, &[], 3, 0, panels, 5, dest(&mut out), 5, false);
            assert_eq!(out, vec![0f32; 15], "{isa:?}: an empty sum is zero");
        }
        for (m, k, n) in [
            (1, 1, 1),
            (3, 7, 33),
            (14, 64, 32),
            (15, 100, 17),
            (29, 1024, 70),
            (530, 96, 70), // AVX-512 in blocks of 252 rows, the last of 26
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
                let stored_values = stored.flatten_all()?.to_vec1::<f32>()?;
                for isa in Isa::all() {
                    let panels = PanelBuf::pack(&stored_values, rs, cs, k, n, isa.width());
                    for parallel in [false, true] {
                        // NaN where the product left a value unwritten.
                        let mut out = vec![f32::NAN; m * n];
                        product_on(
                            isa,
                            &x_rows,
                            m,
                            k,
                            panels.panels(),
                            n,
                            dest(&mut out),
                            n,
                            parallel,
                        );
                        // The last row alone gives the same bits: blocks, strips and batch
                        // change which rows run together, never a row's sums.
                        let mut alone = vec![f32::NAN; n];
                        let last = &x_rows[(m - 1) * k..];
                        product_on(
                            isa,
                            last,
                            1,
                            k,
                            panels.panels(),
                            n,
                            dest(&mut alone),
                            n,
                            parallel,
                        );
                        assert_eq!(
                            alone,
                            out[(m - 1) * n..],
                            "{m}x{k}x{n} {isa:?}: the last row"
                        );
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
        let to_come = model.packed_bytes_to_come();
        assert_eq!(to_come > 0, Packed::available());
        // The first forward packs the panels and reads them, giving the bits every later one
        // gives.
        let first = model.forward(&tokens, &mut crate::Hooks::none())?;
        assert_eq!(model.packed_bytes_to_come(), 0);
        let packed = model.forward(&tokens, &mut crate::Hooks::none())?;
        let again = (&first - &packed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(again, 0.0, "the first forward differs from the second");
        assert_eq!(
            model.blocks[0].attn.packed[0]
                .as_ref()
                .is_some_and(|p| p.panels.get().is_some()),
            Packed::available()
        );
        model.drop_packed_weights();
        let general = model.forward(&tokens, &mut crate::Hooks::none())?;
        let err = (packed - general)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "{err}");
        Ok(())
    }

    /// Panels are made by the first product that reads them, and only products of few enough
    /// rows for this CPU's kernel read them.
    #[test]
    fn panels_are_packed_by_the_first_short_product() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (64, 40), &dev)?;
        let Some(packed) = Packed::new(&w)? else {
            return Ok(()); // neither AVX-512 nor AVX2: nothing is packed
        };
        let isa = Isa::detect().expect("packed weights need a kernel");
        assert!(packed.panels.get().is_none(), "packed before any product");
        let long = Tensor::randn(0f32, 1.0, (300, 64), &dev)?;
        assert!(packed.matmul(&long, &w)?.is_none() || 300 <= isa.rows_max());
        assert_eq!(packed.panels.get().is_some(), 300 <= isa.rows_max());
        let short = Tensor::randn(0f32, 1.0, (20, 64), &dev)?;
        let got = packed.matmul(&short, &w)?.expect("20 rows read the panels");
        assert!(packed.panels.get().is_some());
        let err = (got - short.matmul(&w)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(err < 1e-4, "{err}");
        Ok(())
    }

    #[test]
    fn a_replaced_weight_is_not_read_from_its_old_panels() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::ones((8, 40), DType::F32, &dev)?;
        let Some(packed) = Packed::new(&w)? else {
            return Ok(()); // neither AVX-512 nor AVX2: nothing is packed
        };
        let replaced = (w.clone() * 2.0)?;
        let x = Tensor::ones((2, 8), DType::F32, &dev)?;
        assert!(packed.matmul(&x, &w)?.is_some());
        assert!(packed.matmul(&x, &replaced)?.is_none());
        Ok(())
    }
}
