//! `HookedTransformer`: a transformer whose every intermediate activation can be read or replaced.

mod attention;
mod fused_attention;
mod kernels;
mod mlp;
mod norm;
mod packed;
mod positions;

pub use attention::{apply_rotary, rotary_tables, Attention, LayerKv};
pub use mlp::Mlp;
pub use norm::{upcast, Norm};
pub use packed::Packed;
pub use positions::sinusoidal_table;

use crate::cache::ActivationCache;
use crate::config::{ModelConfig, Normalization, Positional};
use crate::error::{Error, Result};
use crate::hook_points::{BlockHook, HookPoint, NameFilter};
use crate::hooks::Hooks;
use crate::intervention::Fired;
use crate::weights::Weights;
use candle_core::{DType, Device, Tensor};

/// One transformer block: attention and (unless attention-only) an MLP, each reading a
/// normalised residual stream and adding its output back: in sequence, or both from
/// `resid_pre` (`parallel_attn_mlp`, GPT-NeoX). Gemma 2 normalises each output again
/// (`ln1_post`, `ln2_post`) before adding it.
#[derive(Debug, Clone)]
pub struct Block {
    pub ln1: Norm,
    pub attn: Attention,
    pub ln1_post: Option<Norm>,
    pub ln2: Option<Norm>,
    pub mlp: Option<Mlp>,
    pub ln2_post: Option<Norm>,
    parallel: bool,
    layer: usize,
}

impl Block {
    fn load(w: &Weights, layer: usize, cfg: &ModelConfig) -> Result<Self> {
        let norm = |name: &str, kind| {
            Norm::load(
                w,
                &format!("blocks.{layer}.{name}"),
                kind,
                cfg.d_model,
                cfg.eps,
            )
        };
        let pre = cfg.normalization_type;
        // Nothing linear reads a post-norm's output, so weight processing never folds it.
        let post = |name: &str| {
            cfg.use_normalization_before_and_after
                .then(|| norm(name, pre.unfolded()))
                .transpose()
        };
        let (ln2, mlp) = match cfg.attn_only {
            true => (None, None),
            false => (Some(norm("ln2", pre)?), Some(Mlp::load(w, layer, cfg)?)),
        };
        Ok(Self {
            ln1: norm("ln1", pre)?,
            attn: Attention::load(w, layer, cfg)?,
            ln1_post: post("ln1_post")?,
            ln2,
            mlp,
            ln2_post: match cfg.attn_only {
                true => None,
                false => post("ln2_post")?,
            },
            parallel: cfg.parallel_attn_mlp,
            layer,
        })
    }

    fn forward(
        &self,
        resid: Tensor,
        rope: Option<&(Tensor, Tensor)>,
        mask: &Tensor,
        kv: Option<&mut LayerKv>,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let hp = |h| HookPoint::Block(self.layer, h);
        let resid_pre = hooks.apply(hp(BlockHook::ResidPre), resid)?;
        let x = self.ln1.forward(
            &resid_pre,
            hp(BlockHook::Ln1Scale),
            hp(BlockHook::Ln1Normalized),
            hooks,
        )?;
        let attn_out = self.attn.forward(&x, rope, mask, kv, hooks)?;
        let attn_out = match &self.ln1_post {
            Some(n) => n.forward(
                &attn_out,
                hp(BlockHook::Ln1PostScale),
                hp(BlockHook::Ln1PostNormalized),
                hooks,
            )?,
            None => attn_out,
        };
        let attn_out = hooks.apply(hp(BlockHook::AttnOut), attn_out)?;
        let (ln2, mlp) = match (&self.ln2, &self.mlp) {
            (Some(ln2), Some(mlp)) => (ln2, mlp),
            _ => return hooks.apply(hp(BlockHook::ResidPost), add(&resid_pre, &attn_out)?),
        };
        // Parallel blocks: the MLP reads resid_pre too, and there is no resid_mid.
        let resid_mid = match self.parallel {
            true => resid_pre.clone(),
            false => hooks.apply(hp(BlockHook::ResidMid), add(&resid_pre, &attn_out)?)?,
        };
        let x = ln2.forward(
            &resid_mid,
            hp(BlockHook::Ln2Scale),
            hp(BlockHook::Ln2Normalized),
            hooks,
        )?;
        let mlp_out = mlp.forward(&x, hooks)?;
        let mlp_out = match &self.ln2_post {
            Some(n) => n.forward(
                &mlp_out,
                hp(BlockHook::Ln2PostScale),
                hp(BlockHook::Ln2PostNormalized),
                hooks,
            )?,
            None => mlp_out,
        };
        let mlp_out = hooks.apply(hp(BlockHook::MlpOut), mlp_out)?;
        let resid_post = match self.parallel {
            true => add(&add(&resid_pre, &attn_out)?, &mlp_out)?,
            false => add(&resid_mid, &mlp_out)?,
        };
        hooks.apply(hp(BlockHook::ResidPost), resid_post)
    }
}

