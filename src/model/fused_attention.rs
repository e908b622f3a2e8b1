//! Causal attention on the CPU as one task per head, when nothing reads the scores or the
//! pattern. Each head's keys (as Kᵀ) and values are packed into panels once; each block of
//! queries then runs q·Kᵀ over the keys it sees, the causal softmax, and pattern·V, with the
//! block's scores in cache. Heads run in parallel on rayon's threads, each product on one
//! thread: a batched matmul instead runs one small product per head after another, each split
//! across the threads.

use super::kernels::{applies, causal_softmax_row, wide};
use super::packed::{product, Isa, PanelBuf};
use crate::error::{Error, Result};
use candle_core::{CpuStorage, Device, Storage, Tensor};
use rayon::prelude::*;

/// z [batch, H, p, d_head] = softmax(q·kᵀ · scale + causal mask) · v, for q [batch, H, p,
/// d_head] and k, v [batch, H, offset + p, d_head] in any layout, `block` queries at a time;
/// `None` where the kernel does not apply (no AVX-512 or AVX2, not f32 on the CPU, autograd).
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    offset: usize,
    scale: f64,
    window: Option<usize>,
    block: usize,
) -> Result<Option<Tensor>> {
    let Some(isa) = Isa::detect() else {
        return Ok(None);
    };
    if ![q, k, v].into_iter().all(applies) {
        return Ok(None);
    }
    let (b, h, p, dh) = q.dims4()?;
    let n = offset + p;
    for t in [k, v] {
        if t.dims() != [b, h, n, dh] {
            return Err(Error::ShapeMismatch {
                what: "attention keys and values".into(),
                expected: vec![b, h, n, dh],
                got: t.dims().to_vec(),
            });
        }
    }
    let q = q.contiguous()?;
    let (q_storage, q_layout) = q.storage_and_layout();
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    let (
        Storage::Cpu(CpuStorage::F32(q_data)),
        Storage::Cpu(CpuStorage::F32(k_data)),
        Storage::Cpu(CpuStorage::F32(v_data)),
    ) = (&*q_storage, &*k_storage, &*v_storage)
    else {
        return Ok(None);
    };
    let q_data = &q_data[q_layout.start_offset()..];
    let (ks, vs) = (k_layout.stride(), v_layout.stride());
    let (window, scale) = (window.unwrap_or(usize::MAX), scale as f32);
    let block = block.max(1);
    let mut z = vec![0f32; b * h * p * dh];
    z.par_chunks_mut(p * dh).enumerate().for_each(|(bh, z)| {
        let (bi, hi) = (bh / h, bh % h);
        // This head's Kᵀ [d_head, n] and V [n, d_head] as panels.
        let k0 = k_layout.start_offset() + bi * ks[0] + hi * ks[1];
        let v0 = v_layout.start_offset() + bi * vs[0] + hi * vs[1];
        let kt = PanelBuf::pack(&k_data[k0..], ks[3], ks[2], dh, n, isa.width());
        let vp = PanelBuf::pack(&v_data[v0..], vs[2], vs[3], n, dh, isa.width());
        let mut scores = vec![0f32; block.min(p) * n];
        for start in (0..p).step_by(block) {
            let len = block.min(p - start);
            let keys = offset + start + len;
            let s = &mut scores[..len * keys]; // [len, keys]
            let q_block = &q_data[(bh * p + start) * dh..];
            product(q_block, len, dh, kt.panels(), keys, s, keys, false);
            wide(
                #[inline(always)]
                || {
                    for (r, row) in s.chunks_mut(keys).enumerate() {
                        causal_softmax_row(row, offset + start + r + 1, window, scale);
                    }
                },
            );
            product(
                s,
                len,
                keys,
                vp.panels(),
                dh,
                &mut z[start * dh..],
                dh,
                false,
            );
        }
    });
    drop((q_storage, k_storage, v_storage));
    Ok(Some(Tensor::from_vec(z, (b, h, p, dh), &Device::Cpu)?))
}
