//! The residual stream read two ways, with TransformerLens's names, labels and numbers:
//! layer by layer ([`ActivationCache::accumulated_resid`]) and component by component
//! ([`ActivationCache::decompose_resid`], [`ActivationCache::stack_head_results`],
//! [`ActivationCache::stack_neuron_results`], [`ActivationCache::get_full_resid_decomposition`]),
//! scaled by the cached norm ([`ActivationCache::apply_ln_to_stack`]) and projected on token
//! directions ([`ActivationCache::logit_attrs`]).
//!
//! Every stack is [components, batch, pos, d_model] with one label per component. Unlike
//! TransformerLens, a position selection keeps the position axis (of length 1 for one position).

use crate::cache::ActivationCache;
use crate::config::Normalization;
use crate::error::{Error, Result};
use crate::hook_points::{BlockHook, HookPoint};
use crate::model::{upcast, HookedTransformer};
use candle_core::{Tensor, D};

/// Which positions of the sequence a stack keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Positions {
    #[default]
    All,
    /// The last position (TransformerLens's `pos_slice=-1`).
    Last,
    /// One position.
    At(usize),
}

impl Positions {
    /// `x` [.., pos, last] narrowed along its position axis (second to last).
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        let axis = x.rank() - 2;
        let n = x.dim(axis)?;
        let at = match self {
            Positions::All => return Ok(x.clone()),
            Positions::Last => n - 1,
            Positions::At(p) if p < n => p,
            Positions::At(p) => return Err(Error::PositionOutOfRange { pos: p, len: n }),
        };
        Ok(x.narrow(axis, at, 1)?)
    }
}

/// The arguments TransformerLens's residual-stream methods share.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResidOpts {
    /// Components up to the input of this layer; `None` (or `n_layers`) is the whole stream,
    /// immediately before the unembedding.
    pub layer: Option<usize>,
    /// Decompose the MLP's input (`resid_mid`) of `layer` rather than its attention input.
    pub mlp_input: bool,
    /// Scale each component by the norm's cached scale (centring first for LayerNorm).
    pub apply_ln: bool,
    pub pos: Positions,
}

/// Which MLP neurons [`ActivationCache::stack_neuron_results`] stacks in each layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Neurons {
    All,
    /// These neuron indices in every layer.
    Indices(Vec<usize>),
    /// The `k` neurons of each layer with the largest mean |activation| over the batch and the
    /// selected positions, in index order.
    TopK(usize),
}

/// Which residual components [`ActivationCache::decompose_resid`] keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    All,
    Attn,
    Mlp,
}

/// Components of the residual stream [components, batch, pos, d_model] and their labels
/// (`0_pre`, `final_post`, `L3H2`, `L1N17`, `2_mlp_out`, `embed`, `bias`, ...).
#[derive(Debug, Clone)]
pub struct ResidStack {
    pub stack: Tensor,
    pub labels: Vec<String>,
}

impl ActivationCache {
    fn resolve_layer(&self, model: &HookedTransformer, layer: Option<usize>) -> Result<usize> {
        let n = model.cfg.n_layers;
        match layer {
            None => Ok(n),
            Some(l) if l <= n => Ok(l),
            Some(l) => Err(Error::LayerOutOfRange {
                layer: l,
                n_layers: n,
            }),
        }
    }

