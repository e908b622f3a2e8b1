//! Embeddings as vectors: each chosen token's nearest tokens by cosine in the embedding W_E and
//! the unembedding W_U, analogies a − b + c, and a 2-D PCA map of the chosen tokens. Writes
//! under `outputs/embeddings/<run>/`:
//!
//! - `nearest.parquet`: one row per (matrix, token, neighbour rank);
//! - `analogies.parquet`: one row per (matrix, analogy, result rank);
//! - `pca_w_e.png`: the chosen tokens' W_E rows projected on their two principal directions;
//! - `manifest.json`.

use anyhow::Result;
use clap::Parser;
use hooklens::analysis::embeddings::{analogies, nearest_tokens, pca_2d};
use lab::args::{ModelArgs, RunArgs};
use serde::Serialize;

#[derive(Parser, Serialize)]
#[command(
    about = "Nearest tokens by cosine in W_E and W_U, analogies a - b + c, and a PCA map of chosen tokens",
    after_help = "Tokens are given exactly, leading space included: --token \" king\" --analogy \" king, man, woman\" (a, b, c: a - b + c). Each must be one token of the model's vocabulary."
)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// A token to look up (repeat the flag). Default: a list of common words (letters and
    /// digits for a byte-level model).
    #[arg(long = "token")]
    tokens: Vec<String>,
    /// An analogy "a, b, c" for a - b + c (repeat the flag). Default: " king, man, woman" and
    /// " Paris, France, Italy" (letter case and digits for a byte-level model).
    #[arg(long = "analogy")]
    analogies: Vec<String>,
    /// Neighbours and analogy results listed per token.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    top: u32,
    #[command(flatten)]
    out: RunArgs,
}

const WORDS: [&str; 20] = [
    " king", " queen", " man", " woman", " boy", " girl", " Paris", " France", " Rome", " Italy",
    " London", " one", " two", " three", " red", " blue", " green", " dog", " cat", " horse",
];
const BYTES: [&str; 16] = [
    "a", "b", "c", "A", "B", "C", "1", "2", "3", " ", ".", ",", "x", "y", "X", "Y",
];

fn main() -> std::process::ExitCode {
    lab::main(run)
}

fn run(a: Args) -> Result<()> {
    let (mut exp, model, tok) = lab::Experiment::start("embeddings", &a.model, &a.out, &a)?;
    let byte_level = model.cfg.d_vocab <= 512;
    let tokens: Vec<String> = match (a.tokens.is_empty(), byte_level) {
        (false, _) => a.tokens.clone(),
        (true, true) => BYTES.iter().map(|s| s.to_string()).collect(),
        (true, false) => WORDS.iter().map(|s| s.to_string()).collect(),
    };
    let queries: Vec<String> = match (a.analogies.is_empty(), byte_level) {
        (false, _) => a.analogies.clone(),
        (true, true) => vec!["B,A,a".into(), "2,1,7".into()],
        (true, false) => vec![" king, man, woman".into(), " Paris, France, Italy".into()],
    };
    let id = |t: &str, what: &str| tok.single_token(t, what);
    let ids: Vec<u32> = tokens
        .iter()
        .map(|t| id(t, "--token"))
        .collect::<hooklens::Result<_>>()?;
    let triples: Vec<(u32, u32, u32)> = queries
        .iter()
        .map(|s| lab::args::parse_analogy(&tok, s))
        .collect::<Result<_>>()?;
    let k = a.top as usize;
    let near = nearest_tokens(&model, &ids, k)?;
    let found = analogies(&model, &triples, k)?;
    lab::report::print_analogies(&found, &queries, &tok)?;
    let idx = candle_core::Tensor::new(ids.as_slice(), model.device())?;
    let xy = pca_2d(&model.w_e.index_select(&idx, 0)?)?; // the tokens' W_E rows
    lab::report::embedding_views(&mut exp, &tok, (&near, &tokens), (&found, &queries), &xy)?;
    exp.finish()
}
