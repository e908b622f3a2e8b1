//! The sparse products of TopK training, over plain slices on the CPU: each row's k active
//! latents are selected, decoded and back-propagated without touching the other d_sae − k.
//! (candle's gather, index_add and broadcast products over [rows, k, d] cost ten times the
//! encoder's dense product; these loops cost a fraction of it.)

use candle_core::WithDType;
use rayon::prelude::*;

/// A batch's codes: row b's latents are `idx[b·k..(b+1)·k]`, with values `val[..]`.
pub struct Codes<T> {
    pub k: usize,
    pub idx: Vec<u32>,
    pub val: Vec<T>,
}

/// The k largest entries of each row of `pre` [rows, n] among the columns `allowed` marks (all
/// when `None`), ties to the lower index, with their values as they are.
pub fn top_k<T: WithDType>(pre: &[T], n: usize, k: usize, allowed: Option<&[bool]>) -> Codes<T> {
    let columns: Vec<u32> = (0..n as u32)
        .filter(|&c| allowed.is_none_or(|a| a[c as usize]))
        .collect();
    let k = k.min(columns.len());
    let idx: Vec<u32> = pre
        .par_chunks(n)
        .flat_map_iter(|row| {
            let mut c = columns.clone();
            let order = |a: &u32, b: &u32| {
                row[*b as usize]
                    .to_f64()
                    .total_cmp(&row[*a as usize].to_f64())
                    .then(a.cmp(b))
            };
            if k < c.len() {
                c.select_nth_unstable_by(k - 1, order);
                c.truncate(k);
            }
            c.sort_unstable();
            c
        })
        .collect();
    let val = idx
        .chunks(k.max(1))
        .zip(pre.chunks(n))
        .flat_map(|(ids, row)| ids.iter().map(|&i| row[i as usize]))
        .collect();
    Codes { k, idx, val }
}

/// Σ_j val[b, j]·rows[idx[b, j]] for each row b: [rows, d], from `rows` [n, d].
pub fn decode<T: WithDType>(codes: &Codes<T>, rows: &[T], d: usize) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); codes.idx.len() / codes.k.max(1) * d];
    out.par_chunks_mut(d).enumerate().for_each(|(b, o)| {
        let entries = b * codes.k..(b + 1) * codes.k;
        for (&f, &v) in codes.idx[entries.clone()].iter().zip(&codes.val[entries]) {
            let r = &rows[f as usize * d..(f as usize + 1) * d];
            for (o, &w) in o.iter_mut().zip(r) {
                *o += v * w;
            }
        }
    });
    out
}

/// For each entry e = (b, j): rows[idx[e]] · g[b], from `rows` [n, d] and `g` [rows, d].
pub fn dots<T: WithDType>(codes: &Codes<T>, rows: &[T], g: &[T], d: usize) -> Vec<T> {
    let k = codes.k;
    let mut out = vec![T::from_f64(0.0); codes.idx.len()];
    out.par_chunks_mut(k.max(1))
        .zip(g.par_chunks(d))
        .enumerate()
        .for_each(|(b, (o, g))| {
            for (o, &f) in o.iter_mut().zip(&codes.idx[b * k..(b + 1) * k]) {
                let r = &rows[f as usize * d..(f as usize + 1) * d];
                let mut s = T::from_f64(0.0);
                for (&w, &x) in r.iter().zip(g) {
                    s += w * x;
                }
                *o = s;
            }
        });
    out
}

/// The entries of each latent: `entries[offsets[f]..offsets[f + 1]]` are the e = b·k + j
/// with idx[e] = f.
pub struct ByLatent {
    offsets: Vec<usize>,
    entries: Vec<u32>,
}

/// Groups the entries of `idx` by latent (a counting sort over `n` latents).
pub fn by_latent(idx: &[u32], n: usize) -> ByLatent {
    let mut offsets = vec![0usize; n + 1];
    for &f in idx {
        offsets[f as usize + 1] += 1;
    }
    for f in 0..n {
        offsets[f + 1] += offsets[f];
    }
    let mut next = offsets.clone();
    let mut entries = vec![0u32; idx.len()];
    for (e, &f) in idx.iter().enumerate() {
        entries[next[f as usize]] = e as u32;
        next[f as usize] += 1;
    }
    ByLatent { offsets, entries }
}

/// out[f] += Σ over f's entries e of coef[e]·vecs[e / k], for every latent f: `out` [n, d],
/// `vecs` [rows, d]. Each latent's row is written by one thread.
pub fn scatter<T: WithDType>(
    groups: &ByLatent,
    k: usize,
    coef: &[T],
    vecs: &[T],
    d: usize,
    out: &mut [T],
) {
    out.par_chunks_mut(d).enumerate().for_each(|(f, o)| {
        for &e in &groups.entries[groups.offsets[f]..groups.offsets[f + 1]] {
            let (c, v) = (
                coef[e as usize],
                &vecs[e as usize / k * d..(e as usize / k + 1) * d],
            );
            for (o, &x) in o.iter_mut().zip(v) {
                *o += c * x;
            }
        }
    });
}

/// Σ over f's entries e of coef[e], for every latent f: [n].
pub fn sums<T: WithDType>(groups: &ByLatent, coef: &[T]) -> Vec<T> {
    (0..groups.offsets.len() - 1)
        .map(|f| {
            let mut s = T::from_f64(0.0);
            for &e in &groups.entries[groups.offsets[f]..groups.offsets[f + 1]] {
                s += coef[e as usize];
            }
            s
        })
        .collect()
}
