//! Embeddings as vectors: nearest tokens by cosine similarity, analogies a − b + c (as
//! word2vec), and a 2-D PCA projection, in the embedding W_E or the unembedding W_U.

use super::metrics::top_k;
use crate::error::{Error, Result};
use crate::model::HookedTransformer;
use candle_core::{DType, Tensor, D};

/// One token vector per row, each scaled to unit length: [d_vocab, d_model].
#[derive(Debug, Clone)]
pub struct UnitRows(Tensor);

impl UnitRows {
    /// The rows of the embedding W_E.
    pub fn embedding(model: &HookedTransformer) -> Result<Self> {
        Self::new(&model.w_e)
    }

    /// The columns of the unembedding W_U, as rows.
    pub fn unembedding(model: &HookedTransformer) -> Result<Self> {
        Self::new(&model.w_u.t()?)
    }

    fn new(rows: &Tensor) -> Result<Self> {
        let rows = rows.to_dtype(DType::F32)?.contiguous()?;
        let norm = rows
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        Ok(Self(rows.broadcast_div(&norm)?))
    }

    /// The unit vector of token `id`.
    pub fn row(&self, id: u32) -> Result<Tensor> {
        let n = self.0.dim(0)?;
        if id as usize >= n {
            return Err(Error::Invalid(format!(
                "token id {id} is outside the vocabulary (d_vocab {n})"
            )));
        }
        Ok(self.0.get(id as usize)?)
    }

    /// The `k` tokens whose vectors have the largest cosine with `v` [d_model], leaving out
    /// `exclude`: (id, cosine), most similar first.
    pub fn nearest(&self, v: &Tensor, k: usize, exclude: &[u32]) -> Result<Vec<(u32, f32)>> {
        let v = v.to_dtype(DType::F32)?;
        let v = (&v / v.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?.max(1e-12) as f64)?;
        let cos = crate::matmul::matmul(&self.0, &v.unsqueeze(1)?)?.squeeze(1)?;
        let cos: Vec<f32> = cos.to_vec1()?;
        Ok(top_k(&cos, k + exclude.len())
            .into_iter()
            .filter(|(id, _)| !exclude.contains(id))
            .take(k)
            .collect())
    }

    /// The `k` nearest tokens to a − b + c (unit vectors), leaving out a, b and c, as word2vec
    /// reports analogies.
    pub fn analogy(&self, (a, b, c): (u32, u32, u32), k: usize) -> Result<Vec<(u32, f32)>> {
        let v = ((self.row(a)? - self.row(b)?)? + self.row(c)?)?;
        self.nearest(&v, k, &[a, b, c])
    }
}

/// The 2-D PCA projection of `vectors` [n, d] (n >= 2): each row's coordinates along the two
/// directions of largest variance of the centred rows.
pub fn pca_2d(vectors: &Tensor) -> Result<Vec<(f32, f32)>> {
    let (n, d) = vectors.dims2()?;
    if n < 2 {
        return Err(Error::Invalid(
            "a PCA projection needs at least 2 vectors".into(),
        ));
    }
    crate::finite::ensure_finite(vectors, "the vectors of a PCA")?;
    let x = vectors.to_dtype(DType::F64)?;
    let x = x.broadcast_sub(&x.mean_keepdim(0)?)?;
    let data: Vec<f64> = x.flatten_all()?.to_vec1()?;
    let m = nalgebra::DMatrix::from_row_slice(n, d, &data);
    let svd = m.clone().svd(false, true);
    let vt = svd
        .v_t
        .ok_or_else(|| Error::Invalid("PCA: the SVD gave no right singular vectors".into()))?;
    // Singular values come sorted, largest first.
    let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
    order.sort_by(|&i, &j| svd.singular_values[j].total_cmp(&svd.singular_values[i]));
    let axis = |k: usize| -> nalgebra::DVector<f64> {
        match order.get(k) {
            Some(&i) => &m * vt.row(i).transpose(),
            None => nalgebra::DVector::zeros(n),
        }
    };
    let (x1, x2) = (axis(0), axis(1));
    Ok((0..n).map(|i| (x1[i] as f32, x2[i] as f32)).collect())
}

