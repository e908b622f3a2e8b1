//! An activation store: a corpus's activations at chosen hook points, on disk in shards.
//!
//! A store folder holds `store.json` ([`StoreSpec`]: hooks, shapes, dtype, token count and the
//! caller's provenance, such as model and corpus checksums) and `shards/NNNNNN.safetensors`.
//! Each shard holds whole contexts: one tensor per hook, named as in TransformerLens,
//! [tokens, ...] (`[tokens, d_model]` for `hook_resid_post`, `[tokens, n_heads, d_head]` for
//! `attn.hook_z`), and beside them `token_id`, `context` and `position` [tokens] (u32). Numpy
//! reads a shard with `safetensors.numpy.load_file`. A shard is written to a temporary file
//! and renamed into place, so a shard that exists is complete.

pub mod capture;
pub mod reader;
pub mod stats;

pub use capture::{plan, Capture, CapturePlan};
pub use reader::{ActivationStore, Batches, Source};
pub use stats::{hook_stats, HookStats};

/// Which stored tokens an analysis counts: those at `from_position` or later in their context,
/// other than `skip_tokens`, and (where the activation is at hand) whose activation norm is at
/// most `max_norm`. BOS, document separators and a few other tokens (a context's first, often)
/// carry "massive activations" hundreds of times the others' norm (in SmolLM2's layer-15
/// residual, 0.05 % of tokens hold 95 % of the variance), which would take over an SAE's loss.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenFilter {
    pub skip_tokens: Vec<u32>,
    pub from_position: u32,
    pub max_norm: Option<f32>,
}

impl TokenFilter {
    /// Every token.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn keeps(&self, token: u32, position: u32) -> bool {
        position >= self.from_position && !self.skip_tokens.contains(&token)
    }

    /// Whether it keeps every token.
    pub fn is_all(&self) -> bool {
        self.from_position == 0 && self.skip_tokens.is_empty() && self.max_norm.is_none()
    }

    /// Per row of `x` [rows, ...], whether its norm is within `max_norm`.
    pub fn norm_ok(&self, x: &candle_core::Tensor) -> crate::error::Result<Vec<bool>> {
        let rows = x.dim(0)?;
        match self.max_norm {
            None => Ok(vec![true; rows]),
            Some(m) => {
                let norms: Vec<f32> = x
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_from(1)?
                    .sqr()?
                    .sum(1)?
                    .sqrt()?
                    .to_vec1()?;
                Ok(norms.into_iter().map(|n| n <= m).collect())
            }
        }
    }
}

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The store format written in `store.json`.
pub const FORMAT: &str = "hooklens-activation-store/1";

/// One stored hook point: its TransformerLens name and the shape of one token's activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredHook {
    pub name: String,
    pub shape: Vec<usize>,
}

impl StoredHook {
    /// Values per token (the product of `shape`).
    pub fn width(&self) -> usize {
        self.shape.iter().product()
    }
}

/// What a store holds; `store.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreSpec {
    pub format: String,
    pub hooks: Vec<StoredHook>,
    /// `f32`, `f16` or `bf16`: how activations are stored (the forward runs in the model's dtype).
    pub dtype: String,
    pub context_len: usize,
    pub contexts: usize,
    pub tokens: usize,
    pub contexts_per_shard: usize,
    /// Contexts per forward pass (shards are computed in the same batches on every run).
    pub contexts_per_batch: usize,
    pub shards: usize,
    /// The forward stops before this layer (`None`: the full model ran).
    pub stop_at_layer: Option<usize>,
    /// Where the activations came from (model and corpus, with checksums), as the caller says.
    pub provenance: serde_json::Value,
}

impl StoreSpec {
    /// The contexts of shard `i`.
    pub fn shard_contexts(&self, i: usize) -> std::ops::Range<usize> {
        let start = i * self.contexts_per_shard;
        start..(start + self.contexts_per_shard).min(self.contexts)
    }

    /// The stored dtype.
    pub fn dtype(&self) -> Result<DType> {
        parse_dtype(&self.dtype)
    }

    /// The stored hook named `name`, with its index, or an error listing those stored.
    pub fn hook(&self, name: &str) -> Result<(usize, &StoredHook)> {
        self.hooks
            .iter()
            .enumerate()
            .find(|(_, h)| h.name == name)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the store does not hold {name}; it holds {}",
                    self.hooks
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }
}

