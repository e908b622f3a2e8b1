//! The canonical weight set: tensors under TransformerLens's state-dict names
//! (`embed.W_E`, `blocks.0.attn.W_Q` [H, d_model, d_head], `unembed.W_U`, ...).

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;

/// Named weights in TransformerLens's names and shapes. Every loader produces one; weight
/// processing rewrites one; the model is built from one.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    pub tensors: BTreeMap<String, Tensor>,
}

impl Weights {
    /// The tensor `name`, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingWeight(name.to_string()))?;
        if t.dims() != shape {
            return Err(Error::WeightShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        Ok(t.clone())
    }

    /// Like [`Self::get`] for weights a family may lack (biases in llama).
    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        match self.tensors.contains_key(name) {
            true => self.get(name, shape).map(Some),
            false => Ok(None),
        }
    }

    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.tensors.insert(name.into(), t);
    }

    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// Every tensor moved to `device` and cast to `dtype`.
    pub fn to(&self, device: &Device, dtype: DType) -> Result<Self> {
        let tensors = self
            .tensors
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_device(device)?.to_dtype(dtype)?)))
            .collect::<Result<_>>()?;
        Ok(Self { tensors })
    }
}
