//! Weight processing as in TransformerLens (`fold_ln`, `center_writing_weights`,
//! `center_unembed`, `fold_value_biases`). Each leaves the model's output unchanged (up to a
//! constant shift of the logits per position for `center_unembed`) while making the weights
//! easier to read.

use crate::config::{ModelConfig, Normalization};
use crate::error::Result;
use crate::weights::Weights;
use candle_core::{DType, Tensor, D};

/// Which processing steps to apply. The default is TransformerLens's
/// `enable_compatibility_mode()` / `from_pretrained` defaults: all on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Processing {
    pub fold_ln: bool,
    pub center_writing_weights: bool,
    pub center_unembed: bool,
    pub fold_value_biases: bool,
}

impl Default for Processing {
    fn default() -> Self {
        Self {
            fold_ln: true,
            center_writing_weights: true,
            center_unembed: true,
            fold_value_biases: true,
        }
    }
}

impl Processing {
    /// No processing: the checkpoint's weights as they are.
    pub fn none() -> Self {
        Self {
            fold_ln: false,
            center_writing_weights: false,
            center_unembed: false,
            fold_value_biases: false,
        }
    }
}

/// Applies `p` to `w` in TransformerLens's order and returns the config of the processed
/// model (folding LayerNorm turns `LN` into `LNPre`, RMSNorm into `RMSPre`).
///
/// With RMSNorm only the weight is folded: there is no mean to remove, so
/// `center_writing_weights` is skipped (as TransformerLens does). Under a final logit soft-cap
/// (Gemma 2) `center_unembed` is skipped too, as TransformerLens does: the cap is not
/// shift-invariant, so centring would change the predictions. Post-sublayer norms (Gemma 2's
/// `ln1_post`, `ln2_post`) and QK-norms (Qwen3) keep their weights: no linear map reads their
/// output to fold them into.
pub fn process_weights(w: &mut Weights, cfg: &ModelConfig, p: Processing) -> Result<ModelConfig> {
    let mut cfg = cfg.clone();
    let ln = cfg.normalization_type == Normalization::LN;
    let rms = cfg.normalization_type == Normalization::RMS;
    if p.fold_ln && (ln || rms) {
        fold_layer_norm(w, &cfg, ln)?;
        cfg.normalization_type = if ln {
            Normalization::LNPre
        } else {
            Normalization::RMSPre
        };
    }
    if p.center_writing_weights
        && matches!(
            cfg.normalization_type,
            Normalization::LN | Normalization::LNPre
        )
    {
        center_writing_weights(w, &cfg)?;
    }
    if p.center_unembed && cfg.output_logits_soft_cap.is_none() {
        center(w, "unembed.W_U")?;
        center(w, "unembed.b_U")?;
    }
    if p.fold_value_biases {
        fold_value_biases(w, &cfg)?;
    }
    Ok(cfg)
}

/// Subtracts the mean over the last dimension from weight `name`, if present.
fn center(w: &mut Weights, name: &str) -> Result<()> {
    if let Some(t) = w.remove(name) {
        let c = match stored_rows(&t)? {
            Some(rows) => rows.broadcast_sub(&column_mean(&rows)?)?.t()?,
            None => t.broadcast_sub(&t.mean_keepdim(D::Minus1)?)?,
        };
        w.insert(name, c);
    }
    Ok(())
}

/// The mean of `rows` [n, d] over its rows, [1, d]: blocks of rows summed in the tensor's dtype,
/// their sums added in f64. One f32 running sum over SmolLM2's 49,152 rows drifts enough to
/// move its full-OV eigenvalues off TransformerLens's (torch sums pairwise).
fn column_mean(rows: &Tensor) -> Result<Tensor> {
    const BLOCK: usize = 1024;
    let n = rows.dim(0)?;
    let mut sum = Tensor::zeros((1, rows.dim(1)?), DType::F64, rows.device())?;
    for start in (0..n).step_by(BLOCK) {
        let block = rows.narrow(0, start, BLOCK.min(n - start))?;
        sum = (sum + block.sum_keepdim(0)?.to_dtype(DType::F64)?)?;
    }
    Ok((sum / n as f64)?.to_dtype(rows.dtype())?)
}

/// The contiguous matrix a transposed view `t` shows, if it is one (W_U: checkpoints store it
/// [d_vocab, d_model]). candle's element-wise ops and reductions walk a transposed operand one
/// element at a time; on the stored rows Gemma 3's [640, 262144] W_U folds, centres and needs
/// no transposing copy in `HookedTransformer::new`.
fn stored_rows(t: &Tensor) -> Result<Option<Tensor>> {
    if t.rank() != 2 || t.is_contiguous() {
        return Ok(None);
    }
    let rows = t.t()?;
    Ok(rows.is_contiguous().then_some(rows))
}