    /// The residual stream entering each layer up to `opts.layer` (`{l}_pre`), with
    /// `{l}_mid` between when `incl_mid` (attention-only models have none: their mid would be
    /// the next `_pre`), and `final_post` for the whole stream. With
    /// `apply_ln` the final entry set goes through the real final norm (statistics recomputed
    /// per entry, as TransformerLens 4.3 does for the logit lens); a stack stopping earlier is
    /// scaled by that layer's cached scale.
    pub fn accumulated_resid(
        &self,
        model: &HookedTransformer,
        opts: &ResidOpts,
        incl_mid: bool,
    ) -> Result<ResidStack> {
        let n = model.cfg.n_layers;
        let layer = self.resolve_layer(model, opts.layer)?;
        // A parallel block (GPT-NeoX) has no resid_mid: its MLP reads resid_pre.
        let incl_mid = incl_mid && !model.cfg.attn_only && !model.cfg.parallel_attn_mlp;
        let mlp_input = opts.mlp_input && !model.cfg.parallel_attn_mlp;
        let (mut parts, mut labels) = (vec![], vec![]);
        for l in 0..=layer {
            if l == n {
                parts.push(self.block(n - 1, BlockHook::ResidPost)?.clone());
                labels.push("final_post".to_string());
                continue;
            }
            parts.push(self.block(l, BlockHook::ResidPre)?.clone());
            labels.push(format!("{l}_pre"));
            if (incl_mid && l < layer) || (mlp_input && l == layer) {
                parts.push(self.block(l, BlockHook::ResidMid)?.clone());
                labels.push(format!("{l}_mid"));
            }
        }
        let stack = stack_at(&parts, opts.pos)?;
        let stack = match (opts.apply_ln, layer == n) {
            (false, _) => stack,
            (true, true) => final_norm_each(model, &stack)?,
            (true, false) => self.apply_ln_to_stack(model, &stack, opts)?,
        };
        Ok(ResidStack { stack, labels })
    }

    /// The outputs that add up to the residual stream entering `opts.layer`: `embed`,
    /// `pos_embed` (when `incl_embeds`), then `{l}_attn_out` and `{l}_mlp_out` per layer as
    /// `mode` selects.
    pub fn decompose_resid(
        &self,
        model: &HookedTransformer,
        opts: &ResidOpts,
        mode: Mode,
        incl_embeds: bool,
    ) -> Result<ResidStack> {
        let layer = self.resolve_layer(model, opts.layer)?;
        let incl_attn = mode != Mode::Mlp;
        let incl_mlp = mode != Mode::Attn && !model.cfg.attn_only;
        let (mut parts, mut labels) = (vec![], vec![]);
        if incl_embeds {
            self.push_embeds(&mut parts, &mut labels)?;
        }
        for l in 0..layer {
            if incl_attn {
                parts.push(self.block(l, BlockHook::AttnOut)?.clone());
                labels.push(format!("{l}_attn_out"));
            }
            if incl_mlp {
                parts.push(self.block(l, BlockHook::MlpOut)?.clone());
                labels.push(format!("{l}_mlp_out"));
            }
        }
        // The MLP of a sequential block also reads its own layer's attention output.
        if opts.mlp_input && incl_attn && !model.cfg.parallel_attn_mlp {
            parts.push(self.block(layer, BlockHook::AttnOut)?.clone());
            labels.push(format!("{layer}_attn_out"));
        }
        let stack = stack_at(&parts, opts.pos)?;
        self.finish(model, stack, labels, opts)
    }

    fn push_embeds(&self, parts: &mut Vec<Tensor>, labels: &mut Vec<String>) -> Result<()> {
        parts.push(self.get(HookPoint::Embed)?.clone());
        labels.push("embed".into());
        if let Ok(p) = self.get(HookPoint::PosEmbed) {
            parts.push(p.clone());
            labels.push("pos_embed".into());
        }
        Ok(())
    }

