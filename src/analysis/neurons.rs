//! A text longer than the context, read token by token: each token's loss, an optional logit
//! difference, and MLP neuron activations (`blocks.L.mlp.hook_post`) at every position, from
//! forward passes over consecutive windows; then each neuron's top-activating positions.

use crate::analysis::ablation::Unit;
use crate::analysis::metrics::{next_token_losses, top_k};
use crate::error::Result;
use crate::hook_points::{BlockHook, HookPoint, NameFilter};
use crate::model::HookedTransformer;
use candle_core::{DType, IndexOp, Tensor};

/// Per-token values over a text (index = token of the text, BOS not counted).
#[derive(Debug, Clone, PartialEq)]
pub struct TextScan {
    /// Loss of predicting each token from the ones before it in its window (`None` for the
    /// first token of the text, and of each window without BOS).
    pub loss: Vec<Option<f32>>,
    /// logit(answer) - logit(wrong) of the prediction after each token, when asked for.
    pub logit_diff: Vec<Option<f32>>,
    /// (layer, activations [position][neuron]) for each scanned layer.
    pub acts: Vec<(usize, Vec<Vec<f32>>)>,
}

/// Runs `ids` through `model` in windows of at most `window` tokens (each after `bos`, when
/// given), recording the loss at every token, the logit difference of `pair` (answer, wrong)
/// and the `mlp.hook_post` activations of `layers`.
pub fn scan_text(
    model: &HookedTransformer,
    ids: &[u32],
    bos: Option<u32>,
    window: usize,
    layers: &[usize],
    pair: Option<(u32, u32)>,
) -> Result<TextScan> {
    let mut scan = TextScan {
        loss: vec![None; ids.len()],
        logit_diff: vec![None; ids.len()],
        acts: layers.iter().map(|&l| (l, vec![])).collect(),
    };
    let shift = bos.is_some() as usize;
    for (w, chunk) in ids.chunks(window.max(1)).enumerate() {
        let row: Vec<u32> = bos.into_iter().chain(chunk.iter().copied()).collect();
        let tokens = Tensor::new(row.as_slice(), model.device())?.unsqueeze(0)?; // [1, pos]
        let points = layers
            .iter()
            .map(|&l| HookPoint::block(l, BlockHook::MlpPost))
            .collect();
        let (logits, cache) = model.run_with_cache(&tokens, NameFilter::Points(points))?;
        let start = w * window; // the text index of the window's first token
        if row.len() >= 2 {
            let l: Vec<f32> = next_token_losses(&logits, &tokens)?.i(0)?.to_vec1()?;
            // l[i] is the loss of row[i + 1]: text token start + i + 1 - shift.
            for (i, v) in l.into_iter().enumerate() {
                if let Some(slot) = (start + i + 1).checked_sub(shift) {
                    scan.loss[slot] = Some(v);
                }
            }
        }
        if let Some((x, y)) = pair {
            // The logits at each text position: what the model expects next there.
            let l = logits.i(0)?.to_dtype(DType::F32)?; // [pos, d_vocab]
            let d: Vec<f32> = (l.i((.., x as usize))? - l.i((.., y as usize))?)?.to_vec1()?;
            for (i, v) in d.into_iter().enumerate().skip(shift) {
                scan.logit_diff[start + i - shift] = Some(v);
            }
        }
        for (layer, acts) in &mut scan.acts {
            let post = cache.block(*layer, BlockHook::MlpPost)?.i(0)?; // [pos, d_mlp]
            let post: Vec<Vec<f32>> = post.to_dtype(DType::F32)?.to_vec2()?;
            acts.extend(post.into_iter().skip(shift));
        }
    }
    Ok(scan)
}

/// One of a neuron's top-activating positions in a scanned text.
#[derive(Debug, Clone, PartialEq)]
pub struct NeuronExample {
    pub unit: Unit,
    /// 0 = the neuron's strongest activation in the text.
    pub rank: usize,
    pub activation: f32,
    /// Token index in the text.
    pub pos: usize,
}

impl TextScan {
    /// A scanned neuron's activation at every token of the text.
    pub fn neuron(&self, layer: usize, neuron: usize) -> Option<Vec<f32>> {
        let (_, acts) = self.acts.iter().find(|(l, _)| *l == layer)?;
        Some(acts.iter().map(|p| p[neuron]).collect())
    }

    /// The `k` neurons of `layer` with the largest activation anywhere in the text.
    pub fn strongest_neurons(&self, layer: usize, k: usize) -> Vec<Unit> {
        let Some((_, acts)) = self.acts.iter().find(|(l, _)| *l == layer) else {
            return vec![];
        };
        let d_mlp = acts.first().map_or(0, Vec::len);
        let max: Vec<f32> = (0..d_mlp)
            .map(|n| acts.iter().map(|p| p[n]).fold(f32::NEG_INFINITY, f32::max))
            .collect();
        top_k(&max, k)
            .into_iter()
            .map(|(n, _)| Unit::Neuron {
                layer,
                neuron: n as usize,
            })
            .collect()
    }

    /// The `top` strongest positions of each neuron in `units` (other units are skipped).
    pub fn top_examples(&self, units: &[Unit], top: usize) -> Vec<NeuronExample> {
        let mut out = vec![];
        for &unit in units {
            let Unit::Neuron { layer, neuron } = unit else {
                continue;
            };
            let Some(series) = self.neuron(layer, neuron) else {
                continue;
            };
            for (rank, (pos, activation)) in top_k(&series, top).into_iter().enumerate() {
                out.push(NeuronExample {
                    unit,
                    rank,
                    activation,
                    pos: pos as usize,
                });
            }
        }
        out
    }

    /// The mean of the known losses.
    pub fn mean_loss(&self) -> f32 {
        let known: Vec<f32> = self.loss.iter().flatten().copied().collect();
        known.iter().sum::<f32>() / known.len().max(1) as f32
    }
}

/// [`scan_text`] for the MLP neurons `units` in windows of the context (less BOS, at most 512
/// tokens); without units, for the 4 neurons of `layer` (default the middle layer) with the
/// largest activation anywhere in the text (none on attention-only models). Returns the scan
/// and the neurons.
pub fn scan_neurons(
    model: &HookedTransformer,
    ids: &[u32],
    bos: Option<u32>,
    units: Vec<Unit>,
    layer: Option<usize>,
    pair: Option<(u32, u32)>,
) -> Result<(TextScan, Vec<Unit>)> {
    for u in &units {
        u.check(model)?;
    }
    let strongest =
        (units.is_empty() && !model.cfg.attn_only).then(|| layer.unwrap_or(model.cfg.n_layers / 2));
    if let Some(l) = strongest {
        model.block(l)?;
    }
    let mut layers: Vec<usize> = units.iter().map(|u| u.layer()).chain(strongest).collect();
    layers.sort();
    layers.dedup();
    let window = (model.cfg.n_ctx - bos.is_some() as usize).min(512);
    let scan = scan_text(model, ids, bos, window, &layers, pair)?;
    let units = match strongest {
        Some(l) => scan.strongest_neurons(l, 4),
        None => units,
    };
    Ok((scan, units))
}
