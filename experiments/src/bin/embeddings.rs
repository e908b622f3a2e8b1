//! Embeddings as vectors: each chosen token's nearest tokens by cosine in the embedding W_E and
//! the unembedding W_U, analogies a − b + c, and a 2-D PCA map of the chosen tokens. Writes
//! under `outputs/embeddings/<run>/`:
//!
//! - `nearest.parquet`: one row per (matrix, token, neighbour rank);
//! - `analogies.parquet`: one row per (matrix, analogy, result rank);
//! - `pca_w_e.png`: the chosen tokens' W_E rows projected on their two principal directions;
//! - `manifest.json`.

use anyhow::{Context, Result};
use clap::Parser;
use hooklens::analysis::embeddings::{pca_2d, UnitRows};
use lab::args::ModelArgs;
use lab::args::RunArgs;
use lab::manifest::Manifest;
use lab::plot::labelled_points;
use serde::Serialize;
use std::io::Write;

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

const NEAREST_COLUMNS: &[(&str, &str)] = &[
    (
        "matrix",
        "W_E (embedding rows) or W_U (unembedding columns)",
    ),
    ("token", "the token looked up"),
    ("rank", "0 = most similar"),
    ("neighbour", "a nearby token's text"),
    ("neighbour_id", "its id"),
    ("cosine", "cosine similarity of the two vectors"),
];
const ANALOGY_COLUMNS: &[(&str, &str)] = &[
    ("matrix", "W_E or W_U"),
    ("analogy", "a - b + c, the tokens as given"),
    (
        "rank",
        "0 = nearest to a - b + c (a, b and c left out, as word2vec)",
    ),
    ("result", "the token's text"),
    ("result_id", "its id"),
    ("cosine", "cosine similarity with a - b + c (unit vectors)"),
];

fn main() -> std::process::ExitCode {
    lab::args::finish(run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    let start = std::time::Instant::now();
    let (model, tok) = a.model.load().context("loading the model")?;
    let mut manifest = Manifest::new("embeddings", &model, &a)?;
    manifest.record_time("load_model", start);
    let byte_level = model.cfg.d_vocab <= 512;
    let tokens: Vec<String> = match (a.tokens.is_empty(), byte_level) {
        (false, _) => a.tokens.clone(),
        (true, true) => BYTES.iter().map(|s| s.to_string()).collect(),
        (true, false) => WORDS.iter().map(|s| s.to_string()).collect(),
    };
    let analogies: Vec<String> = match (a.analogies.is_empty(), byte_level) {
        (false, _) => a.analogies.clone(),
        (true, true) => vec!["B,A,a".into(), "2,1,7".into()],
        (true, false) => vec![" king, man, woman".into(), " Paris, France, Italy".into()],
    };
    let id = |t: &str, what: &str| tok.single_token(t, what);
    let ids: Vec<u32> = tokens
        .iter()
        .map(|t| id(t, "--token"))
        .collect::<hooklens::Result<_>>()?;
    let triples: Vec<(u32, u32, u32)> = analogies
        .iter()
        .map(|s| -> Result<(u32, u32, u32)> {
            let parts: Vec<&str> = s.split(',').collect();
            let [x, y, z] = parts[..] else {
                anyhow::bail!("--analogy {s:?}: write three tokens \"a, b, c\" for a - b + c");
            };
            // The first keeps its spacing; after a comma, one space is the separator's.
            let trim = |t: &str| t.strip_prefix(' ').unwrap_or(t).to_string();
            let (x, y, z) = (x.to_string(), trim(y), trim(z));
            let sp = |t: &str| match x.starts_with(' ') && !t.starts_with(' ') {
                true => format!(" {t}"),
                false => t.to_string(),
            };
            let w = "the --analogy token";
            Ok((id(&x, w)?, id(&sp(&y), w)?, id(&sp(&z), w)?))
        })
        .collect::<Result<_>>()?;

    let text = |i: u32| -> hooklens::Result<String> { Ok(tok.to_str_tokens(&[i])?.remove(0)) };
    let k = a.top as usize;
    let (mut n_m, mut n_t, mut n_r, mut n_n, mut n_i, mut n_c) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut a_m, mut a_a, mut a_r, mut a_t, mut a_i, mut a_c) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut out = std::io::stdout().lock();
    for (name, rows) in [
        ("W_E", UnitRows::embedding(&model)?),
        ("W_U", UnitRows::unembedding(&model)?),
    ] {
        for (t, &i) in tokens.iter().zip(&ids) {
            let near = rows.nearest(&rows.row(i)?, k, &[i])?;
            for (r, &(j, c)) in near.iter().enumerate() {
                n_m.push(name);
                n_t.push(t.clone());
                n_r.push(r as u32);
                n_n.push(text(j)?);
                n_i.push(j);
                n_c.push(c);
            }
        }
        for (s, &abc) in analogies.iter().zip(&triples) {
            let res = rows.analogy(abc, k)?;
            let shown: Vec<String> = res
                .iter()
                .take(5)
                .map(|&(j, c)| Ok(format!("{:?} {c:.3}", text(j)?)))
                .collect::<hooklens::Result<_>>()?;
            writeln!(out, "{name} {s:?}: {}", shown.join(", "))?;
            for (r, &(j, c)) in res.iter().enumerate() {
                a_m.push(name);
                a_a.push(s.clone());
                a_r.push(r as u32);
                a_t.push(text(j)?);
                a_i.push(j);
                a_c.push(c);
            }
        }
    }
    let run = a.out.dir("embeddings")?;
    let mut df = polars::df!("matrix" => n_m, "token" => n_t, "rank" => n_r, "neighbour" => n_n, "neighbour_id" => n_i, "cosine" => n_c)?;
    run.write_table(&mut manifest, "nearest.parquet", &mut df, NEAREST_COLUMNS)?;
    let mut df = polars::df!("matrix" => a_m, "analogy" => a_a, "rank" => a_r, "result" => a_t, "result_id" => a_i, "cosine" => a_c)?;
    run.write_table(&mut manifest, "analogies.parquet", &mut df, ANALOGY_COLUMNS)?;

    let idx = candle_core::Tensor::new(ids.as_slice(), model.device())?;
    let xy = pca_2d(&model.w_e.index_select(&idx, 0)?)?;
    let points: Vec<(String, f32, f32)> = tokens
        .iter()
        .zip(xy)
        .map(|(t, (x, y))| (format!("{t:?}"), x, y))
        .collect();
    labelled_points(
        &run.file("pca_w_e.png"),
        &format!(
            "{}: {} tokens' W_E rows, first two principal components",
            manifest.model.name,
            tokens.len()
        ),
        &points,
        "principal component 1",
        "principal component 2",
    )?;
    manifest.add_file(
        "pca_w_e.png",
        "the chosen tokens' embeddings projected on their two principal directions",
    );
    run.write_manifest(&manifest)?;
    writeln!(out, "wrote {}", run.path.display())?;
    Ok(())
}