    /// Each head's output (`hook_result`, or `hook_z` times `W_O` when it was not cached) for
    /// the layers before `opts.layer`, labelled `L{l}H{h}`. Excludes `b_O`.
    pub fn stack_head_results(
        &self,
        model: &HookedTransformer,
        opts: &ResidOpts,
    ) -> Result<ResidStack> {
        let layer = self.resolve_layer(model, opts.layer)?;
        no_post_norms(model, "heads")?;
        let (mut parts, mut labels) = (vec![], vec![]);
        for l in 0..layer {
            // [batch, pos, H, d_model] -> H entries of [batch, pos, d_model]
            let result = match self.block(l, BlockHook::Result) {
                Ok(r) => upcast(r)?,
                Err(_) => {
                    let z = upcast(self.block(l, BlockHook::Z)?)?;
                    let w_o = upcast(&model.W_O(l)?)?; // [H, d_head, d_model]
                    z.transpose(1, 2)?
                        .contiguous()?
                        .broadcast_matmul(&w_o.unsqueeze(0)?)?
                        .transpose(1, 2)?
                }
            };
            for h in 0..model.cfg.n_heads {
                parts.push(result.narrow(2, h, 1)?.squeeze(2)?);
                labels.push(format!("L{l}H{h}"));
            }
        }
        let stack = self.stack_or_empty(&parts, opts.pos)?;
        self.finish(model, stack, labels, opts)
    }

    /// Each MLP neuron's output (`mlp.hook_post[.., n]` times row `n` of `W_out`) for the
    /// layers before `opts.layer`, labelled `L{l}N{n}`, for the `neurons` selected in each
    /// layer. Excludes `b_out`. The stack is neurons × batch × pos × d_model: for every neuron of
    /// a large model over many positions prefer [`Self::neuron_logit_attrs`], which never builds
    /// it, or select a few with [`Neurons::TopK`].
    pub fn stack_neuron_results(
        &self,
        model: &HookedTransformer,
        opts: &ResidOpts,
        neurons: &Neurons,
    ) -> Result<ResidStack> {
        let layer = self.resolve_layer(model, opts.layer)?;
        no_post_norms(model, "neurons")?;
        let d_mlp = model.cfg.d_mlp;
        let (mut parts, mut labels) = (vec![], vec![]);
        for l in 0..layer {
            let post = opts
                .pos
                .apply(&upcast(self.block(l, BlockHook::MlpPost)?)?)?;
            let w_out = upcast(&model.block(l)?.mlp.as_ref().ok_or_else(no_mlp)?.w_out)?;
            let chosen: Vec<usize> = match neurons {
                Neurons::All => (0..d_mlp).collect(),
                Neurons::Indices(ix) => {
                    if let Some(&bad) = ix.iter().find(|&&n| n >= d_mlp) {
                        return Err(Error::Invalid(format!(
                            "neuron {bad} is out of range: each MLP has {d_mlp} neurons (0..{d_mlp})"
                        )));
                    }
                    ix.clone()
                }
                Neurons::TopK(k) => {
                    // Mean |activation| over batch and the selected positions: [d_mlp].
                    let strength: Vec<f32> = post.abs()?.mean((0, 1))?.to_vec1()?;
                    let mut top: Vec<usize> = super::metrics::top_k(&strength, *k)
                        .into_iter()
                        .map(|(n, _)| n as usize)
                        .collect();
                    top.sort_unstable();
                    top
                }
            };
            for n in chosen {
                // [batch, pos, 1] * [d_model]
                let act = post.narrow(2, n, 1)?;
                parts.push(act.broadcast_mul(&w_out.get(n)?)?);
                labels.push(format!("L{l}N{n}"));
            }
        }
        let stack = self.stack_or_empty(&parts, Positions::All)?;
        self.finish(model, stack, labels, opts)
    }

