//! The sparse products of SAE training, over plain slices on the CPU: each row's active
//! latents are selected, decoded and back-propagated without touching the others.
//! (candle's gather, index_add and broadcast products over [rows, k, d] cost ten times the
//! encoder's dense product; these loops cost a fraction of it.)

use candle_core::WithDType;
use rayon::prelude::*;
use std::ops::Range;

/// A batch's codes, row by row (compressed sparse rows): row b's entries are
/// `offsets[b]..offsets[b + 1]`, each a latent `idx[e]` with the value `val[e]`.
pub struct Codes<T> {
    pub offsets: Vec<usize>,
    pub idx: Vec<u32>,
    pub val: Vec<T>,
}

impl<T: WithDType> Codes<T> {
    pub fn rows(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn row(&self, b: usize) -> Range<usize> {
        self.offsets[b]..self.offsets[b + 1]
    }

    /// Codes from each row's latents (ascending), with their values read from `pre` [rows, n].
    fn from_rows(rows: Vec<Vec<u32>>, pre: &[T], n: usize) -> Self {
        let mut offsets = vec![0];
        let mut end = 0;
        for r in &rows {
            end += r.len();
            offsets.push(end);
        }
        let val = rows
            .iter()
            .zip(pre.chunks(n))
            .flat_map(|(ids, row)| ids.iter().map(|&i| row[i as usize]))
            .collect();
        let idx = rows.into_iter().flatten().collect();
        Self { offsets, idx, val }
    }
}

/// The k largest entries of each row of `pre` [rows, n] among the columns `allowed` marks (all
/// when `None`), ties to the lower index, with their values as they are.
pub fn top_k<T: WithDType>(pre: &[T], n: usize, k: usize, allowed: Option<&[bool]>) -> Codes<T> {
    let columns: Vec<u32> = (0..n as u32)
        .filter(|&c| allowed.is_none_or(|a| a[c as usize]))
        .collect();
    let k = k.min(columns.len());
    let rows = pre
        .par_chunks(n)
        .map(|row| {
            let mut c = columns.clone();
            let order = |a: &u32, b: &u32| {
                row[*b as usize]
                    .to_f64()
                    .total_cmp(&row[*a as usize].to_f64())
                    .then(a.cmp(b))
            };
            if k == 0 {
                c.clear();
            } else if k < c.len() {
                c.select_nth_unstable_by(k - 1, order);
                c.truncate(k);
            }
            c.sort_unstable();
            c
        })
        .collect();
    Codes::from_rows(rows, pre, n)
}

/// The entries of each row of `pre` [rows, n] that `keep(latent, value)` accepts.
pub fn select<T: WithDType>(
    pre: &[T],
    n: usize,
    keep: impl Fn(usize, T) -> bool + Sync,
) -> Codes<T> {
    let rows = pre
        .par_chunks(n)
        .map(|row| {
            (0..n)
                .filter(|&f| keep(f, row[f]))
                .map(|f| f as u32)
                .collect()
        })
        .collect();
    Codes::from_rows(rows, pre, n)
}

/// The `total` largest positive entries of the whole batch `pre` [rows, n] (BatchTopK's
/// selection, Bussmann et al.); entries tied with the smallest kept one are all kept.
pub fn batch_top_k<T: WithDType>(pre: &[T], n: usize, total: usize) -> Codes<T> {
    let mut positive: Vec<f64> = pre
        .iter()
        .map(|v| v.to_f64())
        .filter(|&v| v > 0.0)
        .collect();
    let cut = match total.min(positive.len()) {
        0 => f64::INFINITY,
        t => {
            *positive
                .select_nth_unstable_by(t - 1, |a, b| b.total_cmp(a))
                .1
        }
    };
    select(pre, n, |_, v| v.to_f64() >= cut)
}

/// Σ_e val[e]·rows[idx[e]] over each row's entries: [rows, d], from `rows` [n, d].
pub fn decode<T: WithDType>(codes: &Codes<T>, rows: &[T], d: usize) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); codes.rows() * d];
    out.par_chunks_mut(d).enumerate().for_each(|(b, o)| {
        let entries = codes.row(b);
        for (&f, &v) in codes.idx[entries.clone()].iter().zip(&codes.val[entries]) {
            let r = &rows[f as usize * d..(f as usize + 1) * d];
            for (o, &w) in o.iter_mut().zip(r) {
                *o += v * w;
            }
        }
    });
    out
}

/// For each entry e of row b: rows[idx[e]] · g[b], from `rows` [n, d] and `g` [rows, d].
pub fn dots<T: WithDType>(codes: &Codes<T>, rows: &[T], g: &[T], d: usize) -> Vec<T> {
    let per_row: Vec<Vec<T>> = g
        .par_chunks(d)
        .enumerate()
        .map(|(b, g)| {
            codes.idx[codes.row(b)]
                .iter()
                .map(|&f| {
                    let r = &rows[f as usize * d..(f as usize + 1) * d];
                    let mut s = T::from_f64(0.0);
                    for (&w, &x) in r.iter().zip(g) {
                        s += w * x;
                    }
                    s
                })
                .collect()
        })
        .collect();
    per_row.into_iter().flatten().collect()
}

/// The entries of each latent: `entries[offsets[f]..offsets[f + 1]]` are the e with
/// idx[e] = f, and `row[e]` the row each entry is in.
pub struct ByLatent {
    offsets: Vec<usize>,
    entries: Vec<u32>,
    row: Vec<u32>,
}

/// Groups the entries of `codes` by latent (a counting sort over `n` latents).
pub fn by_latent<T: WithDType>(codes: &Codes<T>, n: usize) -> ByLatent {
    let mut offsets = vec![0usize; n + 1];
    for &f in &codes.idx {
        offsets[f as usize + 1] += 1;
    }
    for f in 0..n {
        offsets[f + 1] += offsets[f];
    }
    let mut next = offsets.clone();
    let mut entries = vec![0u32; codes.idx.len()];
    for (e, &f) in codes.idx.iter().enumerate() {
        entries[next[f as usize]] = e as u32;
        next[f as usize] += 1;
    }
    let mut row = vec![0u32; codes.idx.len()];
    for b in 0..codes.rows() {
        row[codes.row(b)].fill(b as u32);
    }
    ByLatent {
        offsets,
        entries,
        row,
    }
}

/// out[f] += Σ over f's entries e of coef[e]·vecs[row of e], for every latent f: `out` [n, d],
/// `vecs` [rows, d]. Each latent's row is written by one thread.
pub fn scatter<T: WithDType>(groups: &ByLatent, coef: &[T], vecs: &[T], d: usize, out: &mut [T]) {
    out.par_chunks_mut(d).enumerate().for_each(|(f, o)| {
        for &e in &groups.entries[groups.offsets[f]..groups.offsets[f + 1]] {
            let b = groups.row[e as usize] as usize;
            let (c, v) = (coef[e as usize], &vecs[b * d..(b + 1) * d]);
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
