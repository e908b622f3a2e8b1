//! The sparse products of SAE training, over plain slices on the CPU: each row's active
//! latents are selected, decoded and back-propagated without touching the others.
//! (candle's gather, index_add and broadcast products over [rows, k, d] cost ten times the
//! encoder's dense product; these loops cost a fraction of it.)

use candle_core::WithDType;
use rayon::prelude::*;
use std::ops::Range;

/// The values of a contiguous CPU tensor's `storage`, borrowed (`None` on other devices).
pub fn cpu_slice<'a, T: WithDType>(
    storage: &'a candle_core::Storage,
    layout: &candle_core::Layout,
) -> Option<&'a [T]> {
    match (storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(c), Some((a, b))) => Some(&c.as_slice::<T>().ok()?[a..b]),
        _ => None,
    }
}

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
    let rows = pre
        .par_chunks(n)
        .map(|row| {
            let values = row.iter().map(|v| v.to_f64()).enumerate();
            match allowed {
                None => row_top_k(values, k),
                Some(a) => row_top_k(values.filter(|&(c, _)| a[c]), k),
            }
        })
        .collect();
    Codes::from_rows(rows, pre, n)
}

/// The columns of the k largest of `values` ((column, value), columns ascending), ascending.
/// One pass that keeps the best k so far: a column enters only when it beats the smallest kept
/// (strictly, so that of equal values the earlier column stays), which after the first few
/// hundred columns is rare, so most cost one comparison.
fn row_top_k(values: impl Iterator<Item = (usize, f64)>, k: usize) -> Vec<u32> {
    let mut best: Vec<(f64, u32)> = Vec::with_capacity(k);
    // The kept entry that the next winner replaces: the smallest value, of those the latest.
    let (mut worst, mut floor) = (0, f64::NEG_INFINITY);
    let find_worst = |best: &[(f64, u32)]| {
        let w = (0..best.len())
            .min_by(|&i, &j| {
                best[i]
                    .0
                    .total_cmp(&best[j].0)
                    .then(best[j].1.cmp(&best[i].1))
            })
            .unwrap_or(0);
        (w, best[w].0)
    };
    for (c, v) in values {
        if best.len() < k {
            best.push((v, c as u32));
            if best.len() == k {
                (worst, floor) = find_worst(&best);
            }
        } else if k > 0 && v > floor {
            best[worst] = (v, c as u32);
            (worst, floor) = find_worst(&best);
        }
    }
    let mut kept: Vec<u32> = best.into_iter().map(|(_, c)| c).collect();
    kept.sort_unstable();
    kept
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

/// a · b, in eight running sums: one sum is a chain of dependent additions that cannot use
/// the vector units; eight independent ones can.
fn dot<T: WithDType>(a: &[T], b: &[T]) -> T {
    let zero = T::from_f64(0.0);
    let mut acc = [zero; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: T = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .fold(zero, |s, (&x, &y)| s + x * y);
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().fold(tail, |s, &v| s + v)
}

/// For each entry e of row b: rows[idx[e]] · g[b], from `rows` [n, d] and `g` [rows, d].
pub fn dots<T: WithDType>(codes: &Codes<T>, rows: &[T], g: &[T], d: usize) -> Vec<T> {
    let per_row: Vec<Vec<T>> = g
        .par_chunks(d)
        .enumerate()
        .map(|(b, g)| {
            codes.idx[codes.row(b)]
                .iter()
                .map(|&f| dot(&rows[f as usize * d..(f as usize + 1) * d], g))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The k largest by sorting each row: value descending, then column ascending.
    fn reference(pre: &[f32], n: usize, k: usize, allowed: Option<&[bool]>) -> Vec<Vec<u32>> {
        pre.chunks(n)
            .map(|row| {
                let mut c: Vec<u32> = (0..n as u32)
                    .filter(|&c| allowed.is_none_or(|a| a[c as usize]))
                    .collect();
                c.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
                c.truncate(k);
                c.sort_unstable();
                c
            })
            .collect()
    }

    #[test]
    fn top_k_keeps_the_largest_with_ties_to_the_lower_column() {
        // Few distinct values, so that most rows have ties at the cut.
        let (rows, n) = (64, 40);
        let pre: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 7919) % 13) as f32 - 6.0)
            .collect();
        let allowed: Vec<bool> = (0..n).map(|c| c % 3 != 0).collect();
        for k in [0, 1, 5, 13, 40, 50] {
            for mask in [None, Some(&allowed[..])] {
                let codes = top_k(&pre, n, k, mask);
                let want = reference(&pre, n, k, mask);
                for (b, w) in want.iter().enumerate() {
                    let e = codes.row(b);
                    assert_eq!(&codes.idx[e.clone()], &w[..], "row {b}, k {k}");
                    for (&i, &v) in codes.idx[e.clone()].iter().zip(&codes.val[e]) {
                        assert_eq!(v, pre[b * n + i as usize]);
                    }
                }
            }
        }
    }

    #[test]
    fn dot_equals_the_plain_sum() {
        let a: Vec<f64> = (0..37).map(|i| (i as f64).sin()).collect();
        let b: Vec<f64> = (0..37).map(|i| (i as f64 * 0.3).cos()).collect();
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-12);
    }
}