/// What one forward pass produced.
#[derive(Debug, Clone)]
pub struct Run {
    /// The logits [batch, pos, d_vocab]; for a pass with `stop_at_layer`, the residual stream
    /// [batch, pos, d_model] entering that layer.
    pub output: Tensor,
    /// The activations the hooks' cache recorded (empty if none was asked for).
    pub cache: ActivationCache,
    /// Each hook and intervention with the number of times it fired, in the order added.
    pub fired: Vec<Fired>,
}

/// A transformer language model with TransformerLens's hook points.
///
/// ```no_run
/// # fn main() -> hooklens::Result<()> {
/// use hooklens::{load_model, LoadOptions, NameFilter, BlockHook};
/// let (model, tok, _) = load_model(None, &LoadOptions::default())?; // the embedded model
/// let tokens = tok.to_tokens(&["ab ab ab"], true, model.device())?;
/// let (logits, cache) = model.run_with_cache(&tokens, NameFilter::All)?;
/// let pattern = cache.block(1, BlockHook::Pattern)?; // [batch, head, query, key]
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HookedTransformer {
    pub cfg: ModelConfig,
    /// [d_vocab, d_model]
    pub w_e: Tensor,
    /// [n_ctx, d_model]: learned positions, or the fixed sinusoidal table.
    pub w_pos: Option<Tensor>,
    pub blocks: Vec<Block>,
    pub ln_final: Norm,
    /// [d_model, d_vocab], a transposed view of a contiguous [d_vocab, d_model] tensor.
    pub w_u: Tensor,
    /// [d_vocab]
    pub b_u: Option<Tensor>,
    /// `w_u` packed for the forward's product.
    w_u_packed: Option<Packed>,
    /// Whether passes may yield NaN or Inf; when not (the default), a pass whose output holds
    /// them is an error naming the first hook point that did (see [`crate::finite`]).
    pub allow_nonfinite: bool,
    device: Device,
}

impl HookedTransformer {
    /// Builds the model from canonical weights (see [`Weights`]), checking every shape against `cfg`.
    pub fn new(cfg: ModelConfig, w: &Weights) -> Result<Self> {
        cfg.validate()?;
        let w_e = w.get("embed.W_E", &[cfg.d_vocab, cfg.d_model])?;
        let device = w_e.device().clone();
        let w_pos = match cfg.positional_embedding_type {
            Positional::Standard => Some(w.get("pos_embed.W_pos", &[cfg.n_ctx, cfg.d_model])?),
            Positional::Sinusoidal => {
                Some(sinusoidal_table(cfg.n_ctx, cfg.d_model, &device)?.to_dtype(w_e.dtype())?)
            }
            Positional::Rotary => None,
        };
        let blocks = (0..cfg.n_layers)
            .map(|l| Block::load(w, l, &cfg))
            .collect::<Result<_>>()?;
        // Stored [d_vocab, d_model] (as checkpoints hold it) and seen through a transposed view:
        // BLAS streams its rows for the few positions of a generation step at twice the speed,
        // and a row stride of d_vocab = 49152 (3·2¹⁴) thrashes the cache.
        let w_u = w
            .get("unembed.W_U", &[cfg.d_model, cfg.d_vocab])?
            .t()?
            .contiguous()?
            .t()?;
        Ok(Self {
            ln_final: Norm::load(w, "ln_final", cfg.normalization_type, cfg.d_model, cfg.eps)?,
            w_u_packed: Packed::new(&w_u)?,
            w_u,
            b_u: w.get_opt("unembed.b_U", &[cfg.d_vocab])?,
            w_e,
            w_pos,
            blocks,
            cfg,
            allow_nonfinite: false,
            device,
        })
    }