    /// Every head, every MLP neuron (`expand_neurons`) or MLP layer, the embeddings, and the
    /// summed biases (`b_O`, plus `b_out` when neurons are expanded, as `bias`): they add up to
    /// the residual stream entering `opts.layer` (the final `hook_resid_post` by default).
    pub fn get_full_resid_decomposition(
        &self,
        model: &HookedTransformer,
        opts: &ResidOpts,
        expand_neurons: bool,
    ) -> Result<ResidStack> {
        let layer = self.resolve_layer(model, opts.layer)?;
        let raw = ResidOpts {
            apply_ln: false,
            ..*opts
        };
        let heads = self.stack_head_results(
            model,
            &ResidOpts {
                layer: Some(layer + (opts.mlp_input && !model.cfg.parallel_attn_mlp) as usize),
                ..raw
            },
        )?;
        let (mut stacks, mut labels) = (vec![heads.stack], heads.labels);
        if !model.cfg.attn_only && layer > 0 {
            let mlp = match expand_neurons {
                true => self.stack_neuron_results(model, &raw, &Neurons::All)?,
                false => self.decompose_resid(model, &raw, Mode::Mlp, false)?,
            };
            stacks.push(mlp.stack);
            labels.extend(mlp.labels);
        }
        let embeds = self.decompose_resid(
            model,
            &ResidOpts {
                layer: Some(0),
                mlp_input: false,
                ..raw
            },
            Mode::All,
            true,
        )?;
        stacks.push(embeds.stack);
        labels.extend(embeds.labels);
        let bias = accumulated_bias(model, layer, opts.mlp_input, expand_neurons)?;
        let like = stacks[0].narrow(0, 0, 0)?; // [0, batch, pos, d_model]
        let shape = [1, like.dim(1)?, like.dim(2)?, model.cfg.d_model];
        stacks.push(bias.broadcast_as(&shape[..])?.contiguous()?);
        labels.push("bias".into());
        let stack = Tensor::cat(&stacks, 0)?;
        self.finish(model, stack, labels, opts)
    }

    /// `stack` [components, batch, pos, d_model] centred (LayerNorm) and divided by the cached
    /// scale of the norm reading `opts.layer` (`ln1`, `ln2` with `mlp_input`, `ln_final` for
    /// the whole stream): what TransformerLens's `apply_ln_to_stack` computes. The norm's weight
    /// and bias are not applied (folded into the weights after `fold_ln`).
    pub fn apply_ln_to_stack(
        &self,
        model: &HookedTransformer,
        stack: &Tensor,
        opts: &ResidOpts,
    ) -> Result<Tensor> {
        let norm = model.cfg.normalization_type;
        if norm == Normalization::None {
            return Ok(stack.clone());
        }
        let layer = self.resolve_layer(model, opts.layer)?;
        let point = match (layer == model.cfg.n_layers, opts.mlp_input) {
            (true, _) => HookPoint::LnFinalScale,
            (false, false) => HookPoint::Block(layer, BlockHook::Ln1Scale),
            (false, true) => HookPoint::Block(layer, BlockHook::Ln2Scale),
        };
        let scale = opts.pos.apply(&upcast(self.get(point)?)?)?; // [batch, pos, 1]
        let mut x = upcast(stack)?;
        if matches!(norm, Normalization::LN | Normalization::LNPre) {
            x = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        }
        Ok(x.broadcast_div(&scale.unsqueeze(0)?)?)
    }

    /// Each component's attribution to `tokens` (one id per batch row): the component, scaled
    /// by the cached final norm, dotted with the token's unembedding direction `W_U[:, token]`,
    /// minus that of `incorrect` when given: [components, batch, pos]. `pos` must be the
    /// selection the stack was built with.
    pub fn logit_attrs(
        &self,
        model: &HookedTransformer,
        stack: &Tensor,
        tokens: &[u32],
        incorrect: Option<&[u32]>,
        pos: Positions,
    ) -> Result<Tensor> {
        let dirs = logit_directions(model, tokens, incorrect, stack.dim(1)?)?;
        self.attrs_along(model, stack, &dirs, pos)
    }

    /// `stack` [c, batch, pos, d_model] scaled by the cached final norm and dotted with one
    /// direction per batch row `dirs` [batch, d_model]: [c, batch, pos].
    pub(crate) fn attrs_along(
        &self,
        model: &HookedTransformer,
        stack: &Tensor,
        dirs: &Tensor,
        pos: Positions,
    ) -> Result<Tensor> {
        let opts = ResidOpts {
            pos,
            ..Default::default()
        };
        let scaled = self.apply_ln_to_stack(model, stack, &opts)?;
        Ok(scaled
            .broadcast_mul(&dirs.unsqueeze(1)?.unsqueeze(0)?)?
            .sum(D::Minus1)?)
    }

