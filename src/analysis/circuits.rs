//! Per-head QK and OV circuits ("A Mathematical Framework for Transformer Circuits", in
//! TransformerLens's vocabulary), full circuits through the embeddings, copying scores and
//! composition scores, all on [`FactoredMatrix`] factors.
//!
//! With grouped-query attention a query head's circuits use the key/value head it shares
//! (head h reads key/value head h / (n_heads / n_key_value_heads)), as TransformerLens does by
//! expanding the key/value heads.

use super::factored::{gram_root, FactoredMatrix, GramSvd};
use crate::error::{Error, Result};
use crate::matmul::{broadcast_matmul, matmul};
use crate::model::{upcast, HookedTransformer};
use candle_core::{DType, Tensor, D};

/// One per-head weight of every layer, stacked in f32: [L, heads, .., ..].
fn stack_w(model: &HookedTransformer, w: impl Fn(usize) -> Result<Tensor>) -> Result<Tensor> {
    let per_layer = (0..model.cfg.n_layers)
        .map(|l| upcast(&w(l)?)?.contiguous().map_err(Error::from))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&per_layer, 0)?)
}

/// [L, H_kv, ..] -> [L, H, ..]: each query head gets the key/value head it shares.
fn expand_kv(model: &HookedTransformer, w: Tensor) -> Result<Tensor> {
    let g = model.cfg.n_heads / model.cfg.n_key_value_heads;
    if g == 1 {
        return Ok(w);
    }
    let idx: Vec<u32> = (0..model.cfg.n_heads).map(|h| (h / g) as u32).collect();
    Ok(w.index_select(&Tensor::new(idx, w.device())?, 1)?)
}

fn w_q(model: &HookedTransformer) -> Result<Tensor> {
    stack_w(model, |l| model.W_Q(l))
}
fn w_k(model: &HookedTransformer) -> Result<Tensor> {
    expand_kv(model, stack_w(model, |l| model.W_K(l))?)
}
fn w_v(model: &HookedTransformer) -> Result<Tensor> {
    expand_kv(model, stack_w(model, |l| model.W_V(l))?)
}
fn w_o(model: &HookedTransformer) -> Result<Tensor> {
    stack_w(model, |l| model.W_O(l))
}

fn t(x: &Tensor) -> Result<Tensor> {
    Ok(x.transpose(D::Minus2, D::Minus1)?.contiguous()?)
}

/// QK = W_Q·W_Kᵀ of every head: [L, H, d_model, d_model] (query side rows, key side columns).
pub fn qk(model: &HookedTransformer) -> Result<FactoredMatrix> {
    FactoredMatrix::new(w_q(model)?, t(&w_k(model)?)?)
}

/// OV = W_V·W_O of every head: [L, H, d_model, d_model].
pub fn ov(model: &HookedTransformer) -> Result<FactoredMatrix> {
    FactoredMatrix::new(w_v(model)?, w_o(model)?)
}

fn head(
    model: &HookedTransformer,
    f: FactoredMatrix,
    layer: usize,
    h: usize,
) -> Result<FactoredMatrix> {
    model.block(layer)?;
    model.check_head(h)?;
    f.get(layer)?.get(h)
}

/// The full QK circuit W_E·QK·W_Eᵀ of one head: [d_vocab, d_vocab], factored.
pub fn full_qk(model: &HookedTransformer, layer: usize, h: usize) -> Result<FactoredMatrix> {
    let w_e = upcast(&model.w_e)?;
    // W_Eᵀ as a view: the matmul reads it in place instead of copying the embedding.
    head(model, qk(model)?, layer, h)?
        .rmatmul(&w_e)?
        .matmul(&w_e.t()?)
}

/// The positional QK circuit W_pos·QK·W_posᵀ of one head ([n_ctx, n_ctx]); learned-position
/// models only.
pub fn pos_qk(model: &HookedTransformer, layer: usize, h: usize) -> Result<FactoredMatrix> {
    let w_pos = model.w_pos.as_ref().ok_or_else(|| {
        Error::Unsupported("the positional QK circuit needs learned positions (W_pos)".into())
    })?;
    let w_pos = upcast(w_pos)?;
    head(model, qk(model)?, layer, h)?
        .rmatmul(&w_pos)?
        .matmul(&w_pos.t()?)
}

