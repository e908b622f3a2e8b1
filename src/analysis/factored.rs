//! `FactoredMatrix`: a matrix kept as the product A·B of two thin factors (A [.., m, r],
//! B [.., r, n], r small), batched over leading dimensions such as [layers, heads], as in
//! TransformerLens and "A Mathematical Framework for Transformer Circuits". Per-head QK and OV
//! circuits over a whole vocabulary stay r-dimensional: products, norms, the SVD and the
//! eigenvalues all work on the factors, never on the m × n matrix.
//!
//! The small dense decompositions (QR, SVD, eigenvalues) run in f64 with nalgebra, a pure-Rust,
//! well-maintained crate that needs no system BLAS/LAPACK.

use crate::error::{Error, Result};
use crate::matmul::{broadcast_matmul, matmul};
use candle_core::{DType, Tensor, D};
use nalgebra::DMatrix;

/// A·B with A [.., m, r] and B [.., r, n] sharing their leading dimensions.
#[derive(Debug, Clone)]
pub struct FactoredMatrix {
    pub a: Tensor,
    pub b: Tensor,
}

/// The thin SVD of a [`FactoredMatrix`]: A·B = U · diag(S) · Vᵀ with U [.., m, r], S [.., r]
/// (descending) and V [.., n, r] (TransformerLens's `U, S, Vh` with `Vh` = V).
#[derive(Debug, Clone)]
pub struct Svd {
    pub u: Tensor,
    pub s: Tensor,
    pub v: Tensor,
}

impl FactoredMatrix {
    /// Checks that `a` [.., m, r] and `b` [.., r, n] fit together.
    pub fn new(a: Tensor, b: Tensor) -> Result<Self> {
        let (da, db) = (a.dims(), b.dims());
        let ok = da.len() >= 2
            && da.len() == db.len()
            && da[..da.len() - 2] == db[..db.len() - 2]
            && da[da.len() - 1] == db[db.len() - 2];
        if !ok {
            return Err(Error::ShapeMismatch {
                what: "the factors of a FactoredMatrix (A [.., m, r], B [.., r, n])".into(),
                expected: da.to_vec(),
                got: db.to_vec(),
            });
        }
        crate::finite::ensure_finite(&a, "the factor A of a FactoredMatrix")?;
        crate::finite::ensure_finite(&b, "the factor B of a FactoredMatrix")?;
        Ok(Self { a, b })
    }

    /// The leading (batch) dimensions.
    pub fn leading(&self) -> &[usize] {
        let d = self.a.dims();
        &d[..d.len() - 2]
    }

    /// (m, r, n): rows, inner dimension, columns.
    pub fn shape(&self) -> Result<(usize, usize, usize)> {
        Ok((
            self.a.dim(D::Minus2)?,
            self.a.dim(D::Minus1)?,
            self.b.dim(D::Minus1)?,
        ))
    }

    /// The full matrix A·B [.., m, n], materialised.
    pub fn ab(&self) -> Result<Tensor> {
        matmul(&self.a, &self.b)
    }

    /// B·A [.., r, r] (square matrices only): it has the same nonzero eigenvalues as A·B.
    pub fn ba(&self) -> Result<Tensor> {
        let (m, _, n) = self.shape()?;
        if m != n {
            return Err(Error::Invalid(format!(
                "B·A needs a square A·B, got {m} x {n}"
            )));
        }
        matmul(&self.b, &self.a)
    }

    /// (A·B)ᵀ = Bᵀ·Aᵀ.
    pub fn t(&self) -> Result<Self> {
        Self::new(
            self.b.transpose(D::Minus2, D::Minus1)?.contiguous()?,
            self.a.transpose(D::Minus2, D::Minus1)?.contiguous()?,
        )
    }

    /// (A·B)·M = A·(B·M) for M [.., n, k] (or [n, k], broadcast over the leading dims).
    pub fn matmul(&self, m: &Tensor) -> Result<Self> {
        Self::new(self.a.clone(), broadcast_matmul(&self.b, m)?)
    }

    /// M·(A·B) = (M·A)·B for M [.., k, m] (or [k, m]).
    pub fn rmatmul(&self, m: &Tensor) -> Result<Self> {
        Self::new(broadcast_matmul(m, &self.a)?, self.b.clone())
    }