    /// Memory the packed copies of the weights will take once forwards make them (0 where the
    /// CPU packs nothing, or once they are made): what a memory budget planned from the
    /// resident size must hold back.
    pub fn packed_bytes_to_come(&self) -> u64 {
        let blocks = self.blocks.iter().flat_map(|b| {
            let mlp = b.mlp.iter().flat_map(|m| m.packed.iter());
            b.attn.packed.iter().chain(mlp)
        });
        let all = blocks.chain([&self.w_u_packed]);
        all.flatten().map(Packed::bytes_to_come).sum()
    }

    /// Frees the packed copies of the f32 weight matrices ([`Packed`], made by the first
    /// forward that reads them on CPUs with AVX-512 or AVX2): the weights then take half the
    /// memory, and the forward's products go through the general matmul (on Zen 4 1.1-1.8×
    /// slower; on Zen 3 1.2× at 128 tokens and 1.9× at 20, `examples/profile_forward.rs`).
    pub fn drop_packed_weights(&mut self) {
        self.w_u_packed = None;
        for block in &mut self.blocks {
            block.attn.packed = [None, None];
            if let Some(mlp) = &mut block.mlp {
                mlp.packed = [None, None];
            }
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.w_e.dtype()
    }

    /// One forward pass that records and intervenes: `hooks` may patch some hook points while
    /// its cache records others. Every hook must fire, or the run is an error.
    ///
    /// ```
    /// # fn main() -> hooklens::Result<()> {
    /// use hooklens::{load_model, BlockHook, HookPoint, Hooks, Intervention, LoadOptions, NameFilter, Site};
    /// let (model, tok, _) = load_model(None, &LoadOptions::default())?;
    /// let tokens = tok.to_tokens(&["abcd abcd"], true, model.device())?;
    /// let hooks = Hooks::none()
    ///     .intervene(Site::head(HookPoint::block(0, BlockHook::Z), 1), Intervention::Zero)
    ///     .with_cache(NameFilter::regex("blocks.1.attn.hook_pattern")?);
    /// let run = model.run(&tokens, hooks)?;
    /// let pattern = run.cache.block(1, BlockHook::Pattern)?; // with L0H1 ablated
    /// assert_eq!(run.fired[0].count, 1);
    /// # Ok(()) }
    /// ```
    pub fn run(&self, tokens: &Tensor, hooks: Hooks) -> Result<Run> {
        self.run_range(tokens, 0, None, hooks)
    }

    /// [`Self::run`] over layers `start_at_layer..stop_at_layer` (see [`Self::forward_range`]).
    pub fn run_range(
        &self,
        input: &Tensor,
        start_at_layer: usize,
        stop_at_layer: Option<usize>,
        mut hooks: Hooks,
    ) -> Result<Run> {
        let output = self.forward_range(input, start_at_layer, stop_at_layer, &mut hooks)?;
        Ok(Run {
            output,
            cache: hooks.take_cache(),
            fired: hooks.fired(),
        })
    }

    /// Logits [batch, pos, d_vocab] for token ids [batch, pos], with `hooks` reading or
    /// replacing activations on the way. `hooks` keeps its cache and fire counts, so one set of
    /// hooks can serve several passes.
    pub fn forward(&self, tokens: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        self.forward_range(tokens, 0, None, hooks)
    }

    /// Runs layers `start_at_layer..stop_at_layer` (TransformerLens's `start_at_layer` /
    /// `stop_at_layer`). With `start_at_layer == 0`, `input` is token ids [batch, pos]; otherwise it
    /// is the residual stream [batch, pos, d_model] entering that layer. With a stop layer the
    /// result is the residual stream entering it (`Some(n_layers)`: the final residual stream,
    /// before `ln_final`, as in TransformerLens); without one, the logits. A hook whose site
    /// this range never reaches, or that does not fire, is an error.
    pub fn forward_range(
        &self,
        input: &Tensor,
        start_at_layer: usize,
        stop_at_layer: Option<usize>,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let out = self.forward_unchecked(input, start_at_layer, stop_at_layer, hooks)?;
        let what = match stop_at_layer {
            None => "the logits",
            Some(_) => "the residual stream",
        };
        self.check_finite(&out, what, |watch| {
            self.forward_unchecked(input, start_at_layer, stop_at_layer, watch)
        })?;
        Ok(out)
    }

    /// [`Self::forward_range`] without the check for NaN and Inf.
    pub(crate) fn forward_unchecked(
        &self,
        input: &Tensor,
        start_at_layer: usize,
        stop_at_layer: Option<usize>,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let n = self.cfg.n_layers;
        let stop = stop_at_layer.unwrap_or(n);
        if start_at_layer > n {
            return Err(Error::LayerOutOfRange {
                layer: start_at_layer,
                n_layers: n,
            });
        }
        if stop > n || stop < start_at_layer {
            return Err(Error::Invalid(format!(
                "stop_at_layer {stop} must lie in {start_at_layer}..={n}"
            )));
        }
        self.check_hooks(hooks, start_at_layer, stop, stop_at_layer.is_none())?;
        hooks.set_window(0, false);
        let before = hooks.counts();
        let resid = if start_at_layer == 0 {
            self.embed(input, 0, hooks)?
        } else {
            let (_, p, d) = input.dims3()?;
            if d != self.cfg.d_model {
                return Err(Error::ShapeMismatch {
                    what: "residual stream input".into(),
                    expected: vec![0, p, self.cfg.d_model],
                    got: input.dims().to_vec(),
                });
            }
            input.to_dtype(self.dtype())?
        };
        let resid = self.run_blocks(resid, start_at_layer, stop, 0, None, hooks)?;
        let out = match stop_at_layer {
            Some(_) => resid,
            None => self.unembed(&resid, hooks)?,
        };
        hooks.check_fired_since(&before)?;
        Ok(out)
    }

    /// The final residual stream [batch, p, d_model] (before `ln_final`) of positions
    /// `offset..offset + p`, from the residual stream `resid` [batch, p, d_model] entering
    /// `start_at_layer` at those positions. `past` holds, for every layer (entries before
    /// `start_at_layer` unused), the keys and values of positions `0..offset` with `resid`'s
    /// batch size; it is not changed.
    ///
    /// This is how a sweep recomputes only what an intervention can change: the layers from
    /// the intervened one, and (causal attention) the positions from the intervened one.
    /// Hook sites name absolute positions; a site before `offset` is not in this pass.
    pub(crate) fn forward_suffix(
        &self,
        resid: &Tensor,
        start_at_layer: usize,
        offset: usize,
        past: &[LayerKv],
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let n = self.cfg.n_layers;
        if start_at_layer >= n {
            return Err(Error::LayerOutOfRange {
                layer: start_at_layer,
                n_layers: n,
            });
        }
        if past.len() != n {
            return Err(Error::Invalid(format!(
                "the KV cache has {} layers, the model {n}",
                past.len()
            )));
        }
        let (_, p, d) = resid.dims3()?;
        if d != self.cfg.d_model || offset + p > self.cfg.n_ctx {
            return Err(Error::ShapeMismatch {
                what: format!("residual stream input at positions {offset}.."),
                expected: vec![0, p, self.cfg.d_model],
                got: resid.dims().to_vec(),
            });
        }
        self.check_hooks(hooks, start_at_layer, n, false)?;
        hooks.set_window(offset, true);
        let before = hooks.counts();
        let run = |hooks: &mut Hooks| {
            let mut kv = past.to_vec();
            let resid = resid.to_dtype(self.dtype())?;
            self.run_blocks(resid, start_at_layer, n, offset, Some(&mut kv), hooks)
        };
        let out = run(hooks)?;
        hooks.check_fired_since(&before)?;
        self.check_finite(&out, "the residual stream", |watch| {
            watch.set_window(offset, true);
            run(watch)
        })?;
        Ok(out)
    }

    /// `ln_final` and the unembedding: logits [.., d_vocab] from the final residual stream
    /// [.., d_model], in f32 for half-precision models (a bf16 logit of 25 is only good to 0.1).
    pub fn unembed(&self, resid: &Tensor, hooks: &mut Hooks) -> Result<Tensor> {
        let x = self.ln_final.forward(
            resid,
            HookPoint::LnFinalScale,
            HookPoint::LnFinalNormalized,
            hooks,
        )?;
        let b_u = self.b_u.as_ref().map(upcast).transpose()?;
        let logits = linear(
            &upcast(&x)?,
            &upcast(&self.w_u)?,
            self.w_u_packed.as_ref(),
            b_u.as_ref(),
        )?;
        self.soft_cap_logits(logits)
    }

    /// The unembedding directions of `ids`, `W_U[:, ids]` as rows [ids.len(), d_model], in f32.
    pub fn unembed_rows(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(ids, &self.device)?;
        // W_U's storage is [d_vocab, d_model]: rows select without a copy of the matrix.
        let rows = self.w_u.t()?.contiguous()?.index_select(&ids, 0)?;
        Ok(rows.to_dtype(DType::F32)?)
    }

    /// The final logit soft-cap `c·tanh(logits / c)` where the model has one (Gemma 2), for
    /// code that computes some logits itself rather than through [`Self::unembed`].
    pub fn soft_cap_logits(&self, logits: Tensor) -> Result<Tensor> {
        match self.cfg.output_logits_soft_cap {
            Some(c) => Ok(((logits / c)?.tanh()? * c)?),
            None => Ok(logits),
        }
    }

    /// Token + position embeddings for `tokens` starting at position `offset`.
    fn embed(&self, tokens: &Tensor, offset: usize, hooks: &mut Hooks) -> Result<Tensor> {
        let (b, p) = tokens.dims2().map_err(|_| Error::ShapeMismatch {
            what: "token ids".into(),
            expected: vec![0, 0],
            got: tokens.dims().to_vec(),
        })?;
        self.check_tokens(tokens, offset + p)?;
        let ids = tokens.to_dtype(DType::U32)?.flatten_all()?;
        let embed = self
            .w_e
            .index_select(&ids, 0)?
            .reshape((b, p, self.cfg.d_model))?;
        let embed = hooks.apply(HookPoint::Embed, embed)?;
        match &self.w_pos {
            Some(w_pos) => {
                let pos = w_pos
                    .narrow(0, offset, p)?
                    .unsqueeze(0)?
                    .repeat((b, 1, 1))?;
                let pos = hooks.apply(HookPoint::PosEmbed, pos)?;
                add(&embed, &pos)
            }
            None => Ok(embed),
        }
    }

    /// Blocks `start..stop` over `resid` [batch, p, d_model] at positions `offset..offset + p`.
    fn run_blocks(
        &self,
        mut resid: Tensor,
        start: usize,
        stop: usize,
        offset: usize,
        mut kv: Option<&mut [LayerKv]>,
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        let p = resid.dim(1)?;
        // One table per distinct (base, factor): Gemma 3's local layers have their own.
        let mut ropes: Vec<((f64, f64), (Tensor, Tensor))> = vec![];
        if self.cfg.positional_embedding_type == Positional::Rotary {
            for l in start..stop {
                let rope = self.cfg.rope(l);
                if !ropes.iter().any(|(r, _)| *r == rope) {
                    let d = self.cfg.rotary_dim();
                    ropes.push((rope, rotary_tables(offset, p, d, rope, &self.device)?));
                }
            }
        }
        let global = causal_mask(p, offset, None, &self.device)?;
        let local = match self.cfg.window_size {
            Some(w) if !self.cfg.attn_types.is_empty() => {
                Some(causal_mask(p, offset, Some(w), &self.device)?)
            }
            _ => None,
        };
        for l in start..stop {
            let layer_kv = kv.as_deref_mut().map(|kv| &mut kv[l]);
            let mask = match (self.blocks[l].attn.window(), &local) {
                (Some(_), Some(local)) => local,
                _ => &global,
            };
            let rope = (ropes.iter()).find_map(|(r, t)| (*r == self.cfg.rope(l)).then_some(t));
            resid = self.blocks[l].forward(resid, rope, mask, layer_kv, hooks)?;
        }
        Ok(resid)
    }

    /// One generation step: runs `tokens` [batch, new] at positions after those already in
    /// `kv` (one entry per layer), appending their keys and values. Returns the logits of the
    /// new positions.
    pub fn forward_with_kv(
        &self,
        tokens: &Tensor,
        kv: &mut [LayerKv],
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        self.check_hooks(hooks, 0, self.cfg.n_layers, true)?;
        let resid = self.resid_with_kv(tokens, kv, hooks)?;
        self.unembed(&resid, hooks)
    }

    /// [`Self::forward_with_kv`] up to the final residual stream [batch, new, d_model] (before
    /// `ln_final`): a sweep unembeds only the positions its metric reads.
    pub(crate) fn resid_with_kv(
        &self,
        tokens: &Tensor,
        kv: &mut [LayerKv],
        hooks: &mut Hooks,
    ) -> Result<Tensor> {
        if kv.len() != self.cfg.n_layers {
            return Err(Error::Invalid(format!(
                "the KV cache has {} layers, the model {}",
                kv.len(),
                self.cfg.n_layers
            )));
        }
        let offset = kv[0].k.as_ref().map_or(Ok(0), |k| k.dim(2))?;
        hooks.set_window(offset, true);
        let resid = self.embed(tokens, offset, hooks)?;
        self.run_blocks(resid, 0, self.cfg.n_layers, offset, Some(kv), hooks)
    }

    /// Logits and the activations named by `filter` (TransformerLens's `run_with_cache`).
    pub fn run_with_cache(
        &self,
        tokens: &Tensor,
        filter: NameFilter,
    ) -> Result<(Tensor, ActivationCache)> {
        let run = self.run(tokens, Hooks::none().with_cache(filter))?;
        Ok((run.output, run.cache))
    }

    /// Logits with `hooks` applied (TransformerLens's `run_with_hooks`).
    ///
    /// ```no_run
    /// # fn main() -> hooklens::Result<()> {
    /// # use hooklens::{load_model, LoadOptions, Hooks, HookPoint, BlockHook};
    /// # let (model, tok, _) = load_model(None, &LoadOptions::default())?;
    /// # let tokens = tok.to_tokens(&["ab ab"], true, model.device())?;
    /// // Double layer 1's attention output with a closure.
    /// let hooks = Hooks::none().add(HookPoint::Block(1, BlockHook::AttnOut), |x, _| {
    ///     Ok(Some((x * 2.0)?))
    /// });
    /// let logits = model.run_with_hooks(&tokens, hooks)?;
    /// # Ok(()) }
    /// ```
    pub fn run_with_hooks(&self, tokens: &Tensor, mut hooks: Hooks) -> Result<Tensor> {
        self.forward(tokens, &mut hooks)
    }

    /// The shape of one token's activation at `point` (`[d_model]`, `[n_heads, d_head]`, ...),
    /// from a one-token forward pass stopped after the point's layer. Points without a row
    /// per token (patterns, scores) give their shape after [batch, head].
    pub fn hook_shape(&self, point: &HookPoint) -> Result<Vec<usize>> {
        self.check_hook(point)?;
        if let HookPoint::Sae(..) = point {
            return Err(Error::Invalid(format!(
                "{point} is inside a spliced SAE: its width is the SAE's (d_in, d_sae or d_out)"
            )));
        }
        let stop = match point {
            HookPoint::Block(l, _) => Some(l + 1),
            HookPoint::Embed | HookPoint::PosEmbed => Some(0),
            _ => None,
        };
        let one = Tensor::zeros((1, 1), DType::U32, self.device())?;
        let hooks = Hooks::none().with_cache(NameFilter::Points(vec![*point]));
        let run = self.run_range(&one, 0, stop, hooks)?;
        Ok(run.cache.get(*point)?.dims()[2..].to_vec())
    }

    /// Every hook point this model has, in forward order.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        let mut v = vec![HookPoint::Embed];
        if self.cfg.positional_embedding_type != Positional::Rotary {
            v.push(HookPoint::PosEmbed);
        }
        for l in 0..self.cfg.n_layers {
            v.extend(
                BlockHook::ALL
                    .into_iter()
                    .map(|h| HookPoint::Block(l, h))
                    .filter(|p| self.has_hook(p)),
            );
        }
        if self.cfg.normalization_type != Normalization::None {
            v.extend([HookPoint::LnFinalScale, HookPoint::LnFinalNormalized]);
        }
        v
    }