/// The full OV circuit W_E·OV·W_U of one head: [d_vocab, d_vocab], factored.
pub fn full_ov(model: &HookedTransformer, layer: usize, h: usize) -> Result<FactoredMatrix> {
    let (w_e, w_u) = (upcast(&model.w_e)?, upcast(&model.w_u)?);
    head(model, ov(model)?, layer, h)?
        .rmatmul(&w_e)?
        .matmul(&w_u)
}

/// xᵀ·x in f64 for x [rows, d]: [d, d].
fn gram64(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F64)?;
    matmul(&x.t()?, &x)
}

/// Aᵀ·G·A for A [L, H, d, r] and G [d, d]: [L, H, r, r], in f64.
fn sandwich(a: &Tensor, g: &Tensor) -> Result<Tensor> {
    let a = a.to_dtype(DType::F64)?;
    matmul(&broadcast_matmul(&t(&a)?, g)?, &a)
}

/// The singular values of every head's full QK circuit W_E·QK·W_Eᵀ, [L, H, d_head]: from the
/// d_head × d_head Grams W_Qᵀ(W_EᵀW_E)W_Q and W_Kᵀ(W_EᵀW_E)W_K, one vocabulary-sized product in
/// all.
pub fn full_qk_singular_values(model: &HookedTransformer) -> Result<Tensor> {
    let e = gram64(&model.w_e)?;
    let svd = GramSvd::new(&sandwich(&w_q(model)?, &e)?, &sandwich(&w_k(model)?, &e)?)?;
    Ok(svd.s.to_dtype(DType::F32)?)
}

/// The singular values of every head's positional QK circuit W_pos·QK·W_posᵀ, [L, H, d_head]
/// (learned-position models).
pub fn pos_qk_singular_values(model: &HookedTransformer) -> Result<Tensor> {
    let w_pos = model.w_pos.as_ref().ok_or_else(|| {
        Error::Unsupported("the positional QK circuit needs learned positions (W_pos)".into())
    })?;
    let e = gram64(w_pos)?;
    let svd = GramSvd::new(&sandwich(&w_q(model)?, &e)?, &sandwich(&w_k(model)?, &e)?)?;
    Ok(svd.s.to_dtype(DType::F32)?)
}

/// Every head's full OV circuit W_E·OV·W_U as a [`GramSvd`] (f64): singular values [L, H,
/// d_head]; its right singular vectors over the vocabulary are W_Uᵀ·W_Oᵀ·`right`.
pub fn full_ov_gram_svd(model: &HookedTransformer) -> Result<GramSvd> {
    let e = gram64(&model.w_e)?;
    let u = gram64(&t(&model.w_u)?)?; // W_U·W_Uᵀ
    GramSvd::new(
        &sandwich(&w_v(model)?, &e)?,
        &sandwich(&t(&w_o(model)?)?, &u)?,
    )
}

/// Eigenvalues of every head's full OV circuit W_E·OV·W_U, as (real, imaginary) [L, H, d_head],
/// by descending magnitude: those of W_O·(W_U·W_E)·W_V, a d_head × d_head matrix, so the
/// vocabulary-sized circuit is never built.
pub fn full_ov_eigenvalues(model: &HookedTransformer) -> Result<(Tensor, Tensor)> {
    let g = matmul(&upcast(&model.w_u)?, &upcast(&model.w_e)?)?; // [d_model, d_model]
    FactoredMatrix::new(w_v(model)?, broadcast_matmul(&w_o(model)?, &g)?)?.eigenvalues()
}

/// The copying score of every head, Re(Σλ) / Σ|λ| over the eigenvalues λ of its full OV
/// circuit: near 1 for a head that copies the tokens it attends to. [L, H].
pub fn copying_scores(model: &HookedTransformer) -> Result<Tensor> {
    let (re, im) = full_ov_eigenvalues(model)?;
    let abs = (re.sqr()? + im.sqr()?)?.sqrt()?;
    Ok((re.sum(D::Minus1)? / abs.sum(D::Minus1)?)?)
}

/// Which input of the later (reading) head a composition score measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Composition {
    /// The reader's queries (QK, query side).
    Q,
    /// The reader's keys (QKᵀ).
    K,
    /// The reader's values (OV).
    V,
}

impl Composition {
    pub const ALL: [Composition; 3] = [Composition::Q, Composition::K, Composition::V];

    pub fn name(self) -> &'static str {
        match self {
            Composition::Q => "Q",
            Composition::K => "K",
            Composition::V => "V",
        }
    }
}

