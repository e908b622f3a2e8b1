//! Running the model over contexts for a store: the forward stops after the deepest requested
//! layer, and each hook's activations become rows of [tokens, ...] in the store's dtype.

use super::{ShardData, StoreSpec};
use crate::corpus::Contexts;
use crate::error::{Error, Result};
use crate::hook_points::{HookPoint, NameFilter};
use crate::hooks::Hooks;
use crate::model::HookedTransformer;
use candle_core::{DType, Device, Tensor};

/// What to capture from a model: hook points, in the order given, stored in `dtype`.
#[derive(Debug, Clone)]
pub struct Capture<'a> {
    model: &'a HookedTransformer,
    pub hooks: Vec<HookPoint>,
    /// The forward runs layers `0..stop_at_layer` (`None`: to the logits).
    pub stop_at_layer: Option<usize>,
    pub dtype: DType,
}

impl<'a> Capture<'a> {
    /// Checks `hooks` against `model`: each must exist, appear once, and have one row per token
    /// (attention patterns and scores, [batch, head, query, key], do not).
    pub fn new(model: &'a HookedTransformer, hooks: Vec<HookPoint>, dtype: DType) -> Result<Self> {
        if hooks.is_empty() {
            return Err(Error::bad_parameter(
                "hooks",
                "(none)",
                "name at least one hook point, e.g. blocks.0.hook_resid_post",
            ));
        }
        for (i, h) in hooks.iter().enumerate() {
            model.check_hook(h)?;
            if hooks[..i].contains(h) {
                return Err(Error::bad_parameter("hooks", h, "is named twice"));
            }
            if h.axes().pos != Some(1) {
                return Err(Error::Unsupported(format!(
                    "{h} has no row per token (it is [batch, head, query, key]); a store holds per-token activations such as blocks.L.attn.hook_z; use `hooklens cache` for patterns"
                )));
            }
        }
        let stop_at_layer = match hooks
            .iter()
            .any(|h| h.layer().is_none() && !matches!(h, HookPoint::Embed | HookPoint::PosEmbed))
        {
            true => None, // ln_final: the whole model
            false => Some(
                hooks
                    .iter()
                    .filter_map(|h| h.layer())
                    .map(|l| l + 1)
                    .max()
                    .unwrap_or(0),
            ),
        };
        Ok(Self {
            model,
            hooks,
            stop_at_layer,
            dtype,
        })
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// The model it runs.
    pub fn model(&self) -> &HookedTransformer {
        self.model
    }

    /// Each hook's activations on `tokens` [batch, pos], as [batch·pos, ...] (context-major) in
    /// the store's dtype, on the CPU.
    pub fn activations(&self, tokens: &Tensor) -> Result<Vec<Tensor>> {
        let hooks = Hooks::none().with_cache(NameFilter::Points(self.hooks.clone()));
        let run = self.model.run_range(tokens, 0, self.stop_at_layer, hooks)?;
        self.hooks
            .iter()
            .map(|&h| {
                let x = run.cache.get(h)?;
                let dims = x.dims();
                let rows = [&[dims[0] * dims[1]][..], &dims[2..]].concat();
                // [batch, pos, ...] -> [batch·pos, ...]
                Ok(x.reshape(rows)?
                    .to_dtype(self.dtype)?
                    .to_device(&Device::Cpu)?)
            })
            .collect()
    }

    /// The shape of one token's activation at each hook.
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>> {
        self.hooks
            .iter()
            .map(|h| self.model.hook_shape(h))
            .collect()
    }

    /// Computes shard `i` of `spec` from `contexts`, in batches of `spec.contexts_per_batch`,
    /// calling `progress` with the tokens of each batch done.
    pub fn shard(
        &self,
        spec: &StoreSpec,
        contexts: &Contexts,
        i: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<ShardData> {
        let range = spec.shard_contexts(i);
        let c = spec.context_len;
        let size = self.dtype.size_in_bytes();
        let mut data = ShardData {
            hooks: spec
                .hooks
                .iter()
                .map(|h| Vec::with_capacity(range.len() * c * h.width() * size))
                .collect(),
            ..ShardData::default()
        };
        for start in range.clone().step_by(spec.contexts_per_batch.max(1)) {
            let end = (start + spec.contexts_per_batch).min(range.end);
            let tokens = contexts.batch(start..end, self.model.device())?;
            for (buf, x) in data.hooks.iter_mut().zip(self.activations(&tokens)?) {
                append_le_bytes(buf, &x)?;
            }
            for ctx in start..end {
                data.token_id.extend_from_slice(contexts.get(ctx));
                data.context.extend(std::iter::repeat_n(ctx as u32, c));
                data.position.extend(0..c as u32);
            }
            progress((end - start) * c);
        }
        Ok(data)
    }
}

/// Appends `x`'s values to `buf` as little-endian bytes.
pub(crate) fn append_le_bytes(buf: &mut Vec<u8>, x: &Tensor) -> Result<()> {
    let x = x.flatten_all()?;
    match x.dtype() {
        DType::F32 => buf.extend(x.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes())),
        DType::F16 => buf.extend(
            x.to_vec1::<half::f16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes()),
        ),
        DType::BF16 => buf.extend(
            x.to_vec1::<half::bf16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes()),
        ),
        DType::U32 => buf.extend(x.to_vec1::<u32>()?.iter().flat_map(|v| v.to_le_bytes())),
        d => return Err(Error::Unsupported(format!("storing {d:?} activations"))),
    }
    Ok(())
}