    fn has_hook(&self, p: &HookPoint) -> bool {
        let c = &self.cfg;
        let norm = c.normalization_type != Normalization::None;
        match *p {
            HookPoint::Embed => true,
            HookPoint::PosEmbed => c.positional_embedding_type != Positional::Rotary,
            HookPoint::LnFinalScale | HookPoint::LnFinalNormalized => norm,
            HookPoint::Sae(..) => self.has_hook(&p.base()),
            HookPoint::Block(l, h) => {
                use BlockHook::*;
                l < c.n_layers
                    && match h {
                        Ln1Scale | Ln1Normalized => norm,
                        RotQ | RotK => c.positional_embedding_type == Positional::Rotary,
                        QNormScale | QNormNormalized | QNormed | KNormScale | KNormNormalized
                        | KNormed => c.use_qk_norm,
                        Ln1PostScale | Ln1PostNormalized => c.use_normalization_before_and_after,
                        Ln2PostScale | Ln2PostNormalized => {
                            c.use_normalization_before_and_after && !c.attn_only
                        }
                        ResidMid => !c.attn_only && !c.parallel_attn_mlp,
                        MlpPre | MlpPost | MlpOut => !c.attn_only,
                        Ln2Scale | Ln2Normalized => !c.attn_only && norm,
                        MlpPreLinear => !c.attn_only && c.gated_mlp,
                        _ => true,
                    }
            }
        }
    }

