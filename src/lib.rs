//! hooklens: mechanistic interpretability of transformer language models.
//!
//! A [`HookedTransformer`] records, and lets you replace, every intermediate activation under
//! TransformerLens's hook names. Load one with [`load_model`], tokenize with
//! [`Tokenizer::to_tokens`], then call [`HookedTransformer::run`] with [`Hooks`] that record
//! activations and apply [`Intervention`]s at [`Site`]s in one pass (or TransformerLens's
//! [`HookedTransformer::run_with_cache`] and [`HookedTransformer::run_with_hooks`]).

// The library reports errors; it does not panic on them.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod analysis;
pub mod atomic;
pub mod cache;
pub mod cache_file;
pub mod config;
pub mod corpus;
pub mod data;
pub mod error;
pub mod finite;
pub mod generate;
pub mod hook_points;
pub mod hooks;
pub mod intervention;
pub mod loading;
pub mod matmul;
pub mod model;
pub mod sae;
pub mod store;
pub mod text;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use cache::ActivationCache;
pub use config::ModelConfig;
pub use error::{Error, Result};
pub use hook_points::{BlockHook, HookPoint, NameFilter, SaeHook};
pub use hooks::{Hooks, Splice};
pub use intervention::{Fired, Intervention, InterventionSpec, Site};
pub use loading::{load_model, LoadOptions, Loaded, ModelSource, Processing};
pub use model::{HookedTransformer, Run};
pub use tokenizer::Tokenizer;
pub use weights::Weights;

/// The README's and the docs' Rust snippets, compiled by `cargo test` so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(doctest)]
#[doc = include_str!("../docs/hook-points.md")]
pub struct HookPointsDoctests;

#[cfg(doctest)]
#[doc = include_str!("../docs/activation-store.md")]
pub struct ActivationStoreDoctests;