/// `f32`, `f16` or `bf16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(Error::bad_parameter("dtype", s, "use f32, f16 or bf16")),
    }
}

/// The path of shard `i` in the store folder `dir`.
pub fn shard_path(dir: &Path, i: usize) -> PathBuf {
    dir.join("shards").join(format!("{i:06}.safetensors"))
}

/// One shard's tensors as raw little-endian bytes, per hook in the spec's order.
#[derive(Debug, Clone, Default)]
pub struct ShardData {
    pub hooks: Vec<Vec<u8>>,
    pub token_id: Vec<u32>,
    pub context: Vec<u32>,
    pub position: Vec<u32>,
}

/// Writes shard `i` (atomically: a temporary file renamed into place).
pub fn write_shard(dir: &Path, spec: &StoreSpec, i: usize, data: &ShardData) -> Result<()> {
    let st_dtype = match spec.dtype()? {
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
        _ => safetensors::Dtype::F32,
    };
    let rows = data.token_id.len();
    let bad = |e: safetensors::SafeTensorError| Error::Invalid(format!("shard {i}: {e}"));
    let mut views = Vec::new();
    for (h, bytes) in spec.hooks.iter().zip(&data.hooks) {
        let shape = [&[rows][..], &h.shape].concat();
        views.push((
            h.name.clone(),
            safetensors::tensor::TensorView::new(st_dtype, shape, bytes).map_err(bad)?,
        ));
    }
    // The token columns are small: copied to bytes here.
    let u32s = [
        ("token_id", &data.token_id),
        ("context", &data.context),
        ("position", &data.position),
    ]
    .map(|(name, v)| {
        (
            name,
            v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
        )
    });
    for (name, bytes) in &u32s {
        views.push((
            name.to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::U32, vec![rows], bytes)
                .map_err(bad)?,
        ));
    }
    let path = shard_path(dir, i);
    crate::atomic::atomic_write_with(&path, |tmp| {
        safetensors::tensor::serialize_to_file(views, None, tmp).map_err(bad)
    })
}

/// Reads the tensor `name` of the safetensors file `path` alone (its bytes only, not the
/// file's), as a CPU tensor.
pub fn read_tensor(path: &Path, name: &str) -> Result<Tensor> {
    let corrupt = |reason: String| Error::CorruptFile {
        path: path.into(),
        reason,
    };
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(len) as usize;
    if n > 100 << 20 {
        return Err(corrupt(format!("a header of {n} bytes")));
    }
    let mut header = vec![0u8; n];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| corrupt(e.to_string()))?;
    let info = header
        .get(name)
        .ok_or_else(|| corrupt(format!("no tensor {name}")))?;
    #[derive(Deserialize)]
    struct Info {
        dtype: String,
        shape: Vec<usize>,
        data_offsets: [u64; 2],
    }
    let info: Info = serde_json::from_value(info.clone()).map_err(|e| corrupt(e.to_string()))?;
    // The tensors' bytes fill the file exactly after the header: anything else is damage.
    let end = (header.iter())
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if size != 8 + n as u64 + end {
        return Err(corrupt(format!(
            "{size} bytes where its header describes {}",
            8 + n as u64 + end
        )));
    }
    let [a, b] = info.data_offsets;
    let width = match info.dtype.as_str() {
        "F16" | "BF16" => 2,
        _ => 4,
    };
    if a > b || b - a != (info.shape.iter().product::<usize>() * width) as u64 {
        return Err(corrupt(format!(
            "tensor {name}: offsets {a}..{b} do not hold its shape {:?}",
            info.shape
        )));
    }
    let mut bytes = vec![0u8; (b - a) as usize];
    f.seek(SeekFrom::Start(8 + n as u64 + a))
        .and_then(|_| f.read_exact(&mut bytes))
        .map_err(|e| Error::io(path, e))?;
    let dtype = match info.dtype.as_str() {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "U32" => DType::U32,
        d => return Err(corrupt(format!("unexpected dtype {d}"))),
    };
    Ok(Tensor::from_raw_buffer(
        &bytes,
        dtype,
        &info.shape,
        &Device::Cpu,
    )?)
}
