//! Units browsed over an activation store: dashboards (top examples, histograms, logit effects)
//! of a stored hook's units (the `dashboards` binary), and of an SAE's features with each
//! feature's nearest features by decoder direction and the same in Neuronpedia's feature JSON
//! (the `sae` binary's output half).

use crate::report::dashboard_views;
use crate::Experiment;
use anyhow::Result;
use candle_core::Tensor;
use hooklens::analysis::dashboards::{
    dashboards_of, logit_effects, most_similar, output_directions, DashboardOptions, UnitDashboard,
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
    #[command(flatten)]
    #[serde(flatten)]
    pub view: ViewArgs,
    /// Nearest features listed per feature, by the cosine similarity of decoder directions.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub similar: u32,
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
        let opts = self.view.options(units, (12, 4), filter.clone());
        let hook = sae.hook.to_string();
        // Tokens over --max-norm count as inactive (the filter's other rules are the
        // dashboards').
        let encode = |s: usize| {
            let x = store.read(s, &hook)?;
            let small: Vec<f32> = filter.norm_ok(&x)?.into_iter().map(f32::from).collect();
            let small = candle_core::Tensor::from_vec(small, (x.dim(0)?, 1), x.device())?;
            sae.encode(&x)?.broadcast_mul(&small).map_err(Into::into)
        };
        let dash = build(exp, store, ("the SAE", sae.d_sae), &encode, &opts)?;
        let dirs = sae.residual_directions(model)?;
        let effects = dirs
            .as_ref()
            .map(|d| logit_effects(model, d, &opts.units, self.view.logit_k as usize))
            .transpose()?;
        let similar = most_similar(&sae.w_dec, &opts.units, self.similar as usize)?;
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

/// How much of each dashboard, as flags (`dashboards`' and `sae`'s).
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct ViewArgs {
    /// Top examples per unit (or feature).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub top_k: u32,
    /// Histogram bins.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub bins: u32,
    /// Tokens listed per unit (or feature) as raised and lowered by its logit effect.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub logit_k: u32,
}

impl ViewArgs {
    /// The dashboards of `units`, each example with `context` (before, after) tokens around it,
    /// over the tokens `tokens` keeps.
    fn options(
        &self,
        units: Vec<usize>,
        (before, after): (usize, usize),
        tokens: TokenFilter,
    ) -> DashboardOptions {
        DashboardOptions {
            units,
            k: self.top_k as usize,
            bins: self.bins as usize,
            before,
            after,
            tokens,
        }
    }
}

/// Which units of a stored hook to show and how much of each, as flags (`dashboards`').
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct UnitArgs {
    /// Units (the hook's last axis, flattened), comma-separated numbers and ranges: `0..64,100`.
    /// Default: all.
    #[arg(long)]
    pub units: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub view: ViewArgs,
    /// Tokens shown before each example.
    #[arg(long, default_value_t = 12)]
    pub before: usize,
    /// Tokens shown after each example.
    #[arg(long, default_value_t = 4)]
    pub after: usize,
    /// Count BOS and the document separator too (left out by default: their activations are
    /// outliers in most models).
    #[arg(long)]
    pub include_bos: bool,
}

impl UnitArgs {
    /// Builds the dashboards of the chosen units of the stored `hook` (and their logit effects
    /// where the hook writes into the residual stream) and writes them into `exp`.
    pub fn browse(
        &self,
        exp: &mut Experiment,
        store: &ActivationStore,
        (model, tok): (&HookedTransformer, &Tokenizer),
        hook: &str,
    ) -> Result<()> {
        let width = store.spec.hook(hook)?.1.width();
        let units = match &self.units {
            Some(s) => crate::args::parse_ranges(s, width, "--units")?,
            None => (0..width).collect(),
        };
        let skip_tokens = match self.include_bos {
            true => vec![],
            false => crate::store::special_tokens(store),
        };
        let tokens = TokenFilter {
            skip_tokens,
            ..TokenFilter::all()
        };
        let opts = self.view.options(units, (self.before, self.after), tokens);
        let read = |s: usize| store.read(s, hook);
        let dash = build(exp, store, (hook, width), &read, &opts)?;
        let point = model.hook_point(hook)?;
        let effects = exp.time("logit_effects", || {
            output_directions(model, &point)?
                .map(|d| logit_effects(model, &d, &opts.units, self.view.logit_k as usize))
                .transpose()
        })?;
        exp.manifest.set("hook", hook)?;
        let counted = dash.first().map(|d| d.tokens);
        exp.manifest.set("tokens_counted", counted)?;
        dashboard_views(exp, store, hook, &dash, effects.as_ref(), None, tok)
    }
}

/// The dashboards of `opts.units` of the `width` units `units_of` computes from each shard
/// (`what` names them in errors), with a progress bar over the store's two passes, timed.
fn build(
    exp: &mut Experiment,
    store: &ActivationStore,
    (what, width): (&str, usize),
    units_of: &dyn Fn(usize) -> hooklens::Result<Tensor>,
    opts: &DashboardOptions,
) -> Result<Vec<UnitDashboard>> {
    let bar = crate::args::progress_bar(
        2 * store.spec.tokens as u64,
        "dashboards, two passes over the store",
        "tokens",
    )?;
    let dash = exp.time("dashboards", || {
        dashboards_of(store, what, width, units_of, opts, &mut |n| {
            bar.inc(n as u64)
        })
    })?;
    bar.finish_and_clear();
    Ok(dash)
}