    /// [`Self::logit_attrs`] of every neuron of the layers before `opts.layer` without building
    /// the neuron stack: (post / scale) × (W_out · d − mean(W_out) Σd) per neuron (the mean term
    /// for LayerNorm only), one layer at a time. [layers × d_mlp, batch, pos] and labels.
    pub fn neuron_logit_attrs(
        &self,
        model: &HookedTransformer,
        opts: &ResidOpts,
        tokens: &[u32],
        incorrect: Option<&[u32]>,
    ) -> Result<(Tensor, Vec<String>)> {
        let b = self.get(HookPoint::LnFinalScale)?.dim(0)?;
        let dirs = logit_directions(model, tokens, incorrect, b)?;
        self.neuron_attrs_along(model, opts, &dirs)
    }

    /// [`Self::neuron_logit_attrs`] along given directions `dirs` [batch, d_model].
    pub(crate) fn neuron_attrs_along(
        &self,
        model: &HookedTransformer,
        opts: &ResidOpts,
        dirs: &Tensor,
    ) -> Result<(Tensor, Vec<String>)> {
        let layer = self.resolve_layer(model, opts.layer)?;
        no_post_norms(model, "neurons")?;
        let scale = opts
            .pos
            .apply(&upcast(self.get(HookPoint::LnFinalScale)?)?)?;
        let b = scale.dim(0)?;
        let centre = matches!(
            model.cfg.normalization_type,
            Normalization::LN | Normalization::LNPre
        );
        let (mut parts, mut labels) = (vec![], vec![]);
        for l in 0..layer {
            let w_out = upcast(&model.block(l)?.mlp.as_ref().ok_or_else(no_mlp)?.w_out)?;
            // [d_mlp, batch]: each neuron's output row projected on each row's direction.
            let mut proj = w_out.matmul(&dirs.t()?)?;
            if centre {
                let mean = w_out.mean_keepdim(1)?; // [d_mlp, 1]
                proj = (proj - mean.broadcast_mul(&dirs.sum_keepdim(1)?.t()?)?)?;
            }
            let post = opts
                .pos
                .apply(&upcast(self.block(l, BlockHook::MlpPost)?)?)?; // [b, p, m]
            let attr = post
                .broadcast_div(&scale)?
                .broadcast_mul(&proj.t()?.unsqueeze(1)?)?; // [b, p, m]
            parts.push(attr.permute((2, 0, 1))?);
            labels.extend((0..model.cfg.d_mlp).map(|n| format!("L{l}N{n}")));
        }
        let attrs = match parts.is_empty() {
            true => Tensor::zeros(
                (0, b, scale.dim(1)?),
                candle_core::DType::F32,
                scale.device(),
            )?,
            false => Tensor::cat(&parts, 0)?,
        };
        Ok((attrs, labels))
    }

    fn stack_or_empty(&self, parts: &[Tensor], pos: Positions) -> Result<Tensor> {
        match parts.is_empty() {
            false => stack_at(parts, pos),
            // No components (layer 0): an empty stack shaped like the embeddings.
            true => Ok(pos
                .apply(&upcast(self.get(HookPoint::Embed)?)?)?
                .unsqueeze(0)?
                .narrow(0, 0, 0)?),
        }
    }

    fn finish(
        &self,
        model: &HookedTransformer,
        stack: Tensor,
        labels: Vec<String>,
        opts: &ResidOpts,
    ) -> Result<ResidStack> {
        let stack = match opts.apply_ln {
            true => self.apply_ln_to_stack(model, &stack, opts)?,
            false => stack,
        };
        Ok(ResidStack { stack, labels })
    }
}

