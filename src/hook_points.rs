//! The hook-name vocabulary: hook points named exactly as in TransformerLens, and filters
//! that select them. (The hooks that read or replace them at run time are in `hooks.rs`.)
//!
//! ```
//! use hooklens::HookPoint;
//! let p: HookPoint = "blocks.3.attn.hook_pattern".parse().unwrap();
//! assert_eq!(p.layer(), Some(3));
//! assert_eq!(p.to_string(), "blocks.3.attn.hook_pattern");
//! ```

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// A hook point inside one transformer block (`blocks.{layer}.{name}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockHook {
    ResidPre,
    Ln1Scale,
    Ln1Normalized,
    Q,
    K,
    V,
    /// QK-norm (Qwen3): the RMSNorm of each query / key head before the rotation.
    QNormScale,
    QNormNormalized,
    QNormed,
    KNormScale,
    KNormNormalized,
    KNormed,
    RotQ,
    RotK,
    AttnScores,
    Pattern,
    Z,
    Result,
    /// The norm on the attention output (Gemma 2's `ln1_post`).
    Ln1PostScale,
    Ln1PostNormalized,
    AttnOut,
    ResidMid,
    Ln2Scale,
    Ln2Normalized,
    MlpPre,
    MlpPreLinear,
    MlpPost,
    /// The norm on the MLP output (Gemma 2's `ln2_post`).
    Ln2PostScale,
    Ln2PostNormalized,
    MlpOut,
    ResidPost,
}

impl BlockHook {
    /// Every block hook, in the order the forward pass reaches them.
    pub const ALL: [BlockHook; 31] = [
        BlockHook::ResidPre,
        BlockHook::Ln1Scale,
        BlockHook::Ln1Normalized,
        BlockHook::Q,
        BlockHook::K,
        BlockHook::V,
        BlockHook::QNormScale,
        BlockHook::QNormNormalized,
        BlockHook::QNormed,
        BlockHook::KNormScale,
        BlockHook::KNormNormalized,
        BlockHook::KNormed,
        BlockHook::RotQ,
        BlockHook::RotK,
        BlockHook::AttnScores,
        BlockHook::Pattern,
        BlockHook::Z,
        BlockHook::Result,
        BlockHook::Ln1PostScale,
        BlockHook::Ln1PostNormalized,
        BlockHook::AttnOut,
        BlockHook::ResidMid,
        BlockHook::Ln2Scale,
        BlockHook::Ln2Normalized,
        BlockHook::MlpPre,
        BlockHook::MlpPreLinear,
        BlockHook::MlpPost,
        BlockHook::Ln2PostScale,
        BlockHook::Ln2PostNormalized,
        BlockHook::MlpOut,
        BlockHook::ResidPost,
    ];

    /// The name after `blocks.{layer}.`, as TransformerLens spells it.
    pub fn name(self) -> &'static str {
        use BlockHook::*;
        match self {
            ResidPre => "hook_resid_pre",
            Ln1Scale => "ln1.hook_scale",
            Ln1Normalized => "ln1.hook_normalized",
            Q => "attn.hook_q",
            K => "attn.hook_k",
            V => "attn.hook_v",
            QNormScale => "attn.q_norm.hook_scale",
            QNormNormalized => "attn.q_norm.hook_normalized",
            QNormed => "attn.hook_q_normed",
            KNormScale => "attn.k_norm.hook_scale",
            KNormNormalized => "attn.k_norm.hook_normalized",
            KNormed => "attn.hook_k_normed",
            RotQ => "attn.hook_rot_q",
            RotK => "attn.hook_rot_k",
            AttnScores => "attn.hook_attn_scores",
            Pattern => "attn.hook_pattern",
            Z => "attn.hook_z",
            Result => "attn.hook_result",
            Ln1PostScale => "ln1_post.hook_scale",
            Ln1PostNormalized => "ln1_post.hook_normalized",
            AttnOut => "hook_attn_out",
            ResidMid => "hook_resid_mid",
            Ln2Scale => "ln2.hook_scale",
            Ln2Normalized => "ln2.hook_normalized",
            MlpPre => "mlp.hook_pre",
            MlpPreLinear => "mlp.hook_pre_linear",
            MlpPost => "mlp.hook_post",
            Ln2PostScale => "ln2_post.hook_scale",
            Ln2PostNormalized => "ln2_post.hook_normalized",
            MlpOut => "hook_mlp_out",
            ResidPost => "hook_resid_post",
        }
    }
}