    /// (A·B)·(C·D), keeping the smaller of the two inner dimensions. An unbatched (C·D)
    /// broadcasts over this one's leading dimensions.
    pub fn matmul_factored(&self, other: &Self) -> Result<Self> {
        let (r1, r2) = (self.a.dim(D::Minus1)?, other.a.dim(D::Minus1)?);
        if r1 <= r2 {
            // A · (B·C·D)
            return Self::new(self.a.clone(), broadcast_matmul(&self.b, &other.ab()?)?);
        }
        // (A·B·C) · D, with D broadcast to the product's leading dimensions.
        let abc = broadcast_matmul(&self.ab()?, &other.a)?;
        let lead = &abc.dims()[..abc.rank() - 2];
        let d_dims: Vec<usize> = lead
            .iter()
            .chain(&other.b.dims()[other.b.rank() - 2..])
            .copied()
            .collect();
        let d = other.b.broadcast_as(d_dims)?.contiguous()?;
        Self::new(abc, d)
    }

    /// (A·B)·v for v [.., n] (or [n]): [.., m].
    pub fn matvec(&self, v: &Tensor) -> Result<Tensor> {
        let bv = broadcast_matmul(&self.b, &v.unsqueeze(D::Minus1)?)?;
        Ok(matmul(&self.a, &bv)?.squeeze(D::Minus1)?)
    }

    /// ‖A·B‖_F [..], from r × r Gram matrices: trace((AᵀA)(BBᵀ)).
    pub fn frobenius_norm(&self) -> Result<Tensor> {
        let ata = matmul(&self.a.transpose(D::Minus2, D::Minus1)?, &self.a)?;
        let bbt = matmul(&self.b, &self.b.transpose(D::Minus2, D::Minus1)?)?;
        Ok((ata * bbt)?.sum((D::Minus2, D::Minus1))?.sqrt()?)
    }

    /// The thin SVD from the factors, in f64: each of A and Bᵀ is split as Q·R with Q
    /// orthonormal and R an r × r square root of its Gram matrix (AᵀA, BBᵀ); the SVD of the
    /// r × r core R_A·R_Bᵀ then gives A·B's ([`GramSvd`]). The tall products are batched matmuls
    /// over all leading indices; only r × r problems are decomposed one by one. Directions A or B
    /// do not span (rank deficiency) get singular value 0 and zero vectors.
    pub fn svd(&self) -> Result<Svd> {
        let (m, r, n) = self.shape()?;
        let a = self.a.to_dtype(DType::F64)?;
        let bt = t64(&self.b)?;
        let core = GramSvd::new(
            &matmul(&a.transpose(D::Minus2, D::Minus1)?, &a)?,
            &matmul(&bt.transpose(D::Minus2, D::Minus1)?, &bt)?,
        )?;
        let k = r.min(m).min(n);
        let dtype = self.a.dtype();
        Ok(Svd {
            u: matmul(&a, &core.left)?
                .narrow(D::Minus1, 0, k)?
                .to_dtype(dtype)?,
            s: core.s.narrow(D::Minus1, 0, k)?.to_dtype(dtype)?,
            v: matmul(&bt, &core.right)?
                .narrow(D::Minus1, 0, k)?
                .to_dtype(dtype)?,
        })
    }

