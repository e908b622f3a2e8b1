//! Direct logit attribution: how much each component writing to the residual stream (every
//! head, MLP layer or neuron, the embeddings and the biases) pushes the answer's logit above the
//! wrong answer's, read through the final norm's cached scale as TransformerLens's
//! `logit_attrs` does. The parts add up to the model's logit difference exactly: the final
//! norm's weight is folded into the direction, and its bias with `b_U` is a component of its own.

use super::resid::{accumulated_bias, logit_directions, Mode, Positions, ResidOpts};
use crate::cache::ActivationCache;
use crate::error::{Error, Result};
use crate::model::{upcast, HookedTransformer};
use candle_core::{IndexOp, Tensor, D};

/// One component's attribution, averaged over the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// `embed`, `pos_embed`, `L3H2`, `mlp 4`, `L4N17`, `bias`, `unembed bias`.
    pub component: String,
    /// `embed`, `pos_embed`, `head`, `mlp`, `neuron`, `bias` or `unembed_bias`.
    pub kind: &'static str,
    pub layer: Option<u32>,
    pub head: Option<u32>,
    pub neuron: Option<u32>,
    /// Logit difference (answer − wrong) this component contributes.
    pub value: f32,
}

/// The attributions and the model's own logit difference they add up to (batch means).
#[derive(Debug, Clone)]
pub struct Dla {
    pub contributions: Vec<Contribution>,
    pub logit_diff: f32,
}

/// Direct logit attribution of `answers[i]` over `wrong[i]` at position `last[i]` of batch row
/// `i` (each row's last real token), averaged over the batch. `logits` and `cache` come from one
/// run; the cache needs the hooks of [`ActivationCache::get_full_resid_decomposition`]. With
/// `expand_neurons` every MLP neuron is a component, otherwise every MLP layer.
pub fn direct_logit_attribution(
    model: &HookedTransformer,
    cache: &ActivationCache,
    logits: &Tensor,
    (answers, wrong): (&[u32], &[u32]),
    last: &[usize],
    expand_neurons: bool,
) -> Result<Dla> {
    let b = last.len();
    let p = logits.dim(1)?;
    if let Some(&bad) = last.iter().find(|&&q| q >= p) {
        return Err(Error::PositionOutOfRange { pos: bad, len: p });
    }
    // The model computes logits = norm(x) ⊙ w · W_U + b · W_U + b_U, so with direction
    // d = W_U[a] − W_U[b] the parts along d ⊙ w add up to the logit difference less b · d and
    // the b_U difference, which form the `unembed bias` component.
    let raw = logit_directions(model, answers, Some(wrong), b)?; // [batch, d_model]
    let dirs = match model.ln_final.weight() {
        Some(w) => raw.broadcast_mul(&upcast(w)?)?,
        None => raw.clone(),
    };
    let mut constant = Tensor::zeros(b, candle_core::DType::F32, raw.device())?;
    if let Some(bias) = model.ln_final.bias() {
        constant = (constant + raw.broadcast_mul(&upcast(bias)?)?.sum(D::Minus1)?)?;
    }
    if let Some(b_u) = &model.b_u {
        let b_u = upcast(b_u)?;
        let pick = |ids: &[u32]| b_u.index_select(&Tensor::new(ids, b_u.device())?, 0);
        constant = (constant + (pick(answers)? - pick(wrong)?)?)?;
    }

    let all = ResidOpts::default();
    let n = model.cfg.n_layers;
    let mut parts: Vec<(Tensor, Vec<String>)> = vec![];
    // Gemma 2's ln1_post rescales the sum of a layer's heads, so its heads do not add up: whole
    // attention layers are the components there (their b_O included).
    let post_norms = model.cfg.use_normalization_before_and_after;
    let attn = match post_norms {
        true => cache.decompose_resid(model, &all, Mode::Attn, false)?,
        false => cache.stack_head_results(model, &all)?,
    };
    parts.push((
        cache.attrs_along(model, &attn.stack, &dirs, Positions::All)?,
        attn.labels,
    ));
    if !model.cfg.attn_only {
        parts.push(match expand_neurons {
            true => cache.neuron_attrs_along(model, &all, &dirs)?,
            false => {
                let mlp = cache.decompose_resid(model, &all, Mode::Mlp, false)?;
                let attrs = cache.attrs_along(model, &mlp.stack, &dirs, Positions::All)?;
                (attrs, mlp.labels)
            }
        });
    }
    let embeds = cache.decompose_resid(
        model,
        &ResidOpts {
            layer: Some(0),
            ..all
        },
        Mode::All,
        true,
    )?;
    parts.push((
        cache.attrs_along(model, &embeds.stack, &dirs, Positions::All)?,
        embeds.labels,
    ));
    if !post_norms {
        let bias = accumulated_bias(model, n, false, expand_neurons)?;
        let bias = bias
            .broadcast_as((1, b, p, model.cfg.d_model))?
            .contiguous()?;
        parts.push((
            cache.attrs_along(model, &bias, &dirs, Positions::All)?,
            vec!["bias".into()],
        ));
    }

    // Each row at its own last position, then the batch mean: [components].
    let rows: Vec<u32> = last.iter().map(|&q| q as u32).collect();
    let at_last = |attrs: &Tensor| -> Result<Tensor> {
        let idx = Tensor::new(rows.as_slice(), attrs.device())?.reshape((1, b, 1))?;
        let idx = idx.broadcast_as((attrs.dim(0)?, b, 1))?.contiguous()?;
        Ok(attrs.contiguous()?.gather(&idx, 2)?.squeeze(2)?.mean(1)?)
    };
    let mut contributions = vec![];
    for (attrs, labels) in &parts {
        let values: Vec<f32> = at_last(attrs)?.to_vec1()?;
        for (label, value) in labels.iter().zip(values) {
            contributions.push(describe(label, value));
        }
    }
    contributions.push(Contribution {
        component: "unembed bias".into(),
        kind: "unembed_bias",
        layer: None,
        head: None,
        neuron: None,
        value: constant.mean_all()?.to_scalar::<f32>()?,
    });
    // The attribution is linear: under a final soft-cap it explains the logits before the cap.
    let logits = match model.cfg.output_logits_soft_cap {
        Some(c) => {
            // c·atanh(y / c), with atanh(x) = ½·ln((1 + x) / (1 − x)).
            let x = (upcast(logits)? / c)?.clamp(-1.0 + 1e-7, 1.0 - 1e-7)?;
            (((x.affine(1.0, 1.0)? / x.affine(-1.0, 1.0)?)?.log()? * 0.5)? * c)?
        }
        None => logits.clone(),
    };
    let logit_diff = logit_differences(&logits, answers, wrong, last)?;
    Ok(Dla {
        contributions,
        logit_diff,
    })
}