/// A hook point inside an SAE spliced into the model (see [`crate::Hooks::splice`]), named
/// as SAELens's `HookedSAETransformer` names them after the hook point the SAE writes:
/// `blocks.{layer}.{hook}.{name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SaeHook {
    /// The input as the SAE reads it, flattened to [batch, pos, d_in].
    Input,
    /// Pre-activations [batch, pos, d_sae].
    ActsPre,
    /// Feature activations [batch, pos, d_sae]: where features are ablated and steered.
    ActsPost,
    /// The decoded reconstruction [batch, pos, d_out].
    Recons,
    /// With the error term: the activation minus the reconstruction of the unhooked SAE,
    /// shaped as the hook point it writes.
    Error,
    /// What replaces the activation, shaped as the hook point it writes.
    Output,
}

impl SaeHook {
    /// In the order a spliced SAE reaches them.
    pub const ALL: [SaeHook; 6] = [
        SaeHook::Input,
        SaeHook::ActsPre,
        SaeHook::ActsPost,
        SaeHook::Recons,
        SaeHook::Error,
        SaeHook::Output,
    ];

    /// SAELens's name.
    pub fn name(self) -> &'static str {
        match self {
            SaeHook::Input => "hook_sae_input",
            SaeHook::ActsPre => "hook_sae_acts_pre",
            SaeHook::ActsPost => "hook_sae_acts_post",
            SaeHook::Recons => "hook_sae_recons",
            SaeHook::Error => "hook_sae_error",
            SaeHook::Output => "hook_sae_output",
        }
    }
}

/// A named place in the forward pass whose activation can be read or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// `hook_embed`: token embeddings [batch, pos, d_model].
    Embed,
    /// `hook_pos_embed`: learned positional embeddings [batch, pos, d_model].
    PosEmbed,
    /// `blocks.{layer}.{hook}`.
    Block(usize, BlockHook),
    /// `ln_final.hook_scale` [batch, pos, 1].
    LnFinalScale,
    /// `ln_final.hook_normalized` [batch, pos, d_model].
    LnFinalNormalized,
    /// `blocks.{layer}.{hook}.{sae hook}`: inside the SAE spliced at `blocks.{layer}.{hook}`.
    Sae(usize, BlockHook, SaeHook),
}

impl HookPoint {
    /// The block this hook point belongs to, if any.
    pub fn layer(&self) -> Option<usize> {
        match self {
            HookPoint::Block(l, _) | HookPoint::Sae(l, ..) => Some(*l),
            _ => None,
        }
    }

    /// The model's hook point an SAE hook point belongs to (the one its SAE writes); itself
    /// for any other.
    pub fn base(&self) -> HookPoint {
        match self {
            HookPoint::Sae(l, h, _) => HookPoint::Block(*l, *h),
            p => *p,
        }
    }

    /// Shorthand for `HookPoint::Block(layer, hook)`.
    pub fn block(layer: usize, hook: BlockHook) -> Self {
        HookPoint::Block(layer, hook)
    }

    /// Which axis of this hook point's activation holds positions, heads and neurons (the
    /// last, per-unit axis), as TransformerLens shapes them. Patterns and scores index the
    /// query position; `hook_scale` has no neuron axis.
    pub fn axes(&self) -> Axes {
        use BlockHook::*;
        let (pos, head, neuron) = match self {
            // The error and output have the shape of the hook point the SAE writes.
            HookPoint::Sae(_, _, SaeHook::Error | SaeHook::Output) => return self.base().axes(),
            // [batch, pos, d]: the SAE's features are its neurons.
            HookPoint::Sae(..) => (Some(1), None, Some(2)),
            HookPoint::Block(
                _,
                Q | K | V | QNormNormalized | QNormed | KNormNormalized | KNormed | RotQ | RotK | Z
                | Result,
            ) => (Some(1), Some(2), Some(3)),
            HookPoint::Block(_, QNormScale | KNormScale) => (Some(1), Some(2), None),
            HookPoint::Block(_, AttnScores | Pattern) => (Some(2), Some(1), None),
            HookPoint::Block(_, Ln1Scale | Ln2Scale | Ln1PostScale | Ln2PostScale)
            | HookPoint::LnFinalScale => (Some(1), None, None),
            _ => (Some(1), None, Some(2)),
        };
        Axes { pos, head, neuron }
    }
}