    /// Checks that `point` exists in this model: its layer is in range and the model has that
    /// kind of hook. The error names the close matches.
    pub fn check_hook(&self, point: &HookPoint) -> Result<()> {
        if let Some(l) = point.layer() {
            if l >= self.cfg.n_layers {
                return Err(Error::LayerOutOfRange {
                    layer: l,
                    n_layers: self.cfg.n_layers,
                });
            }
        }
        if self.has_hook(point) {
            return Ok(());
        }
        Err(Error::UnknownHook {
            name: point.to_string(),
            suggestions: self.close_hooks(&point.to_string()),
        })
    }

    /// Parses and checks a hook name against this model, suggesting close matches when unknown.
    pub fn hook_point(&self, name: &str) -> Result<HookPoint> {
        match name.parse::<HookPoint>() {
            Ok(p) => self.check_hook(&p).map(|_| p),
            Err(_) => Err(Error::UnknownHook {
                name: name.into(),
                suggestions: self.close_hooks(name),
            }),
        }
    }

    fn close_hooks(&self, name: &str) -> Vec<String> {
        let mut scored: Vec<(f64, String)> = self
            .hook_points()
            .iter()
            .map(|p| p.to_string())
            .map(|s| (strsim::jaro_winkler(name, &s), s))
            .filter(|(d, _)| *d > 0.8)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().take(3).map(|(_, s)| s).collect()
    }