/// A token's neighbour by cosine in one matrix (`W_E` rows or `W_U` columns).
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbour {
    /// `W_E` or `W_U`.
    pub matrix: &'static str,
    /// Index of the query (the token looked up, or the analogy) in the caller's list.
    pub query: usize,
    /// 0 = most similar.
    pub rank: usize,
    pub id: u32,
    pub cosine: f32,
}

/// Both matrices of `model` as unit vectors, named as the tables name them.
pub fn both_matrices(model: &HookedTransformer) -> Result<[(&'static str, UnitRows); 2]> {
    Ok([
        ("W_E", UnitRows::embedding(model)?),
        ("W_U", UnitRows::unembedding(model)?),
    ])
}

/// The `k` nearest tokens of each of `ids` (itself left out) in W_E and in W_U.
pub fn nearest_tokens(model: &HookedTransformer, ids: &[u32], k: usize) -> Result<Vec<Neighbour>> {
    neighbours(model, ids, |rows, &i| rows.nearest(&rows.row(i)?, k, &[i]))
}

/// The `k` tokens nearest to a − b + c for each (a, b, c) of `triples`, in W_E and in W_U.
pub fn analogies(
    model: &HookedTransformer,
    triples: &[(u32, u32, u32)],
    k: usize,
) -> Result<Vec<Neighbour>> {
    neighbours(model, triples, |rows, &abc| rows.analogy(abc, k))
}

/// `find`'s ranked (id, cosine) list for each query, in W_E then in W_U, as rows.
fn neighbours<Q>(
    model: &HookedTransformer,
    queries: &[Q],
    find: impl Fn(&UnitRows, &Q) -> Result<Vec<(u32, f32)>>,
) -> Result<Vec<Neighbour>> {
    let mut out = vec![];
    for (matrix, rows) in both_matrices(model)? {
        for (query, q) in queries.iter().enumerate() {
            let ranked = find(&rows, q)?.into_iter().enumerate();
            out.extend(ranked.map(|(rank, (id, cosine))| Neighbour {
                matrix,
                query,
                rank,
                id,
                cosine,
            }));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rows() -> UnitRows {
        // Four tokens in 3-D: 0 and 1 close, 2 orthogonal, 3 = 1 - 0 + 2 exactly.
        let t = Tensor::new(
            &[
                [1f32, 0.1, 0.0],
                [1.0, 0.2, 0.0],
                [0.0, 0.0, 1.0],
                [0.0, 0.1, 1.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        UnitRows::new(&t).unwrap()
    }

    #[test]
    fn nearest_by_cosine_leaving_out_the_query() {
        let r = rows();
        let near = r.nearest(&r.row(0).unwrap(), 2, &[0]).unwrap();
        assert_eq!(near[0].0, 1);
        assert!(near[0].1 > 0.99 && near[0].1 <= 1.0 + 1e-6);
        assert_eq!(near.len(), 2);
        assert!(r.row(9).is_err());
    }

    #[test]
    fn the_analogy_finds_the_fourth_token() {
        let r = rows();
        // unit(1) - unit(0) + unit(2) points almost exactly at token 3.
        assert_eq!(r.analogy((1, 0, 2), 1).unwrap()[0].0, 3);
    }

    #[test]
    fn pca_finds_the_direction_of_largest_variance() {
        // Points along (1, 1, 0) with a little spread along z, uncorrelated with it.
        let t = Tensor::new(
            &[
                [0f32, 0., 0.1],
                [1., 1., -0.1],
                [2., 2., -0.1],
                [3., 3., 0.1],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let p = pca_2d(&t).unwrap();
        let first: Vec<f32> = p.iter().map(|x| x.0.abs()).collect();
        // Centred positions along the unit diagonal: ±1.5·√2 and ±0.5·√2.
        assert!((first[0] - 1.5 * 2f32.sqrt()).abs() < 1e-4, "{p:?}");
        assert!((first[1] - 0.5 * 2f32.sqrt()).abs() < 1e-4, "{p:?}");
        assert!(p.iter().all(|x| (x.1.abs() - 0.1).abs() < 1e-4), "{p:?}");
    }
}
