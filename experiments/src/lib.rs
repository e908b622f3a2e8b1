//! The hooklens lab: what turns hooklens's typed results into files a researcher opens.
//!
//! Arguments shared by the binaries ([`args`]), run folders ([`run`]) with their manifests
//! ([`manifest`]), parquet tables from typed rows ([`tables`], [`parquet`]), PNG plots
//! ([`plot`]), self-contained HTML pages ([`html`]) and long sweeps that resume and shard
//! ([`progress`]). Each binary in `src/bin/` is its arguments, one library call and one output
//! call.

pub mod args;
pub mod cli;
pub mod experiment;
pub mod features;
pub mod html;
pub mod manifest;
pub mod neuronpedia;
pub mod parquet;
pub mod plot;
pub mod progress;
pub mod report;
pub mod run;
pub mod store;
pub mod tables;
pub mod train_sae;

pub use experiment::{Experiment, Started};

/// A binary's `main`: parses its arguments, runs it, and turns the result into the exit code
/// ([`args::finish`]).
pub fn main<A: clap::Parser>(run: impl FnOnce(A) -> anyhow::Result<()>) -> std::process::ExitCode {
    args::finish(run(A::parse()))
}