    /// Checks that every hook's point exists in this model and lies in the layers
    /// `start..stop` a pass runs (and `ln_final` only if it `unembeds`): a hook beyond
    /// `stop_at_layer` would never fire.
    pub(crate) fn check_hooks(
        &self,
        hooks: &Hooks,
        start: usize,
        stop: usize,
        unembeds: bool,
    ) -> Result<()> {
        let n = self.cfg.n_layers;
        for site in hooks.sites() {
            self.check_hook(&site.point)?;
            let reason = match site.point {
                HookPoint::Embed | HookPoint::PosEmbed if start > 0 => {
                    format!("this pass starts at layer {start} from a given residual stream")
                }
                HookPoint::Block(l, _) | HookPoint::Sae(l, ..) if l < start || l >= stop => {
                    format!("this pass runs layers {start}..{stop} of {n}")
                }
                p @ HookPoint::Sae(..) if hooks.spliced_at(p.base()).is_none() => format!(
                    "no SAE is spliced at {}: splice one (Hooks::splice) to use its hook points",
                    p.base()
                ),
                HookPoint::LnFinalScale | HookPoint::LnFinalNormalized if !unembeds => {
                    format!("this pass stops at layer {stop}, before ln_final")
                }
                _ => continue,
            };
            return Err(Error::NotReached {
                what: format!("the hook at {site}"),
                reason,
            });
        }
        Ok(())
    }

