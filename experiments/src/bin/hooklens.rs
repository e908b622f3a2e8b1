//! The `hooklens` command line: list hook points, run a prompt, cache activations, generate.
//! Each subcommand is its arguments and one function in the lab's `cli` module.

use clap::{Parser, Subcommand};
use lab::cli;

#[derive(Parser)]
#[command(name = "hooklens", version, about = "Hooked transformers for mechanistic interpretability", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the model's hook points with their shapes on a prompt.
    Hooks(cli::HooksArgs),
    /// Run a prompt: the top-k next tokens with probabilities, and the loss (like
    /// TransformerLens's `test_prompt`).
    Run(cli::RunArgs),
    /// Run with cache and write the activations to a .safetensors file keyed by hook name
    /// (batch dimension kept; read it with `safetensors.numpy.load_file`).
    Cache(cli::CacheArgs),
    /// Continue a prompt: greedy at temperature 0, otherwise sampled.
    Generate(cli::GenerateArgs),
}

fn main() -> std::process::ExitCode {
    lab::main(|c: Cli| match c.cmd {
        Cmd::Hooks(a) => cli::hooks(a),
        Cmd::Run(a) => cli::run(a),
        Cmd::Cache(a) => cli::cache(a),
        Cmd::Generate(a) => cli::generate(a),
    })
}
