//! `ActivationCache`: the activations a run recorded, in forward order, looked up by hook point.

use crate::error::{Error, Result};
use crate::hook_points::{BlockHook, HookPoint, NameFilter};
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Activations keyed by hook point, in the order the forward pass produced them.
#[derive(Debug, Clone, Default)]
pub struct ActivationCache {
    entries: Vec<(HookPoint, Tensor)>,
    index: HashMap<HookPoint, usize>,
    /// What was asked to be recorded (named in the error for a missing entry).
    filter: NameFilter,
    /// The token ids [batch, pos] and real (unpadded) lengths of the run, saved with the cache.
    tokens: Option<(Tensor, Vec<usize>)>,
}

impl ActivationCache {
    /// An empty cache that will record the hook points passing `filter`.
    pub(crate) fn recording(filter: NameFilter) -> Self {
        Self {
            filter,
            ..Self::default()
        }
    }

    /// Whether this cache records `point`.
    pub(crate) fn records(&self, point: &HookPoint) -> bool {
        self.filter.matches(point)
    }

    /// Keeps `x` if the filter asks for `point`. A point reached twice (a second forward pass
    /// with the same hooks) keeps the latest value.
    pub(crate) fn record(&mut self, point: HookPoint, x: &Tensor) {
        if !self.records(&point) {
            return;
        }
        match self.index.get(&point) {
            Some(&i) => self.entries[i].1 = x.clone(),
            None => {
                self.index.insert(point, self.entries.len());
                self.entries.push((point, x.clone()));
            }
        }
    }

    /// The activation at `point`, or an error naming what the cache holds and how to record it.
    pub fn get(&self, point: HookPoint) -> Result<&Tensor> {
        match self.index.get(&point) {
            Some(&i) => Ok(&self.entries[i].1),
            None => Err(Error::NotCached {
                point: point.to_string(),
                held: self.summary(),
            }),
        }
    }

    /// "3 entries (blocks.0.attn.hook_z, ..., blocks.2.attn.hook_z), recorded with filter ...".
    fn summary(&self) -> String {
        let names: Vec<String> = self.entries.iter().map(|(p, _)| p.to_string()).collect();
        let shown = match names.len() {
            0 => "nothing".to_string(),
            1..=4 => names.join(", "),
            n => format!("{}, {}, ..., {}", names[0], names[1], names[n - 1]),
        };
        format!(
            "{} entries ({shown}), recorded with filter {}",
            names.len(),
            self.filter
        )
    }

    /// The activation named `name` (a TransformerLens hook name).
    pub fn get_by_name(&self, name: &str) -> Result<&Tensor> {
        self.get(name.parse()?)
    }

    /// Shorthand for a block hook: `cache.block(3, BlockHook::Pattern)`.
    pub fn block(&self, layer: usize, hook: BlockHook) -> Result<&Tensor> {
        self.get(HookPoint::Block(layer, hook))
    }

    /// `hook` at every layer stacked into one tensor, layer axis first:
    /// `cache.stack(BlockHook::Pattern)` is [n_layers, batch, head, query, key]. Every layer
    /// from 0 up to the last one recorded must be present.
    pub fn stack(&self, hook: BlockHook) -> Result<Tensor> {
        let n_layers = self
            .entries
            .iter()
            .filter_map(|(p, _)| match p {
                HookPoint::Block(l, h) if *h == hook => Some(l + 1),
                _ => None,
            })
            .max()
            .unwrap_or(1);
        let per_layer = (0..n_layers)
            .map(|l| self.block(l, hook))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&per_layer, 0)?)
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

    /// Attaches the run's token ids [batch, pos] and each prompt's real length, so that a saved
    /// cache tells padded positions apart on its own.
    pub fn set_tokens(&mut self, tokens: &Tensor, lengths: Vec<usize>) -> Result<()> {
        let (b, p) = tokens.dims2()?;
        if lengths.len() != b || lengths.iter().any(|&l| l > p) {
            return Err(Error::Invalid(format!(
                "{} lengths for a token batch of {b} x {p}",
                lengths.len()
            )));
        }
        self.tokens = Some((tokens.to_dtype(DType::U32)?, lengths));
        Ok(())
    }

    /// Writes the cache as a `.safetensors` file whose keys are the hook names (readable with
    /// Python's `safetensors.numpy.load_file`), plus `tokens` [batch, pos] (u32) and `lengths`
    /// [batch] (u32) when attached. Written to a temporary file and renamed, so a failed write
    /// never leaves a half file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = self
            .entries
            .iter()
            .map(|(p, t)| Ok((p.to_string(), t.contiguous()?)))
            .collect::<Result<_>>()?;
        if let Some((tokens, lengths)) = &self.tokens {
            let lengths: Vec<u32> = lengths.iter().map(|&l| l as u32).collect();
            map.insert("tokens".into(), tokens.contiguous()?);
            map.insert(
                "lengths".into(),
                Tensor::new(lengths, &candle_core::Device::Cpu)?,
            );
        }
        crate::atomic::atomic_write_with(path, |tmp| {
            candle_core::safetensors::save(&map, tmp).map_err(Error::from)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn stack_puts_layers_first_and_missing_entries_say_what_is_held() {
        let mut c = ActivationCache::recording(NameFilter::regex("hook_z").unwrap());
        for l in 0..3 {
            let t = Tensor::full(l as f32, (1, 2), &Device::Cpu).unwrap();
            c.record(HookPoint::Block(l, BlockHook::Z), &t);
            c.record(HookPoint::Block(l, BlockHook::Pattern), &t); // filtered out
        }
        assert_eq!(c.len(), 3);
        let s = c.stack(BlockHook::Z).unwrap();
        assert_eq!(s.dims(), &[3, 1, 2]);
        assert_eq!(s.flatten_all().unwrap().to_vec1::<f32>().unwrap()[4], 2.0);
        let e = c.block(1, BlockHook::Pattern).unwrap_err().to_string();
        assert!(
            e.contains("blocks.1.attn.hook_pattern is not in the cache"),
            "{e}"
        );
        assert!(e.contains("3 entries"), "{e}");
        assert!(e.contains("regex `hook_z`"), "{e}");
        assert!(e.contains("NameFilter::Points"), "{e}");
    }
}