    /// Checks token ids: non-empty, within the vocabulary and the context.
    fn check_tokens(&self, tokens: &Tensor, end: usize) -> Result<()> {
        if tokens.dim(1)? == 0 || tokens.dim(0)? == 0 {
            return Err(Error::EmptyPrompt);
        }
        if end > self.cfg.n_ctx {
            return Err(Error::PromptTooLong {
                len: end,
                n_ctx: self.cfg.n_ctx,
            });
        }
        let max = tokens
            .to_dtype(DType::U32)?
            .flatten_all()?
            .max(0)?
            .to_scalar::<u32>()?;
        if max as usize >= self.cfg.d_vocab {
            return Err(Error::Invalid(format!(
                "token id {max} is outside the vocabulary (d_vocab {})",
                self.cfg.d_vocab
            )));
        }
        Ok(())
    }

    /// `W_Q` of `layer` as TransformerLens shapes it: [n_heads, d_model, d_head].
    #[allow(non_snake_case)]
    pub fn W_Q(&self, layer: usize) -> Result<Tensor> {
        let a = &self.block(layer)?.attn;
        Ok(a.w_q
            .reshape((self.cfg.d_model, self.cfg.n_heads, self.cfg.d_head))?
            .transpose(0, 1)?)
    }

    /// `W_K` of `layer`: [n_key_value_heads, d_model, d_head].
    #[allow(non_snake_case)]
    pub fn W_K(&self, layer: usize) -> Result<Tensor> {
        self.kv_heads(&self.block(layer)?.attn.w_k)
    }