/// `W_U[:, token] − W_U[:, incorrect]` per batch row: [batch, d_model].
pub fn logit_directions(
    model: &HookedTransformer,
    tokens: &[u32],
    incorrect: Option<&[u32]>,
    batch: usize,
) -> Result<Tensor> {
    let pick = |ids: &[u32]| -> Result<Tensor> {
        if ids.len() != batch {
            return Err(Error::Invalid(format!(
                "{} token ids for a batch of {batch}: give one per batch row",
                ids.len()
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= model.cfg.d_vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary (d_vocab {})",
                model.cfg.d_vocab
            )));
        }
        model.unembed_rows(ids)
    };
    let dirs = pick(tokens)?;
    match incorrect {
        Some(wrong) => Ok((dirs - pick(wrong)?)?),
        None => Ok(dirs),
    }
}

/// The attention output biases of the layers before `layer` (and of `layer` itself with
/// `mlp_input`), plus their MLP output biases when `include_mlp`: [d_model].
pub fn accumulated_bias(
    model: &HookedTransformer,
    layer: usize,
    mlp_input: bool,
    include_mlp: bool,
) -> Result<Tensor> {
    let mut acc = Tensor::zeros(model.cfg.d_model, candle_core::DType::F32, model.device())?;
    let own_attn = mlp_input && !model.cfg.parallel_attn_mlp;
    for l in 0..layer + own_attn as usize {
        let block = model.block(l)?;
        if let Some(b) = &block.attn.b_o {
            acc = (acc + upcast(b)?)?;
        }
        let mlp_bias = block.mlp.as_ref().and_then(|m| m.b_out.as_ref());
        if let (true, true, Some(b)) = (include_mlp, l < layer, mlp_bias) {
            acc = (acc + upcast(b)?)?;
        }
    }
    Ok(acc)
}

/// Each entry of `stack` [components, batch, pos, d_model] through the model's real final norm
/// (its statistics recomputed per entry, weight and bias applied).
fn final_norm_each(model: &HookedTransformer, stack: &Tensor) -> Result<Tensor> {
    let (c, b, p, d) = stack.dims4()?;
    // [c, b, p, d] -> [c * b, p, d]: the norm works per vector, so entries can share a batch.
    let flat = stack.reshape((c * b, p, d))?;
    let normed = model.ln_final.forward(
        &flat,
        HookPoint::LnFinalScale,
        HookPoint::LnFinalNormalized,
        &mut crate::Hooks::none(),
    )?;
    Ok(upcast(&normed)?.reshape((c, b, p, d))?)
}

/// `parts` (each [batch, pos, d_model]) narrowed to `pos` and stacked: [parts, batch, pos', d].
fn stack_at(parts: &[Tensor], pos: Positions) -> Result<Tensor> {
    let parts = parts
        .iter()
        .map(|t| pos.apply(&upcast(t)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&parts, 0)?)
}

/// Refuses a per-head or per-neuron decomposition of a model that normalises each sublayer's
/// output (Gemma 2): `ln1_post` rescales the sum of the heads, so their separate outputs do not
/// add up to `hook_attn_out` (nor the neurons' to `hook_mlp_out`).
fn no_post_norms(model: &HookedTransformer, units: &str) -> Result<()> {
    match model.cfg.use_normalization_before_and_after {
        false => Ok(()),
        true => Err(Error::Unsupported(format!(
            "splitting the residual stream into {units} on {}: its post-sublayer norms \
             (ln1_post, ln2_post) rescale the sum of the {units}' outputs, so the parts would not \
             add up; decompose by layer (hook_attn_out, hook_mlp_out) instead",
            model.cfg.original_architecture
        ))),
    }
}

fn no_mlp() -> Error {
    Error::Unsupported("this model is attention-only: it has no MLP neurons".into())
}