/// Folds a norm's weight (and bias) into the layer(s) reading from it:
/// `W' = diag(w) W`, `b' = b + bias @ W`, then (LayerNorm only) centres `W'` over d_model,
/// since its input has zero mean anyway.
fn fold_into(
    w: &mut Weights,
    norm: &str,
    readers: &[(String, Option<String>)],
    center_input: bool,
) -> Result<()> {
    let Some(nw) = w.remove(&format!("{norm}.w")) else {
        return Ok(());
    };
    let nb = w.remove(&format!("{norm}.b"));
    for (wname, bname) in readers {
        let Some(mat) = w.remove(wname) else { continue };
        // mat is [.., d_model, out]; the norm weight scales its d_model rows.
        let d = nw.dim(0)?;
        if let (Some(nb), Some(bname)) = (&nb, bname) {
            // bias @ W over d_model, shaped like the existing bias.
            let shift = nb
                .reshape((1, d))?
                .broadcast_matmul(&mat)?
                .squeeze(D::Minus2)?;
            let shift = match w.remove(bname) {
                Some(b) => {
                    let shift = shift.reshape(b.shape())?;
                    (b + shift)?
                }
                None => shift,
            };
            w.insert(bname.clone(), shift);
        }
        let folded = match stored_rows(&mat)? {
            // The same on the stored [out, d_model] rows, seen transposed again.
            Some(rows) => {
                let mut f = rows.broadcast_mul(&nw.reshape((1, d))?)?;
                if center_input {
                    f = f.broadcast_sub(&f.mean_keepdim(D::Minus1)?)?;
                }
                f.t()?
            }
            None => {
                let mut f = mat.broadcast_mul(&nw.reshape((d, 1))?)?;
                if center_input {
                    f = f.broadcast_sub(&f.mean_keepdim(D::Minus2)?)?;
                }
                f
            }
        };
        w.insert(wname.clone(), folded);
    }
    Ok(())
}

fn fold_layer_norm(w: &mut Weights, cfg: &ModelConfig, center_input: bool) -> Result<()> {
    for l in 0..cfg.n_layers {
        let a = |n: &str, b: &str| {
            (
                format!("blocks.{l}.attn.{n}"),
                Some(format!("blocks.{l}.attn.{b}")),
            )
        };
        fold_into(
            w,
            &format!("blocks.{l}.ln1"),
            &[a("W_Q", "b_Q"), a("W_K", "b_K"), a("W_V", "b_V")],
            center_input,
        )?;
        if !cfg.attn_only {
            let m = |n: &str, b: Option<&str>| {
                (
                    format!("blocks.{l}.mlp.{n}"),
                    b.map(|b| format!("blocks.{l}.mlp.{b}")),
                )
            };
            fold_into(
                w,
                &format!("blocks.{l}.ln2"),
                &[m("W_in", Some("b_in")), m("W_gate", None)],
                center_input,
            )?;
        }
    }
    fold_into(
        w,
        "ln_final",
        &[("unembed.W_U".into(), Some("unembed.b_U".into()))],
        center_input,
    )
}

/// Makes every write into the residual stream mean-zero over d_model: the embeddings and
/// each sublayer's output weights and biases.
fn center_writing_weights(w: &mut Weights, cfg: &ModelConfig) -> Result<()> {
    center(w, "embed.W_E")?;
    center(w, "pos_embed.W_pos")?;
    for l in 0..cfg.n_layers {
        center(w, &format!("blocks.{l}.attn.W_O"))?;
        center(w, &format!("blocks.{l}.attn.b_O"))?;
        if !cfg.attn_only {
            center(w, &format!("blocks.{l}.mlp.W_out"))?;
            center(w, &format!("blocks.{l}.mlp.b_out"))?;
        }
    }
    Ok(())
}

/// Moves the value bias into the output bias: since each attention pattern sums to one,
/// `b_V` contributes `Σ_h b_V[h] @ W_O[h]` to every position.
fn fold_value_biases(w: &mut Weights, cfg: &ModelConfig) -> Result<()> {
    for l in 0..cfg.n_layers {
        let bv_name = format!("blocks.{l}.attn.b_V");
        let Some(b_v) = w.tensors.get(&bv_name).cloned() else {
            continue;
        };
        let w_o = w.get(
            &format!("blocks.{l}.attn.W_O"),
            &[cfg.n_heads, cfg.d_head, cfg.d_model],
        )?;
        // Grouped-query heads: each query head uses its key/value head's bias.
        let b_v_full = b_v.repeat_interleave_heads(cfg.group_size())?;
        let shift = b_v_full.unsqueeze(1)?.matmul(&w_o)?.squeeze(1)?.sum(0)?; // [d_model]
        let bo_name = format!("blocks.{l}.attn.b_O");
        let b_o = match w.remove(&bo_name) {
            Some(b) => (b + shift)?,
            None => shift,
        };
        w.insert(bo_name, b_o);
        w.insert(bv_name, b_v.zeros_like()?);
    }
    Ok(())
}

trait RepeatHeads {
    fn repeat_interleave_heads(&self, g: usize) -> Result<Tensor>;
}

impl RepeatHeads for Tensor {
    /// [H_kv, d] -> [H_kv * g, d], each row repeated g times in place.
    fn repeat_interleave_heads(&self, g: usize) -> Result<Tensor> {
        if g == 1 {
            return Ok(self.clone());
        }
        let (kv, d) = self.dims2()?;
        Ok(self
            .unsqueeze(1)?
            .expand((kv, g, d))?
            .reshape((kv * g, d))?)
    }
}