    /// The eigenvalues of A·B that can be nonzero (those of the r × r B·A), as (real, imaginary)
    /// parts [.., r] each, ordered by descending magnitude. A·B must be square.
    pub fn eigenvalues(&self) -> Result<(Tensor, Tensor)> {
        let ba = self.ba()?;
        let r = ba.dim(D::Minus1)?;
        let flat = ba.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let (mut re, mut im) = (vec![], vec![]);
        for chunk in flat.chunks(r * r) {
            let mut ev: Vec<(f64, f64)> = DMatrix::from_row_slice(r, r, chunk)
                .complex_eigenvalues()
                .iter()
                .map(|c| (c.re, c.im))
                .collect();
            ev.sort_by(|x, y| x.0.hypot(x.1).total_cmp(&y.0.hypot(y.1)).reverse());
            re.extend(ev.iter().map(|e| e.0));
            im.extend(ev.iter().map(|e| e.1));
        }
        let dims: Vec<usize> = self.leading().iter().copied().chain([r]).collect();
        let make = |v: Vec<f64>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, dims.clone(), self.a.device())?.to_dtype(self.a.dtype())?)
        };
        Ok((make(re)?, make(im)?))
    }

    /// The same matrix with balanced factors U·√S and √S·Vᵀ (TransformerLens's `make_even`).
    pub fn make_even(&self) -> Result<Self> {
        let svd = self.svd()?;
        let root = svd.s.sqrt()?;
        let a = svd.u.broadcast_mul(&root.unsqueeze(D::Minus2)?)?;
        let b = svd
            .v
            .broadcast_mul(&root.unsqueeze(D::Minus2)?)?
            .transpose(D::Minus2, D::Minus1)?
            .contiguous()?;
        Self::new(a, b)
    }

    /// S·Vᵀ [.., r, n]: the factor left when U, which has orthonormal columns, is removed
    /// from the left (so that A·B = U · collapse_l).
    pub fn collapse_l(&self) -> Result<Tensor> {
        let svd = self.svd()?;
        Ok(svd
            .v
            .broadcast_mul(&svd.s.unsqueeze(D::Minus2)?)?
            .transpose(D::Minus2, D::Minus1)?
            .contiguous()?)
    }

    /// U·S [.., m, r]: the factor left when Vᵀ is removed from the right (A·B = collapse_r · Vᵀ).
    pub fn collapse_r(&self) -> Result<Tensor> {
        let svd = self.svd()?;
        Ok(svd.u.broadcast_mul(&svd.s.unsqueeze(D::Minus2)?)?)
    }

    /// The matrix at index `i` of the first leading dimension (`qk.get(layer)?.get(head)?`).
    pub fn get(&self, i: usize) -> Result<Self> {
        let n = self.leading().first().copied().ok_or_else(|| {
            Error::Invalid("this FactoredMatrix has no leading dimension to index".into())
        })?;
        if i >= n {
            return Err(Error::Invalid(format!("index {i} is out of range 0..{n}")));
        }
        Self::new(self.a.get(i)?, self.b.get(i)?)
    }
}

/// `x`ᵀ in f64 and contiguous.
fn t64(x: &Tensor) -> Result<Tensor> {
    Ok(x.to_dtype(DType::F64)?
        .transpose(D::Minus2, D::Minus1)?
        .contiguous()?)
}

/// The SVD of a product A·B known through its Gram matrices AᵀA and BBᵀ alone ([.., r, r]):
/// the singular values and the r × r maps that turn A and Bᵀ into the singular vectors,
/// U = A·left and V = Bᵀ·right. For L·(A·B)·R with a vocabulary-sized L or R, the Grams are
/// Aᵀ(LᵀL)A and B(RRᵀ)Bᵀ: a head's full circuit never needs its vocabulary-sized factors.
#[derive(Debug, Clone)]
pub struct GramSvd {
    /// [.., r], descending.
    pub s: Tensor,
    /// [.., r, r] each.
    pub left: Tensor,
    pub right: Tensor,
}

impl GramSvd {
    pub fn new(gram_a: &Tensor, gram_b: &Tensor) -> Result<Self> {
        crate::finite::ensure_finite(gram_a, "the Gram matrix A·Aᵀ of an SVD")?;
        crate::finite::ensure_finite(gram_b, "the Gram matrix B·Bᵀ of an SVD")?;
        let (pa, ra_inv, ra) = gram_roots(&gram_a.to_dtype(DType::F64)?)?;
        let (pb, rb_inv, rb) = gram_roots(&gram_b.to_dtype(DType::F64)?)?;
        let core = ra.matmul(&rb.transpose(D::Minus2, D::Minus1)?)?; // R_A·R_Bᵀ
        let r = core.dim(D::Minus1)?;
        let parts = batched(&core, |c| {
            let svd = c.svd(true, true);
            let (u, vt) = match (svd.u, svd.v_t) {
                (Some(u), Some(vt)) => (u, vt),
                _ => {
                    return Err(Error::Invalid(
                        "the SVD of the core did not converge".into(),
                    ))
                }
            };
            // nalgebra returns singular values unsorted: order them descending.
            let sv = &svd.singular_values;
            let mut order: Vec<usize> = (0..sv.len()).collect();
            order.sort_by(|&i, &j| sv[j].total_cmp(&sv[i]));
            let s = DMatrix::from_iterator(1, r, order.iter().map(|&i| sv[i]));
            Ok(vec![
                u.select_columns(&order),
                s,
                vt.transpose().select_columns(&order),
            ])
        })?;
        let [uc, s, vc]: [Tensor; 3] = parts
            .try_into()
            .map_err(|_| Error::Invalid("the core SVD has three parts".into()))?;
        // A = Q_A·R_A with Q_A = A·P·Λ^-½, so U = Q_A·U_c = A·(P·Λ^-½·U_c); likewise V.
        let s_dims: Vec<usize> = core.dims()[..core.rank() - 1].to_vec();
        Ok(Self {
            s: s.reshape(s_dims)?,
            left: pa.matmul(&ra_inv)?.matmul(&uc)?,
            right: pb.matmul(&rb_inv)?.matmul(&vc)?,
        })
    }
}

