//! An SAE's features browsed over an activation store: dashboards (top examples, histograms,
//! logit effects), each feature's nearest features by decoder direction, and the same in
//! Neuronpedia's feature JSON. The `sae` binary's output half.

use crate::report::dashboard_views;
use crate::Experiment;
use anyhow::Result;
use hooklens::analysis::dashboards::{
    dashboards_of, logit_effects, most_similar, DashboardOptions,
};
use hooklens::sae::Sae;
use hooklens::store::{ActivationStore, TokenFilter};
use hooklens::{HookedTransformer, Tokenizer};

/// The features shown and each one's nearest features (feature, cosine similarity), which
/// [`crate::report::sae_views`] tables.
pub struct Browsed {
    pub features: Vec<usize>,
    pub similar: Vec<Vec<(u32, f32)>>,
}

/// Which features to browse and how much of each, as flags.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct FeatureArgs {
    /// Features to build dashboards of, e.g. `0..64,100` (default: the first 256).
    #[arg(long)]
    pub features: Option<String>,
    /// Top examples per feature, histogram bins, logit-effect tokens and similar features.
    #[arg(long, default_value_t = 20)]
    pub top_k: usize,
    #[arg(long, default_value_t = 40)]
    pub bins: usize,
    #[arg(long, default_value_t = 10)]
    pub logit_k: usize,
    #[arg(long, default_value_t = 5)]
    pub similar: usize,
}

impl FeatureArgs {
    /// Builds the dashboards of the chosen features of `sae` over `store` (the tokens `filter`
    /// keeps) and writes them and `neuronpedia.json` into `exp`.
    pub fn browse(
        &self,
        exp: &mut Experiment,
        store: &ActivationStore,
        (model, tok): (&HookedTransformer, &Tokenizer),
        sae: &Sae,
        filter: &TokenFilter,
    ) -> Result<Browsed> {
        let units = match &self.features {
            Some(s) => crate::args::parse_ranges(s, sae.d_sae, "--features")?,
            None => (0..sae.d_sae.min(256)).collect(),
        };
        let opts = DashboardOptions {
            units,
            k: self.top_k,
            bins: self.bins,
            before: 12,
            after: 4,
            tokens: filter.clone(),
        };
        let hook = sae.hook.to_string();
        // Tokens over --max-norm count as inactive (the filter's other rules are the
        // dashboards').
        let encode = |s: usize| {
            let x = store.read(s, &hook)?;
            let small: Vec<f32> = filter.norm_ok(&x)?.into_iter().map(f32::from).collect();
            let small = candle_core::Tensor::from_vec(small, (x.dim(0)?, 1), x.device())?;
            sae.encode(&x)?.broadcast_mul(&small).map_err(Into::into)
        };
        let bar = crate::args::progress_bar(
            2 * store.spec.tokens as u64,
            "feature dashboards",
            "tokens",
        )?;
        let dash = exp.time("dashboards", || {
            dashboards_of(store, "the SAE", sae.d_sae, &encode, &opts, &mut |n| {
                bar.inc(n as u64)
            })
        })?;
        bar.finish_and_clear();
        let dirs = sae.residual_directions(model)?;
        let effects = dirs
            .as_ref()
            .map(|d| logit_effects(model, d, &opts.units, self.logit_k))
            .transpose()?;
        let similar = most_similar(&sae.w_dec, &opts.units, self.similar)?;
        let np = crate::neuronpedia::features_json(
            &exp.manifest.model.name,
            &hook,
            &dash,
            effects.as_ref(),
            &similar,
            tok,
        )?;
        exp.page("neuronpedia.json", "The feature dashboards in Neuronpedia's feature JSON (pos_str, freq_hist_data_bar_heights, activations, ...)", &serde_json::to_string(&np)?)?;
        dashboard_views(
            exp,
            store,
            &format!("SAE at {hook}"),
            &dash,
            effects.as_ref(),
            Some(&similar),
            tok,
        )?;
        Ok(Browsed {
            features: opts.units,
            similar,
        })
    }
}
