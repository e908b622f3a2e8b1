//! The library's typed errors. Each message says what is wrong and, where it can, what to do.

use std::path::PathBuf;

/// Everything that can go wrong in hooklens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model file not found: {path}. {hint}")]
    MissingFile { path: PathBuf, hint: String },
    #[error(
        "{path} is damaged or not the file expected here ({reason}); re-download or regenerate it"
    )]
    CorruptFile { path: PathBuf, reason: String },
    #[error("bad model config: {0}")]
    Config(String),
    #[error("weight {name} has shape {got:?} but the config implies {expected:?}; the config.json does not describe these weights")]
    WeightShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("weight {0} is missing from the checkpoint")]
    MissingWeight(String),
    #[error("unknown hook point `{name}`{}", suggest(.suggestions))]
    UnknownHook {
        name: String,
        suggestions: Vec<String>,
    },
    #[error("layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers})")]
    LayerOutOfRange { layer: usize, n_layers: usize },
    #[error("head {head} is out of range: each layer has {n_heads} heads (0..{n_heads})")]
    HeadOutOfRange { head: usize, n_heads: usize },
    #[error("position {pos} is out of range: the prompt has {len} tokens")]
    PositionOutOfRange { pos: usize, len: usize },
    #[error("the prompt is {len} tokens long but the model's context is {n_ctx}; shorten it")]
    PromptTooLong { len: usize, n_ctx: usize },
    #[error("the prompt is empty: give at least one token of text")]
    EmptyPrompt,
    #[error("shape mismatch at {what}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        what: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{point} is not in the cache, which holds {held}; record it with a filter that matches it, e.g. `NameFilter::Points(vec![\"{point}\".parse()?])`")]
    NotCached { point: String, held: String },
    #[error("{what} is never reached: {reason}")]
    NotReached { what: String, reason: String },
    #[error("{what} did not fire in this forward pass; check its site")]
    NotFired { what: String },
    #[error("bad site {site}: {reason}")]
    BadSite { site: String, reason: String },
    #[error("{path}: the checkpoint has tensors the model does not use: {}; this architecture or option is not supported, or the file is not the model the config describes", .names.join(", "))]
    UnusedWeights { path: PathBuf, names: Vec<String> },
    #[error("{source_name}{}: {reason}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    BadPair {
        source_name: String,
        line: Option<usize>,
        reason: String,
    },
    #[error("{source_name}{}: {reason}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    BadCorpus {
        source_name: String,
        line: Option<usize>,
        reason: String,
    },
    #[error("{path}: {reason}")]
    BadSae { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("Hugging Face Hub: {0}")]
    Hub(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{name} {value}: {valid}")]
    BadParameter {
        name: String,
        value: String,
        valid: String,
    },
    #[error("non-finite values (NaN or Inf) in {what}{}; {hint}", first.as_ref().map(|p| format!(": they first appear at {p}")).unwrap_or_default())]
    NonFinite {
        what: String,
        /// The first hook point holding them, where known.
        first: Option<String>,
        /// Where they come from and what to do.
        hint: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for Error {
    /// Without the backtrace candle attaches under `RUST_BACKTRACE` (a screenful of candle's
    /// frames in every message); the message and its context stay.
    fn from(e: candle_core::Error) -> Self {
        let mut e = e;
        while let candle_core::Error::WithBacktrace { inner, .. } = e {
            e = *inner;
        }
        Error::Candle(e)
    }
}

fn suggest(s: &[String]) -> String {
    if s.is_empty() {
        "; run `hooklens hooks` to list the model's hook points".to_string()
    } else {
        format!("; did you mean {}?", s.join(", "))
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A [`Error::BadParameter`]: parameter `name` (its field name, e.g. `top_k`) got `value`;
    /// `valid` says what it accepts, naming any other parameter in backticks. The lab rewrites
    /// both as command-line flags (`--top-k`).
    pub fn bad_parameter(
        name: &str,
        value: impl std::fmt::Display,
        valid: impl Into<String>,
    ) -> Self {
        Error::BadParameter {
            name: name.into(),
            value: value.to_string(),
            valid: valid.into(),
        }
    }

    /// An [`Error::Io`] naming the file involved.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
