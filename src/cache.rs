//! `ActivationCache`: the activations recorded by `run_with_cache`, by hook name.

use crate::error::{Error, Result};
use crate::hooks::{BlockHook, HookPoint};
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::Path;

/// Activations keyed by hook point, in the order the forward pass produced them.
#[derive(Debug, Clone, Default)]
pub struct ActivationCache {
    entries: Vec<(HookPoint, Tensor)>,
}

impl ActivationCache {
    pub(crate) fn new(entries: Vec<(HookPoint, Tensor)>) -> Self {
        Self { entries }
    }

    /// The activation at `point`, or an error naming what the cache does hold.
    pub fn get(&self, point: HookPoint) -> Result<&Tensor> {
        self.entries
            .iter()
            .find(|(p, _)| *p == point)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{point} is not in the cache ({} entries); widen the cache filter",
                    self.entries.len()
                ))
            })
    }

    /// The activation named `name` (a TransformerLens hook name).
    pub fn get_by_name(&self, name: &str) -> Result<&Tensor> {
        self.get(name.parse()?)
    }

    /// Shorthand for a block hook: `cache.block(3, BlockHook::Pattern)`.
    pub fn block(&self, layer: usize, hook: BlockHook) -> Result<&Tensor> {
        self.get(HookPoint::Block(layer, hook))
    }

    /// Hook points held, in forward order.
    pub fn points(&self) -> impl Iterator<Item = &HookPoint> {
        self.entries.iter().map(|(p, _)| p)
    }

    /// (hook point, activation) pairs in forward order.
    pub fn iter(&self) -> impl Iterator<Item = (&HookPoint, &Tensor)> {
        self.entries.iter().map(|(p, t)| (p, t))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total bytes held by the cached tensors.
    pub fn size_bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Writes the cache as a `.safetensors` file whose keys are the hook names (readable with
    /// Python's `safetensors.numpy.load_file`). Written to a temporary file and renamed, so a
    /// failed write never leaves a half file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let map: HashMap<String, Tensor> = self
            .entries
            .iter()
            .map(|(p, t)| Ok((p.to_string(), t.contiguous()?)))
            .collect::<Result<_>>()?;
        crate::export::atomic_write_with(path, |tmp| {
            candle_core::safetensors::save(&map, tmp).map_err(Error::from)
        })
    }
}