/// Composition scores ‖OV_w·R_r‖_F / (‖OV_w‖_F ‖R_r‖_F) for every writer head w and reader head
/// r, where R is the reader's QK (Q), QKᵀ (K) or OV (V): [L, H, L, H], writer first, zero unless
/// the reader's layer is later (TransformerLens's `all_composition_scores`).
///
/// Each head is whitened once: with the writer A_w·B_w and the reader A_r·B_r, and square roots
/// R of the d_head × d_head Grams A_wᵀA_w and B_rB_rᵀ, ‖A_w·B_w·A_r·B_r‖_F =
/// ‖(R_Aw·B_w)·(A_r·R_Brᵀ)‖_F. So a pair's score is the Frobenius norm of an r × r block of one
/// large product over all heads, computed one writer layer at a time against the later layers.
pub fn composition_scores(model: &HookedTransformer, kind: Composition) -> Result<Tensor> {
    let (l, h) = (model.cfg.n_layers, model.cfg.n_heads);
    let d = model.cfg.d_model;
    let (w_v, w_o) = (w_v(model)?, w_o(model)?);
    let (a_r, b_r) = match kind {
        Composition::Q => (w_q(model)?, t(&w_k(model)?)?),
        Composition::K => (w_k(model)?, t(&w_q(model)?)?),
        Composition::V => (w_v.clone(), w_o.clone()),
    };
    let gram = |x: &Tensor| -> Result<Tensor> {
        let x = x.to_dtype(DType::F64)?;
        matmul(&x.transpose(D::Minus2, D::Minus1)?, &x)
    };
    // Writer rows R_A·B_w [L, H, r, d]; reader columns A_r·R_Bᵀ [L, H, d, r].
    let r_aw = gram_root(&gram(&w_v)?)?.to_dtype(DType::F32)?;
    let x = matmul(&r_aw, &w_o)?;
    let r_br = gram_root(&gram(&t(&b_r)?)?)?.to_dtype(DType::F32)?;
    let y = matmul(&a_r, &t(&r_br)?)?;
    let r = x.dim(2)?;
    let norm = |m: &Tensor| -> Result<Vec<f32>> {
        Ok(m.sqr()?.sum((2, 3))?.sqrt()?.flatten_all()?.to_vec1()?)
    };
    let (nw, nr) = (norm(&x)?, norm(&y)?); // L·H each: ‖OV_w‖_F, ‖R_r‖_F
    let x = x.reshape((l * h * r, d))?;
    let y = y
        .permute((2, 0, 1, 3))?
        .contiguous()?
        .reshape((d, l * h * r))?;
    // One (writer layer, later reader layer) pair at a time: block (w, r) of the [H·r, H·r]
    // product is writer w's R_A·B_w times reader r's A_r·R_Bᵀ, and its Frobenius norm is the
    // unnormalised score. The reader slice is a column view that the matmul reads in place, and
    // each product is small enough to reuse freed memory (one product per writer layer against
    // all later layers was tens of MB of fresh pages each).
    let mut out = vec![0f32; l * h * l * h];
    for lw in 0..l {
        let xw = x.narrow(0, lw * h * r, h * r)?;
        for lr in lw + 1..l {
            let block = matmul(&xw, &y.narrow(1, lr * h * r, h * r)?)?;
            let v = block.flatten_all()?.to_vec1::<f32>()?;
            let mut sq = vec![0f32; h * h]; // [writer head, reader head]
            for (i, row) in v.chunks_exact(h * r).enumerate() {
                let hw = i / r;
                for (hr, part) in row.chunks_exact(r).enumerate() {
                    sq[hw * h + hr] += part.iter().map(|x| x * x).sum::<f32>();
                }
            }
            for (i, s) in sq.into_iter().enumerate() {
                let (hw, hr) = (i / h, i % h);
                out[((lw * h + hw) * l + lr) * h + hr] =
                    s.sqrt() / (nw[lw * h + hw] * nr[lr * h + hr]);
            }
        }
    }
    Ok(Tensor::from_vec(out, (l, h, l, h), model.device())?)
}

