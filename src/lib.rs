//! hooklens: mechanistic interpretability of transformer language models.
//!
//! A [`HookedTransformer`] records, and lets you replace, every intermediate activation under
//! TransformerLens's hook names. Load one with [`load_model`], tokenize with
//! [`Tokenizer::to_tokens`], then call [`HookedTransformer::run_with_cache`] or
//! [`HookedTransformer::run_with_hooks`].

pub mod ablation;
pub mod cache;
pub mod cli;
pub mod config;
pub mod detectors;
pub mod error;
pub mod export;
pub mod generate;
pub mod hooks;
pub mod loading;
pub mod metrics;
pub mod model;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use cache::ActivationCache;
pub use config::ModelConfig;
pub use error::{Error, Result};
pub use hooks::{BlockHook, HookPoint, Hooks, NameFilter};
pub use loading::{load_model, LoadOptions, Processing};
pub use model::HookedTransformer;
pub use tokenizer::Tokenizer;
pub use weights::Weights;