/// A square root R [.., r, r] of each Gram matrix G = xᵀx in `gram` [.., r, r] (RᵀR = G), so that
/// x = Q·R with Q orthonormal and ‖x·M‖_F = ‖R·M‖_F for any M. R is the transposed Cholesky
/// factor (a 64 × 64 Cholesky is some fifty times cheaper than the eigendecomposition); a
/// singular G, which has none, gets Λ^½·Pᵀ from G = P·Λ·Pᵀ. f64.
pub fn gram_root(gram: &Tensor) -> Result<Tensor> {
    let roots = batched(&gram.to_dtype(DType::F64)?, |g| {
        Ok(vec![match g.clone().cholesky() {
            Some(c) => c.l().transpose(),
            None => {
                let e = g.symmetric_eigen();
                let top = e.eigenvalues.iter().fold(0f64, |a, &b| a.max(b));
                let root = e
                    .eigenvalues
                    .map(|l| if l > 1e-13 * top { l.sqrt() } else { 0.0 });
                DMatrix::from_diagonal(&root) * e.eigenvectors.transpose()
            }
        }])
    })?;
    roots
        .into_iter()
        .next()
        .ok_or_else(|| Error::Invalid("gram root".into()))
}

/// For a Gram matrix G = xᵀx [.., r, r]: P and Λ^-½ of G = P·Λ·Pᵀ, and R = Λ^½·Pᵀ (so that
/// x = (x·P·Λ^-½)·R with orthonormal x·P·Λ^-½ where Λ > 0): three [.., r, r] f64 tensors.
/// Eigenvalues below 1e-13 of the largest count as 0 (their inverse root is set to 0).
fn gram_roots(gram: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let parts = batched(gram, |g| {
        let (p, inv, rt) = eigen_roots(g);
        Ok(vec![p, inv, rt])
    })?;
    let [p, inv, rt]: [Tensor; 3] = parts
        .try_into()
        .map_err(|_| Error::Invalid("gram roots".into()))?;
    Ok((p, inv, rt))
}

/// P, Λ^-½ and R = Λ^½·Pᵀ of one Gram matrix G = P·Λ·Pᵀ (see [`gram_roots`]).
fn eigen_roots(g: DMatrix<f64>) -> (DMatrix<f64>, DMatrix<f64>, DMatrix<f64>) {
    let e = g.symmetric_eigen();
    let top = e.eigenvalues.iter().fold(0f64, |a, &b| a.max(b));
    let root = |l: f64| if l > 1e-13 * top { l.sqrt() } else { 0.0 };
    let inv = |l: f64| if l > 1e-13 * top { 1.0 / l.sqrt() } else { 0.0 };
    let diag = |f: &dyn Fn(f64) -> f64| DMatrix::from_diagonal(&e.eigenvalues.map(f));
    let rt = diag(&root) * e.eigenvectors.transpose();
    (e.eigenvectors.clone(), diag(&inv), rt)
}

