//! Feature dashboards as Neuronpedia's feature JSON, so that they can be uploaded or read by
//! tools made for it: per feature `index`, `maxActApprox`, `frac_nonzero`, `pos_str` /
//! `pos_values` and `neg_str` / `neg_values` (logit effects), `freq_hist_data_bar_heights` with
//! `freq_hist_data_bar_values` (bin centres, the same length), `topkCosSimIndices` /
//! `topkCosSimValues` (nearest features by decoder direction) and `activations` (top examples:
//! `tokens`, `values`, `maxValue`, `maxValueTokenIndex`).

use hooklens::analysis::dashboards::{LogitEffects, UnitDashboard};
use hooklens::error::Result;
use hooklens::Tokenizer;
use serde_json::{json, Value};

/// The export of `dash` (with the `effects` and `similar` of the same features, in order) for
/// the SAE at `hook` of `model_id`.
pub fn features_json(
    model_id: &str,
    hook: &str,
    dash: &[UnitDashboard],
    effects: Option<&LogitEffects>,
    similar: &[Vec<(u32, f32)>],
    tok: &Tokenizer,
) -> Result<Value> {
    let text = |ids: &mut dyn Iterator<Item = u32>| -> Result<Vec<String>> {
        ids.map(|id| tok.decode(&[id])).collect()
    };
    let mut features = Vec::with_capacity(dash.len());
    for (i, d) in dash.iter().enumerate() {
        let (up, down) = effects.map_or((&[][..], &[][..]), |e| (&e[i].0[..], &e[i].1[..]));
        let h = &d.histogram;
        let n = h.counts.len() as f32;
        let centres: Vec<f32> = (0..h.counts.len())
            .map(|b| h.lo + (h.hi - h.lo) * (b as f32 + 0.5) / n)
            .collect();
        let activations = d
            .examples
            .iter()
            .map(|e| {
                Ok(json!({
                    "tokens": text(&mut e.window.iter().map(|w| w.0))?,
                    "values": e.window.iter().map(|w| w.1).collect::<Vec<_>>(),
                    "maxValue": e.activation,
                    "maxValueTokenIndex": e.position - e.window_start,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let near = similar.get(i).map_or(&[][..], Vec::as_slice);
        features.push(json!({
            "modelId": model_id,
            "layer": hook,
            "index": d.unit,
            "maxActApprox": d.max,
            "frac_nonzero": d.frac_active,
            "pos_str": text(&mut up.iter().map(|t| t.0))?,
            "pos_values": up.iter().map(|t| t.1).collect::<Vec<_>>(),
            "neg_str": text(&mut down.iter().map(|t| t.0))?,
            "neg_values": down.iter().map(|t| t.1).collect::<Vec<_>>(),
            "freq_hist_data_bar_heights": h.counts,
            "freq_hist_data_bar_values": centres,
            "topkCosSimIndices": near.iter().map(|n| n.0).collect::<Vec<_>>(),
            "topkCosSimValues": near.iter().map(|n| n.1).collect::<Vec<_>>(),
            "activations": activations,
        }));
    }
    Ok(json!({ "modelId": model_id, "layer": hook, "features": features }))
}