/// The mean over rows of `logits[i, last[i], answers[i]] − logits[i, last[i], wrong[i]]`.
pub fn logit_differences(
    logits: &Tensor,
    answers: &[u32],
    wrong: &[u32],
    last: &[usize],
) -> Result<f32> {
    let logits = upcast(logits)?;
    let mut total = 0f32;
    for (i, &q) in last.iter().enumerate() {
        let row = logits.i((i, q))?;
        let v = |id: u32| -> Result<f32> { Ok(row.i(id as usize)?.to_scalar::<f32>()?) };
        total += v(answers[i])? - v(wrong[i])?;
    }
    Ok(total / last.len() as f32)
}

/// A [`Contribution`] from a stack label (`L3H2`, `L4N17`, `2_mlp_out`, `embed`, ...).
fn describe(label: &str, value: f32) -> Contribution {
    let num = |s: &str| s.parse::<u32>().ok();
    let (kind, layer, head, neuron, component) = if let Some(rest) = label.strip_suffix("_mlp_out")
    {
        ("mlp", num(rest), None, None, format!("mlp {rest}"))
    } else if let Some(rest) = label.strip_suffix("_attn_out") {
        ("attn", num(rest), None, None, format!("attn {rest}"))
    } else if let Some((l, x)) = label.strip_prefix('L').and_then(|r| r.split_once('H')) {
        ("head", num(l), num(x), None, label.to_string())
    } else if let Some((l, x)) = label.strip_prefix('L').and_then(|r| r.split_once('N')) {
        ("neuron", num(l), None, num(x), label.to_string())
    } else {
        let kind = match label {
            "embed" => "embed",
            "pos_embed" => "pos_embed",
            _ => "bias",
        };
        (kind, None, None, None, label.to_string())
    };
    Contribution {
        component,
        kind,
        layer,
        head,
        neuron,
        value,
    }
}

/// [`direct_logit_attribution`] of each pair's answer over its wrong answer at the last real
/// token of the clean prompts of `batch`, caching every hook over chunks of at most
/// `tokens_per_pass` tokens (each chunk's means weighted by its size).
pub fn dla_on(
    model: &HookedTransformer,
    batch: &crate::data::PairBatch,
    expand_neurons: bool,
    tokens_per_pass: usize,
) -> Result<Dla> {
    let n = batch.lengths.len();
    let chunks = crate::data::prompt_chunks(n, batch.clean.dim(1)?, tokens_per_pass)?;
    // The chunks' values weighted by their sizes, summed in f64 and rounded once.
    let (mut total, mut sums): (Option<Dla>, Vec<f64>) = (None, vec![]);
    for rows in chunks {
        let w = rows.len() as f64;
        let b = batch.slice(rows)?;
        let last: Vec<usize> = b.lengths.iter().map(|l| l - 1).collect();
        let (logits, cache) = model.run_with_cache(&b.clean, crate::NameFilter::All)?;
        let expand = expand_neurons && !model.cfg.attn_only;
        let pair = (b.answers.as_slice(), b.wrong.as_slice());
        let part = direct_logit_attribution(model, &cache, &logits, pair, &last, expand)?;
        let values = (part.contributions.iter().map(|c| c.value)).chain([part.logit_diff]);
        sums.resize(part.contributions.len() + 1, 0.0);
        for (s, v) in sums.iter_mut().zip(values) {
            *s += v as f64 * w;
        }
        total.get_or_insert(part);
    }
    let mut total = total.ok_or_else(|| Error::Invalid("no prompts to attribute".into()))?;
    let mean = |s: f64| (s / n as f64) as f32;
    for (c, &s) in total.contributions.iter_mut().zip(&sums) {
        c.value = mean(s);
    }
    total.logit_diff = mean(sums[sums.len() - 1]);
    Ok(total)
}