/// The axes of an activation that a [`Site`] can select along (see [`HookPoint::axes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Axes {
    pub pos: Option<usize>,
    pub head: Option<usize>,
    pub neuron: Option<usize>,
}

impl serde::Serialize for HookPoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HookPoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookPoint::Embed => f.write_str("hook_embed"),
            HookPoint::PosEmbed => f.write_str("hook_pos_embed"),
            HookPoint::Block(l, h) => write!(f, "blocks.{l}.{}", h.name()),
            HookPoint::LnFinalScale => f.write_str("ln_final.hook_scale"),
            HookPoint::LnFinalNormalized => f.write_str("ln_final.hook_normalized"),
            HookPoint::Sae(l, h, s) => write!(f, "blocks.{l}.{}.{}", h.name(), s.name()),
        }
    }
}

impl FromStr for HookPoint {
    type Err = Error;

    /// Parses a TransformerLens hook name. Layer ranges are checked against a model by
    /// [`crate::HookedTransformer::check_hook`]; this only checks the spelling.
    fn from_str(s: &str) -> Result<Self> {
        let unknown = || Error::UnknownHook {
            name: s.to_string(),
            suggestions: vec![],
        };
        match s {
            "hook_embed" => return Ok(HookPoint::Embed),
            "hook_pos_embed" => return Ok(HookPoint::PosEmbed),
            "ln_final.hook_scale" => return Ok(HookPoint::LnFinalScale),
            "ln_final.hook_normalized" => return Ok(HookPoint::LnFinalNormalized),
            _ => {}
        }
        if let Some((base, name)) = s.rsplit_once('.') {
            if let Some(sae) = SaeHook::ALL.into_iter().find(|h| h.name() == name) {
                return match base.parse().map_err(|_| unknown())? {
                    HookPoint::Block(l, h) => Ok(HookPoint::Sae(l, h, sae)),
                    _ => Err(unknown()),
                };
            }
        }
        let rest = s.strip_prefix("blocks.").ok_or_else(unknown)?;
        let (layer, name) = rest.split_once('.').ok_or_else(unknown)?;
        let layer: usize = layer.parse().map_err(|_| unknown())?;
        let hook = BlockHook::ALL
            .into_iter()
            .find(|h| h.name() == name)
            .ok_or_else(unknown)?;
        Ok(HookPoint::Block(layer, hook))
    }
}

/// Which hook points to keep in a cache.
#[derive(Debug, Clone, Default)]
pub enum NameFilter {
    /// Every hook point except the optional `attn.hook_result` (as in TransformerLens, where it
    /// exists only with `use_attn_result`); name it in a regex or list to get it.
    #[default]
    All,
    /// The hook points whose name matches this regular expression (searched, not anchored).
    Regex(regex::Regex),
    /// Exactly these hook points.
    Points(Vec<HookPoint>),
}

impl NameFilter {
    /// Whether `point` passes the filter.
    pub fn matches(&self, point: &HookPoint) -> bool {
        match self {
            NameFilter::All => !matches!(point, HookPoint::Block(_, BlockHook::Result)),
            NameFilter::Regex(r) => r.is_match(&point.to_string()),
            NameFilter::Points(ps) => ps.contains(point),
        }
    }

    /// A filter from a regular expression, with a clear error if it does not compile.
    pub fn regex(pattern: &str) -> Result<Self> {
        regex::Regex::new(pattern)
            .map(NameFilter::Regex)
            .map_err(|e| Error::Invalid(format!("bad hook-name regex `{pattern}`: {e}")))
    }
}

impl fmt::Display for NameFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameFilter::All => f.write_str("all (every hook point but attn.hook_result)"),
            NameFilter::Regex(r) => write!(f, "regex `{r}`"),
            NameFilter::Points(ps) => write!(f, "{} named points", ps.len()),
        }
    }
}
