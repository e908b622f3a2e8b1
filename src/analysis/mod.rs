//! Analyses built on the hooked model, one idea per file.

pub mod ablation;
pub mod circuits;
pub mod dashboards;
pub mod detectors;
pub mod dla;
pub mod embeddings;
pub mod factored;
pub mod lens;
pub mod metrics;
pub mod neurons;
pub mod patching;
pub mod resid;
pub mod sweep;