/// How a capture fits a memory budget: contexts per forward pass and per shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapturePlan {
    pub contexts_per_batch: usize,
    pub contexts_per_shard: usize,
    /// Estimated bytes of one batch's forward pass, and of one shard held before writing.
    pub forward_bytes: u64,
    pub shard_bytes: u64,
}

/// Shards of at most this many bytes: big enough to read fast, small enough to resume often.
const MAX_SHARD_BYTES: u64 = 256 << 20;

/// Sizes batches and shards so that a capture of `capture` over contexts of `context_len`
/// tokens uses at most `available` bytes on top of what is already resident (the model and
/// the corpus): a forward pass's working memory (attention scores, MLP activations, logits
/// when the forward runs to the end, the recorded hooks) takes at most a third, the shard
/// being filled at most a third, and the rest is headroom for the allocator. Too small a
/// budget for one context is an error saying how much is needed. `shard_tokens` asks for
/// shards of about that many tokens instead (whole batches, within the budget).
pub fn plan(
    capture: &Capture,
    widths: &[usize],
    context_len: usize,
    available: u64,
    shard_tokens: Option<usize>,
) -> Result<CapturePlan> {
    let cfg = &capture.model.cfg;
    let l = context_len as u64;
    let f32s = 4u64;
    let hooks: u64 = widths.iter().map(|&w| w as u64).sum();
    let vocab = match capture.stop_at_layer {
        None => 2 * cfg.d_vocab as u64,
        Some(_) => 0,
    };
    let per_layer = 3 * cfg.n_heads as u64 * l
        + 8 * cfg.d_model as u64
        + 4 * (cfg.n_heads * cfg.d_head) as u64
        + 4 * cfg.d_mlp as u64;
    let forward_per_context = f32s * l * (per_layer + vocab + 2 * hooks);
    let shard_per_context = l * hooks * capture.dtype.size_in_bytes() as u64;
    let third = available / 3;
    if forward_per_context > third || shard_per_context > third {
        return Err(Error::bad_parameter(
            "max_memory",
            format!("{} MB available", available >> 20),
            format!(
                "is too little for one context of {context_len} tokens: it needs about {} MB beyond the model; raise it or capture shorter contexts",
                (3 * forward_per_context.max(shard_per_context)) >> 20
            ),
        ));
    }
    let contexts_per_batch = (third / forward_per_context).clamp(1, 32) as usize;
    let most = (third / shard_per_context) as usize;
    let per_shard = match shard_tokens {
        Some(t) if t / context_len > most => {
            return Err(Error::bad_parameter(
                "shard_tokens",
                t,
                format!(
                "shards that large need {} MB; within `max_memory` a shard holds at most {} tokens",
                (3 * t as u64 / context_len as u64 * shard_per_context) >> 20,
                most * context_len
            ),
            ))
        }
        Some(t) => (t / context_len).max(1),
        None => (MAX_SHARD_BYTES / shard_per_context).clamp(1, most as u64) as usize,
    };
    let contexts_per_batch = contexts_per_batch.min(per_shard);
    let contexts_per_shard = (per_shard / contexts_per_batch).max(1) * contexts_per_batch;
    Ok(CapturePlan {
        contexts_per_batch,
        contexts_per_shard,
        forward_bytes: forward_per_context * contexts_per_batch as u64,
        shard_bytes: shard_per_context * contexts_per_shard as u64,
    })
}
