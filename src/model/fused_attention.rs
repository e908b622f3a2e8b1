//! Causal attention on the CPU in tasks of one head and one block of queries, when nothing
//! reads the scores or the pattern. Each key/value head's keys (as Kᵀ) and values are packed
//! into panels once, for all the query heads that share it; each task then runs q·Kᵀ over the
//! keys its queries see, the causal softmax, and pattern·V, with its scores in cache. The tasks
//! run in parallel on rayon's threads, each product on one thread: a batched matmul instead
//! runs one small product per head after another, each split across the threads. Tasks of a
//! head and a block, not of a head, so that the threads share the work evenly whatever the
//! number of heads (SmolLM2's 9 on 2 threads, GPT-2's 12 on 8).

use super::kernels::{applies, causal_softmax_row, wide};
use super::packed::{product, Isa, PanelBuf};
use crate::error::{Error, Result};
use candle_core::{CpuStorage, Device, Storage, Tensor};
use rayon::prelude::*;

/// z [batch, p, H, d_head] (the layout W_O reads) = softmax(q·kᵀ · scale + causal mask) · v,
/// for q [batch, H, p, d_head] and k, v [batch, H_kv, offset + p, d_head] (query head i reads
/// key/value head i / (H / H_kv)), each in any layout, `block` queries a task; `None` where the
/// kernel does not apply (no AVX-512 or AVX2, not f32 on the CPU, autograd).
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
    let (n, h_kv) = (offset + p, k.dim(1)?);
    for t in [k, v] {
        if t.dims() != [b, h_kv, n, dh] || h_kv == 0 || h % h_kv != 0 {
            return Err(Error::ShapeMismatch {
                what: format!("attention keys and values (for {h} query heads)"),
                expected: vec![b, h_kv, n, dh],
                got: t.dims().to_vec(),
            });
        }
    }
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
    let (qs, ks, vs) = (q_layout.stride(), k_layout.stride(), v_layout.stride());
    let (window, scale, group) = (window.unwrap_or(usize::MAX), scale as f32, h / h_kv);
    let block = block.max(1);
    // Each key/value head's Kᵀ [d_head, n] and V [n, d_head] as panels.
    let panels: Vec<(PanelBuf, PanelBuf)> = (0..b * h_kv)
        .into_par_iter()
        .map(|bk| {
            let (bi, ki) = (bk / h_kv, bk % h_kv);
            let k0 = k_layout.start_offset() + bi * ks[0] + ki * ks[1];
            let v0 = v_layout.start_offset() + bi * vs[0] + ki * vs[1];
            (
                PanelBuf::pack(&k_data[k0..], ks[3], ks[2], dh, n, isa.width()),
                PanelBuf::pack(&v_data[v0..], vs[2], vs[3], n, dh, isa.width()),
            )
        })
        .collect();
    // z by head [batch, H, p, d_head]; a task writes its block's rows, and nothing else does.
    let mut z = Box::<[f32]>::new_uninit_slice(b * h * p * dh);
    let tasks: Vec<_> = z
        .chunks_mut(p * dh)
        .enumerate()
        .flat_map(|(bh, head)| {
            let blocks = head.chunks_mut(block * dh).enumerate();
            blocks.map(move |(i, rows)| (bh, i * block, rows))
        })
        .collect();
    tasks.into_par_iter().for_each(|(bh, start, z_block)| {
        let (bi, hi) = (bh / h, bh % h);
        let (kt, vp) = &panels[bi * h_kv + hi / group];
        let len = z_block.len() / dh;
        let keys = offset + start + len;
        // The block's queries [len, d_head], row after row.
        let q0 = q_layout.start_offset() + bi * qs[0] + hi * qs[1] + start * qs[2];
        let mut q_block = Vec::with_capacity(len * dh);
        for r in 0..len {
            let row = q0 + r * qs[2];
            match qs[3] {
                1 => q_block.extend_from_slice(&q_data[row..row + dh]),
                cs => q_block.extend((0..dh).map(|c| q_data[row + c * cs])),
            }
        }
        let mut s = Box::<[f32]>::new_uninit_slice(len * keys); // [len, keys]
        product(&q_block, len, dh, kt.panels(), keys, &mut s, keys, false);
        // SAFETY: the product wrote all len × keys scores.
        #[allow(unsafe_code)]
        let mut s = unsafe { s.assume_init() };
        wide(
            #[inline(always)]
            || {
                for (r, row) in s.chunks_mut(keys).enumerate() {
                    causal_softmax_row(row, offset + start + r + 1, window, scale);
                }
            },
        );
        product(&s, len, keys, vp.panels(), dh, z_block, dh, false);
    });
    drop((q_storage, k_storage, v_storage));
    // SAFETY: the tasks wrote every block of every head.
    #[allow(unsafe_code)]
    let z = unsafe { z.assume_init() };
    // [batch, H, p, d_head] -> [batch, p, H, d_head], a position's heads side by side.
    let mut out = Box::<[f32]>::new_uninit_slice(b * p * h * dh);
    out.par_chunks_mut(h * dh)
        .with_min_len(16)
        .enumerate()
        .for_each(|(bp, row)| {
            let (bi, pi) = (bp / p, bp % p);
            for (hi, head) in row.chunks_mut(dh).enumerate() {
                let z = &z[((bi * h + hi) * p + pi) * dh..][..dh];
                for (o, &z) in head.iter_mut().zip(z) {
                    o.write(z);
                }
            }
        });
    // SAFETY: every position wrote all its heads.
    #[allow(unsafe_code)]
    let out = unsafe { out.assume_init() }.into_vec();
    Ok(Some(Tensor::from_vec(out, (b, p, h, dh), &Device::Cpu)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel against softmax(q·kᵀ · scale + mask) · v from candle's operations: several
    /// blocks of queries (the last one short), query heads sharing key/value heads, a cached
    /// prefix, a sliding window, a batch of 2, and q, k, v read in place from views of one
    /// wider tensor, as the forward passes them.
    #[test]
    fn equals_the_composed_attention() -> Result<()> {
        if Isa::detect().is_none() {
            return Ok(()); // the forward takes the composed path
        }
        let dev = Device::Cpu;
        let (b, h, h_kv, p, offset, dh, scale) = (2, 6, 2, 37, 5, 16, 0.25);
        let n = offset + p;
        // [batch, pos, H + 2·H_kv, d_head], as the product for all three gives them.
        let qkv = Tensor::randn(0f32, 1.0, (b, n, h + 2 * h_kv, dh), &dev)?;
        let q = qkv.narrow(1, offset, p)?.narrow(2, 0, h)?.transpose(1, 2)?;
        let k = qkv.narrow(2, h, h_kv)?.transpose(1, 2)?;
        let v = qkv.narrow(2, h + h_kv, h_kv)?.transpose(1, 2)?;
        // [batch, H_kv, n, d_head] -> [batch, H, n, d_head]
        let repeat = |t: &Tensor| -> Result<Tensor> {
            let t = t.contiguous()?.unsqueeze(2)?;
            Ok(t.expand((b, h_kv, h / h_kv, n, dh))?
                .reshape((b, h, n, dh))?)
        };
        let (k_all, v_all) = (repeat(&k)?, repeat(&v)?);
        let scores = (q.contiguous()?.matmul(&k_all.t()?.contiguous()?)? * scale)?;
        for window in [None, Some(9)] {
            let got = attend(&q, &k, &v, offset, scale, window, 8)?.expect("the kernel applies");
            // Query i, at position offset + i, sees keys j ≤ offset + i (within the window).
            let mask: Vec<f32> = (0..p)
                .flat_map(|i| (0..n).map(move |j| (offset + i, j)))
                .map(
                    |(at, j)| match j > at || window.is_some_and(|w| at - j >= w) {
                        true => f32::NEG_INFINITY,
                        false => 0.0,
                    },
                )
                .collect();
            let mask = Tensor::from_vec(mask, (p, n), &dev)?;
            let pattern = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
            let want = pattern.matmul(&v_all)?.transpose(1, 2)?; // [batch, p, H, d_head]
            let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-5, "window {window:?}: max |diff| {err}");
        }
        Ok(())
    }
}