    /// `W_V` of `layer`: [n_key_value_heads, d_model, d_head].
    #[allow(non_snake_case)]
    pub fn W_V(&self, layer: usize) -> Result<Tensor> {
        self.kv_heads(&self.block(layer)?.attn.w_v)
    }

    /// [d_model, H_kv * d_head] -> the per-head view [H_kv, d_model, d_head], without a copy.
    fn kv_heads(&self, w: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        Ok(w.reshape((c.d_model, c.n_key_value_heads, c.d_head))?
            .transpose(0, 1)?)
    }

    /// `W_O` of `layer`: [n_heads, d_head, d_model].
    #[allow(non_snake_case)]
    pub fn W_O(&self, layer: usize) -> Result<Tensor> {
        Ok(self.block(layer)?.attn.w_o.reshape((
            self.cfg.n_heads,
            self.cfg.d_head,
            self.cfg.d_model,
        ))?)
    }

    /// The block at `layer`, or a clear out-of-range error.
    pub fn block(&self, layer: usize) -> Result<&Block> {
        self.blocks.get(layer).ok_or(Error::LayerOutOfRange {
            layer,
            n_layers: self.cfg.n_layers,
        })
    }

    /// Checks a head index against the model.
    pub fn check_head(&self, head: usize) -> Result<()> {
        match head < self.cfg.n_heads {
            true => Ok(()),
            false => Err(Error::HeadOutOfRange {
                head,
                n_heads: self.cfg.n_heads,
            }),
        }
    }
}

/// `x @ w (+ b)` for `x` [.., d_in] and `w` [d_in, d_out]: the leading dimensions are flattened
/// into one matmul (much faster than a batched matmul against a broadcast `w`), from `w`'s
/// packed panels where they apply.
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    packed: Option<&Packed>,
    b: Option<&Tensor>,
) -> Result<Tensor> {
    let dims = x.dims();
    let d_in = dims[dims.len() - 1];
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("x has a last dimension") = w.dim(1)?;
    let x = x.contiguous()?.reshape(((), d_in))?;
    let y = match packed.map(|p| p.matmul(&x, w)).transpose()?.flatten() {
        Some(y) => y,
        None => crate::matmul::matmul(&x, w)?,
    };
    let y = match b {
        Some(b) if kernels::applies(&y) => kernels::add_bias(y, b)?,
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    Ok(y.reshape(out_dims)?)
}

/// `a + b` for the residual stream's sums: the fused kernel where it applies.
fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match kernels::applies(a) && kernels::applies(b) && a.dims() == b.dims() {
        true => kernels::add(a, b),
        false => Ok((a + b)?),
    }
}

/// Additive causal mask [p, offset + p]: 0 where query i (at position offset + i) may attend
/// to key j, -inf after it and, with a sliding `window`, at `window` or more positions before it.
fn causal_mask(p: usize, offset: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let n = offset + p;
    let w = window.unwrap_or(usize::MAX);
    let v: Vec<f32> = (0..p)
        .flat_map(|i| {
            (0..n).map(move |j| {
                if j <= offset + i && offset + i - j < w {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(v, (p, n), device)?)
}
