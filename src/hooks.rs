//! Hook points, named exactly as in TransformerLens, and the hooks that read or replace them.
//!
//! ```
//! use hooklens::HookPoint;
//! let p: HookPoint = "blocks.3.attn.hook_pattern".parse().unwrap();
//! assert_eq!(p.layer(), Some(3));
//! assert_eq!(p.to_string(), "blocks.3.attn.hook_pattern");
//! ```

use crate::error::{Error, Result};
use candle_core::Tensor;
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
    RotQ,
    RotK,
    AttnScores,
    Pattern,
    Z,
    Result,
    AttnOut,
    ResidMid,
    Ln2Scale,
    Ln2Normalized,
    MlpPre,
    MlpPreLinear,
    MlpPost,
    MlpOut,
    ResidPost,
}

impl BlockHook {
    /// Every block hook, in the order the forward pass reaches them.
    pub const ALL: [BlockHook; 21] = [
        BlockHook::ResidPre,
        BlockHook::Ln1Scale,
        BlockHook::Ln1Normalized,
        BlockHook::Q,
        BlockHook::K,
        BlockHook::V,
        BlockHook::RotQ,
        BlockHook::RotK,
        BlockHook::AttnScores,
        BlockHook::Pattern,
        BlockHook::Z,
        BlockHook::Result,
        BlockHook::AttnOut,
        BlockHook::ResidMid,
        BlockHook::Ln2Scale,
        BlockHook::Ln2Normalized,
        BlockHook::MlpPre,
        BlockHook::MlpPreLinear,
        BlockHook::MlpPost,
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
            RotQ => "attn.hook_rot_q",
            RotK => "attn.hook_rot_k",
            AttnScores => "attn.hook_attn_scores",
            Pattern => "attn.hook_pattern",
            Z => "attn.hook_z",
            Result => "attn.hook_result",
            AttnOut => "hook_attn_out",
            ResidMid => "hook_resid_mid",
            Ln2Scale => "ln2.hook_scale",
            Ln2Normalized => "ln2.hook_normalized",
            MlpPre => "mlp.hook_pre",
            MlpPreLinear => "mlp.hook_pre_linear",
            MlpPost => "mlp.hook_post",
            MlpOut => "hook_mlp_out",
            ResidPost => "hook_resid_post",
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
}

impl HookPoint {
    /// The block this hook point belongs to, if any.
    pub fn layer(&self) -> Option<usize> {
        match self {
            HookPoint::Block(l, _) => Some(*l),
            _ => None,
        }
    }

    /// Shorthand for `HookPoint::Block(layer, hook)`.
    pub fn block(layer: usize, hook: BlockHook) -> Self {
        HookPoint::Block(layer, hook)
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
            .map_err(|e| Error::Invalid(format!("bad --names regex `{pattern}`: {e}")))
    }
}

/// A hook function: sees the activation at its hook point and may return a replacement
/// (same shape), or `None` to leave it unchanged.
pub type HookFn<'a> = Box<dyn FnMut(&Tensor, HookPoint) -> Result<Option<Tensor>> + 'a>;

/// The hooks active during one forward pass, plus an optional cache being filled.
#[derive(Default)]
pub struct Hooks<'a> {
    fwd: Vec<(HookPoint, HookFn<'a>)>,
    cache_filter: Option<NameFilter>,
    pub(crate) cached: Vec<(HookPoint, Tensor)>,
}

impl<'a> Hooks<'a> {
    /// No hooks: a plain forward pass.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds a forward hook at `point`. Hooks at the same point run in the order added.
    pub fn add(
        mut self,
        point: HookPoint,
        f: impl FnMut(&Tensor, HookPoint) -> Result<Option<Tensor>> + 'a,
    ) -> Self {
        self.fwd.push((point, Box::new(f)));
        self
    }

    /// Also cache every activation that passes `filter` (after any hook has replaced it).
    pub fn with_cache(mut self, filter: NameFilter) -> Self {
        self.cache_filter = Some(filter);
        self
    }

    /// The hook points that have forward hooks.
    pub fn points(&self) -> impl Iterator<Item = &HookPoint> {
        self.fwd.iter().map(|(p, _)| p)
    }

    /// Whether anything (a hook or the cache) wants the activation at `point`: optional
    /// activations such as `attn.hook_result` are computed only then.
    pub fn wants(&self, point: HookPoint) -> bool {
        self.fwd.iter().any(|(p, _)| *p == point)
            || self
                .cache_filter
                .as_ref()
                .is_some_and(|f| f.matches(&point))
    }

    /// Runs the hooks at `point` over `x`, caches the result if asked, and returns it.
    pub fn apply(&mut self, point: HookPoint, mut x: Tensor) -> Result<Tensor> {
        for (p, f) in self.fwd.iter_mut() {
            if *p == point {
                if let Some(new) = f(&x, point)? {
                    if new.dims() != x.dims() {
                        return Err(Error::ShapeMismatch {
                            what: format!("the value returned by the hook on {point}"),
                            expected: x.dims().to_vec(),
                            got: new.dims().to_vec(),
                        });
                    }
                    x = new.to_dtype(x.dtype())?;
                }
            }
        }
        if self
            .cache_filter
            .as_ref()
            .is_some_and(|f| f.matches(&point))
        {
            self.cached.push((point, x.clone()));
        }
        Ok(x)
    }
}