/// One singular value of one head's circuit: a row of the per-head circuit table.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadCircuitRow {
    pub layer: usize,
    pub head: usize,
    /// `qk`, `ov`, `full_qk`, `full_ov` or `pos_qk` (learned positions only).
    pub circuit: &'static str,
    /// Index of the singular value, 0 = largest.
    pub rank: usize,
    pub singular_value: f32,
    /// The head's copying score (the same on every row of the head).
    pub copying_score: f32,
    /// For `ov` and `full_ov`: the token ids the right singular vector points to most, best
    /// first; `None` for the other circuits.
    pub top_tokens: Option<Vec<u32>>,
}

/// The top `k` singular values of every head's QK, OV, full QK, full OV (and positional QK)
/// circuits, with its copying score, and for the OV circuits the `n_tokens` tokens each right
/// singular vector points to. `progress` is called after each head.
pub fn head_circuits(
    model: &HookedTransformer,
    k: usize,
    n_tokens: usize,
    mut progress: impl FnMut(),
) -> Result<Vec<HeadCircuitRow>> {
    let (l_n, h_n) = (model.cfg.n_layers, model.cfg.n_heads);
    let copying: Vec<f32> = copying_scores(model)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let (qk_svd, ov_svd) = (qk(model)?.svd()?, ov(model)?.svd()?);
    let w_u = upcast(&model.w_u)?;
    let full_qk_s = full_qk_singular_values(model)?;
    let pos_qk_s = match model.w_pos.is_some() {
        true => Some(pos_qk_singular_values(model)?),
        false => None,
    };
    let full_ov = full_ov_gram_svd(model)?;
    let w_o_all = w_o(model)?; // [L, H, d_head, d_model]
    let k = k.min(model.cfg.d_head);
    let mut rows = vec![];
    for l in 0..l_n {
        // Right singular vectors of each head's full OV circuit over the vocabulary, top k:
        // W_Uᵀ·(W_Oᵀ·right[.., :k]) for the layer's heads at once: [d_vocab, H·k].
        let right = full_ov
            .right
            .get(l)?
            .narrow(2, 0, k)?
            .to_dtype(DType::F32)?; // [H, dh, k]
        let m = t(&w_o_all.get(l)?)?.matmul(&right)?; // [H, d_model, k]
        let m = m
            .permute((1, 0, 2))?
            .contiguous()?
            .reshape((model.cfg.d_model, h_n * k))?;
        let vocab_vectors = t(&w_u)?.matmul(&m)?.t()?.contiguous()?; // [H·k, d_vocab]
                                                                     // The OV circuits' right singular vectors (d_model) read through the unembedding:
                                                                     // [H, d_model, k] -> [d_model, H·k] -> [H·k, d_vocab].
        let ov_right = ov_svd.v.get(l)?.narrow(2, 0, k)?.to_dtype(DType::F32)?;
        let ov_right = ov_right
            .permute((1, 0, 2))?
            .contiguous()?
            .reshape((model.cfg.d_model, h_n * k))?;
        let ov_logits = t(&ov_right)?.matmul(&w_u)?; // [H·k, d_vocab]
        for h in 0..h_n {
            let heads_s = |s: &Tensor| -> Result<Vec<f32>> {
                Ok(s.get(l)?.get(h)?.to_dtype(DType::F32)?.to_vec1()?)
            };
            let mut circuits = vec![
                ("qk", heads_s(&qk_svd.s)?),
                ("ov", heads_s(&ov_svd.s)?),
                ("full_qk", heads_s(&full_qk_s)?),
                ("full_ov", heads_s(&full_ov.s)?),
            ];
            if let Some(p) = &pos_qk_s {
                circuits.push(("pos_qk", heads_s(p)?));
            }
            for (name, s) in circuits {
                for (i, &sv) in s.iter().enumerate().take(k) {
                    let top = |m: &Tensor| -> Result<Vec<u32>> {
                        let v: Vec<f32> = m.get(h * k + i)?.to_vec1()?;
                        let top = super::metrics::top_k(&v, n_tokens);
                        Ok(top.into_iter().map(|(id, _)| id).collect())
                    };
                    let top_tokens = match name {
                        "ov" => Some(top(&ov_logits)?),
                        "full_ov" => Some(top(&vocab_vectors)?),
                        _ => None,
                    };
                    rows.push(HeadCircuitRow {
                        layer: l,
                        head: h,
                        circuit: name,
                        rank: i,
                        singular_value: sv,
                        copying_score: copying[l * h_n + h],
                        top_tokens,
                    });
                }
            }
            progress();
        }
    }
    Ok(rows)
}