/// Applies `f` to every trailing r × c matrix of `x` [.., r, c] (f64) and stacks each of the
/// matrices it returns back over the leading dimensions.
fn batched(
    x: &Tensor,
    f: impl Fn(DMatrix<f64>) -> Result<Vec<DMatrix<f64>>>,
) -> Result<Vec<Tensor>> {
    let dims = x.dims().to_vec();
    let (rows, cols) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let lead = &dims[..dims.len() - 2];
    let flat = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let mut outs: Vec<(Vec<f64>, (usize, usize))> = vec![];
    for chunk in flat.chunks(rows * cols) {
        let results = f(DMatrix::from_row_slice(rows, cols, chunk))?;
        if outs.is_empty() {
            outs = results.iter().map(|m| (vec![], m.shape())).collect();
        }
        for (out, m) in outs.iter_mut().zip(results) {
            // nalgebra is column-major: its transpose's storage is the row-major order.
            out.0.extend(m.transpose().iter().copied());
        }
    }
    outs.into_iter()
        .map(|(v, (r, c))| {
            let shape: Vec<usize> = lead.iter().copied().chain([r, c]).collect();
            Ok(Tensor::from_vec(v, shape, x.device())?)
        })
        .collect()
}

/// A random f64 tensor of `shape` from `seed` (for property tests).
#[cfg(test)]
fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Tall, wide, square, rank-deficient and batched factorisations.
    fn cases() -> Vec<FactoredMatrix> {
        let fm = |a, b| FactoredMatrix::new(a, b).unwrap();
        let deficient = {
            let a = randn(&[12, 2], 5);
            // Four columns spanning only two directions.
            Tensor::cat(&[&a, &(&a * 2.0).unwrap()], 1).unwrap()
        };
        vec![
            fm(randn(&[20, 3], 1), randn(&[3, 9], 2)),
            fm(randn(&[6, 4], 3), randn(&[4, 30], 4)),
            fm(randn(&[10, 3], 6), randn(&[3, 10], 7)),
            fm(deficient, randn(&[4, 12], 8)),
            fm(randn(&[2, 3, 8, 4], 9), randn(&[2, 3, 4, 8], 10)),
        ]
    }

    #[test]
    fn gram_root_squares_to_the_gram_full_rank_or_not() {
        for f in cases() {
            // A's Gram: full rank (the Cholesky root) in most cases, singular (the
            // eigendecomposition's root) for the rank-deficient one.
            let a = &f.a;
            let g = a
                .transpose(D::Minus2, D::Minus1)
                .unwrap()
                .matmul(a)
                .unwrap();
            let r = gram_root(&g).unwrap();
            let rtr = r
                .transpose(D::Minus2, D::Minus1)
                .unwrap()
                .matmul(&r)
                .unwrap();
            assert!(max_diff(&rtr, &g) < 1e-10);
        }
    }

    #[test]
    fn svd_reconstructs_and_matches_the_materialised_matrix() {
        for (i, f) in cases().into_iter().enumerate() {
            let svd = f.svd().unwrap();
            let us = svd
                .u
                .broadcast_mul(&svd.s.unsqueeze(D::Minus2).unwrap())
                .unwrap();
            let rebuilt = us
                .matmul(&svd.v.transpose(D::Minus2, D::Minus1).unwrap())
                .unwrap();
            assert!(max_diff(&rebuilt, &f.ab().unwrap()) < 1e-10, "case {i}");
            // U has orthonormal columns where the singular value is nonzero, zero columns
            // elsewhere (rank-deficient factors).
            let utu = svd
                .u
                .transpose(D::Minus2, D::Minus1)
                .unwrap()
                .matmul(&svd.u)
                .unwrap();
            let top = svd
                .s
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let live = svd.s.ge(1e-10 * top).unwrap().to_dtype(DType::F64).unwrap();
            let eye = Tensor::eye(live.dim(D::Minus1).unwrap(), DType::F64, &Device::Cpu).unwrap();
            let want = eye
                .broadcast_mul(&live.unsqueeze(D::Minus2).unwrap())
                .unwrap();
            assert!(max_diff(&utu, &want) < 1e-9, "case {i}");
            // Singular values equal the full matrix's leading ones (first batch entry).
            let first = match f.leading().len() {
                0 => f.clone(),
                _ => f.get(0).unwrap().get(0).unwrap(),
            };
            let full = first.ab().unwrap();
            let (m, n) = full.dims2().unwrap();
            let dense = DMatrix::from_row_slice(
                m,
                n,
                &full.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            );
            let mut want: Vec<f64> = dense.singular_values().iter().copied().collect();
            want.sort_by(|a, b| b.total_cmp(a));
            let got: Vec<f64> = first.svd().unwrap().s.to_vec1().unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-10, "case {i}: {got:?} vs {want:?}");
            }
            let norm = first.frobenius_norm().unwrap().to_scalar::<f64>().unwrap();
            assert!((norm - dense.norm()).abs() < 1e-10, "case {i}");
        }
    }

    #[test]
    fn eigenvalues_are_the_nonzero_ones_of_the_full_matrix() {
        for f in [
            cases().swap_remove(2),
            cases().swap_remove(4).get(1).unwrap().get(2).unwrap(),
        ] {
            let (re, im) = f.eigenvalues().unwrap();
            let (re, im): (Vec<f64>, Vec<f64>) = (re.to_vec1().unwrap(), im.to_vec1().unwrap());
            let full = f.ab().unwrap();
            let (m, _) = full.dims2().unwrap();
            let dense = DMatrix::from_row_slice(
                m,
                m,
                &full.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            );
            let mut want: Vec<(f64, f64)> = dense
                .complex_eigenvalues()
                .iter()
                .map(|c| (c.re, c.im))
                .filter(|c| c.0.hypot(c.1) > 1e-9)
                .collect();
            want.sort_by(|x, y| y.0.hypot(y.1).total_cmp(&x.0.hypot(x.1)));
            assert_eq!(want.len(), re.len());
            for ((r, i), (wr, wi)) in re.iter().zip(&im).zip(&want) {
                // Conjugate pairs may come in either order: compare magnitudes and real parts.
                assert!((r.hypot(*i) - wr.hypot(*wi)).abs() < 1e-8 && (r - wr).abs() < 1e-8);
            }
        }
    }

    #[test]
    fn products_transpose_and_balancing_keep_the_matrix() {
        for (i, f) in cases().into_iter().enumerate() {
            let full = f.ab().unwrap();
            let (m, r, n) = f.shape().unwrap();
            assert!(
                max_diff(
                    &f.t().unwrap().ab().unwrap(),
                    &full.transpose(D::Minus2, D::Minus1).unwrap()
                ) < 1e-12
            );
            let right = randn(&[n, 5], 20 + i as u64);
            let want = full.broadcast_matmul(&right).unwrap();
            assert!(max_diff(&f.matmul(&right).unwrap().ab().unwrap(), &want) < 1e-10);
            let left = randn(&[4, m], 30 + i as u64);
            let want = left.broadcast_matmul(&full).unwrap();
            assert!(max_diff(&f.rmatmul(&left).unwrap().ab().unwrap(), &want) < 1e-10);
            let v = randn(&[n], 40 + i as u64);
            let want = full
                .broadcast_matmul(&v.unsqueeze(1).unwrap())
                .unwrap()
                .squeeze(D::Minus1)
                .unwrap();
            assert!(max_diff(&f.matvec(&v).unwrap(), &want) < 1e-10);
            let other =
                FactoredMatrix::new(randn(&[n, 2], 50 + i as u64), randn(&[2, 7], 60 + i as u64))
                    .unwrap();
            let prod = f.matmul_factored(&other).unwrap();
            assert_eq!(prod.a.dim(D::Minus1).unwrap(), r.min(2));
            assert!(
                max_diff(
                    &prod.ab().unwrap(),
                    &full.broadcast_matmul(&other.ab().unwrap()).unwrap()
                ) < 1e-10
            );
            let even = f.make_even().unwrap();
            assert!(max_diff(&even.ab().unwrap(), &full) < 1e-10, "case {i}");
            let gram_a = even
                .a
                .transpose(D::Minus2, D::Minus1)
                .unwrap()
                .matmul(&even.a)
                .unwrap();
            let gram_b = even
                .b
                .matmul(&even.b.transpose(D::Minus2, D::Minus1).unwrap())
                .unwrap();
            assert!(max_diff(&gram_a, &gram_b) < 1e-10, "balanced factors");
            let svd = f.svd().unwrap();
            assert!(max_diff(&svd.u.matmul(&f.collapse_l().unwrap()).unwrap(), &full) < 1e-10);
            let vt = svd.v.transpose(D::Minus2, D::Minus1).unwrap();
            assert!(max_diff(&f.collapse_r().unwrap().matmul(&vt).unwrap(), &full) < 1e-10);
        }
        assert!(FactoredMatrix::new(randn(&[3, 2], 0), randn(&[3, 2], 1)).is_err());
        assert!(cases()[0].get(0).is_err());
        assert!(cases()[0].ba().is_err());
    }
}
