//! The lab side of activation stores: the corpus from files (parquet too), a capture into a
//! run folder with a memory budget, progress, resume, `--shard i/n` and `--merge`, and the
//! measured peak memory.

use crate::manifest::hash_file;
use crate::progress::{check_same_args, comparable_args, read_args, Shard};
use crate::run::RunDir;
use anyhow::{bail, Context, Result};
use clap::Args;
use hooklens::corpus::{pack, read_documents, Contexts, Document, Packing};
use hooklens::store::{plan, shard_path, write_shard, Capture, StoreSpec, FORMAT};
use hooklens::{HookedTransformer, Tokenizer};
use polars::prelude::*;
use std::path::{Path, PathBuf};

/// The corpus and how it is packed into contexts.
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct CorpusArgs {
    /// Text files: .txt (documents separated by blank lines, or one per line when there are
    /// none), .jsonl (one object per line) or .parquet, with the text in --text-field. The real
    /// English corpus: `bash scripts/fetch_corpus.sh` prints its path. Default: the small
    /// committed corpus tests/fixtures/corpus/tiny.txt.
    #[arg(long, value_delimiter = ',')]
    pub corpus: Vec<PathBuf>,
    /// The text field of .jsonl objects and the text column of .parquet files.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Tokens per context, BOS included (at most the model's context).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(2..))]
    pub context_len: u64,
    /// Stop after this many tokens (whole contexts). Default: the whole corpus.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub tokens: Option<u64>,
    /// Seeds the order of the documents.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The committed test corpus, used when no --corpus is given.
pub const TINY_CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/corpus/tiny.txt"
);

impl CorpusArgs {
    /// The corpus files, or the committed tiny corpus.
    pub fn files(&self) -> Vec<PathBuf> {
        match self.corpus.is_empty() {
            true => vec![PathBuf::from(TINY_CORPUS)],
            false => self.corpus.clone(),
        }
    }

    /// Reads, tokenizes and packs the corpus for `model` (BOS first and between documents when
    /// the model has one), with each file's sha256 for the record.
    pub fn contexts(
        &self,
        model: &HookedTransformer,
        tok: &Tokenizer,
    ) -> Result<(Contexts, serde_json::Value)> {
        let mut docs = Vec::new();
        let mut files = Vec::new();
        for f in self.files() {
            docs.extend(read_any(&f, &self.text_field)?);
            files.push(hash_file(&f.canonicalize().unwrap_or(f))?);
        }
        let bos = tok.bos_token_id.or(tok.eos_token_id);
        let packing = Packing {
            context_len: self.context_len as usize,
            bos: bos.filter(|_| model.cfg.default_prepend_bos),
            separator: bos,
            seed: self.seed,
        };
        let max = self
            .tokens
            .map(|t| (t as usize / packing.context_len).max(1));
        let contexts = pack(&docs, tok, model.cfg.n_ctx, &packing, max)?;
        if let Some(t) = self.tokens {
            if (t as usize) < contexts.context_len {
                bail!(
                    "--tokens {t} is less than one context of {}",
                    contexts.context_len
                );
            }
            if contexts.tokens.len() + contexts.context_len <= t as usize {
                bail!(
                    "--tokens {t}: the corpus has only {} tokens in {} contexts of {}; leave --tokens out to use all of it",
                    contexts.tokens.len(),
                    contexts.len(),
                    contexts.context_len
                );
            }
        }
        let record = serde_json::json!({
            "files": files,
            "text_field": self.text_field,
            "documents": contexts.documents,
            "text_tokens": contexts.text_tokens,
            "bos": packing.bos,
            "separator": packing.separator,
            "seed": self.seed,
        });
        Ok((contexts, record))
    }
}

/// The documents of a .txt, .jsonl or .parquet file.
pub fn read_any(path: &Path, text_field: &str) -> Result<Vec<Document>> {
    if path.extension().and_then(|e| e.to_str()) != Some("parquet") {
        return Ok(read_documents(path, text_field)?);
    }
    let df = crate::parquet::read_parquet(path)?;
    let col = df.column(text_field).map_err(|_| {
        anyhow::anyhow!(
            "{}: no column `{text_field}` (it has {:?}); name the text column with --text-field",
            path.display(),
            df.get_column_names()
        )
    })?;
    let texts = col.str().map_err(|_| {
        anyhow::anyhow!(
            "{}: column `{text_field}` is {}, not text",
            path.display(),
            col.dtype()
        )
    })?;
    let mut docs = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let Some(text) = t.filter(|t| !t.trim().is_empty()) else {
            continue;
        };
        docs.push(Document {
            text: text.into(),
            source: path.display().to_string(),
            line: i + 1,
        });
    }
    if docs.is_empty() {
        bail!("{}: holds no text: the corpus is empty", path.display());
    }
    Ok(docs)
}

/// Resident and peak resident memory of this process in bytes (Linux; zeros elsewhere).
pub fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The resident memory a budget must count for `model`: what is resident now, and the packed
/// copies of its weights that its forwards may still make
/// (`HookedTransformer::packed_bytes_to_come`).
pub fn resident_with(model: &HookedTransformer) -> u64 {
    memory().0 + model.packed_bytes_to_come()
}

/// A byte size as written on the command line: `4G`, `512M`, `1.5GiB`, or plain bytes.
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.trim_end_matches("IB").trim_end_matches('B');
    let (num, mult) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0)
        .map(|v| (v * mult as f64) as u64)
        .ok_or_else(|| format!("{s:?} is not a size: write e.g. 4G, 512M or 1.5GiB"))
}

/// What goes into a store and how big its pieces may be, as flags (`capture`'s).
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct StoreArgs {
    /// Hook points to store, comma-separated TransformerLens names (`hooklens hooks` lists them).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "blocks.0.attn.hook_z,blocks.1.hook_resid_post"
    )]
    pub hooks: Vec<String>,
    /// How activations are stored (the forward runs in --dtype).
    #[arg(long, value_enum, default_value_t = crate::args::DTypeArg::F32)]
    pub store_dtype: crate::args::DTypeArg,
    /// Peak resident memory of the whole process (model included): 4G, 512M, 1.5GiB. Batch and
    /// shard sizes are planned to stay under it; the measured peak is in the manifest.
    #[arg(long, default_value = "4G", value_parser = parse_bytes)]
    pub max_memory: u64,
    /// Tokens per store shard, about (whole batches). Default: planned from --max-memory, at
    /// most 256 MB a shard.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub shard_tokens: Option<u64>,
    #[command(flatten)]
    pub sweep: crate::args::ShardArgs,
}

impl StoreArgs {
    /// The store of `model`'s hooks over `corpus` (the contexts and their provenance) in `dir`
    /// (from [`capture_dir`]): planned within --max-memory and captured shard by shard (those a
    /// `--resume` finds are kept), or with `--merge` combined from the shard folders. Then, for a
    /// whole store, its statistics and tables; the manifest gets the spec and the peak memory.
    pub fn capture(
        &self,
        exp: &mut crate::Experiment,
        (model, tok): (&HookedTransformer, &Tokenizer),
        (contexts, corpus): (Contexts, serde_json::Value),
        dir: RunDir,
        resume: bool,
        args: &impl serde::Serialize,
    ) -> Result<StoreSpec> {
        let hooks = self
            .hooks
            .iter()
            .map(|h| model.hook_point(h))
            .collect::<hooklens::Result<_>>()?;
        let capture = Capture::new(model, hooks, self.store_dtype.dtype())?;
        let spec = if self.sweep.merge {
            merge_store(&dir, args)?
        } else {
            let m = &exp.manifest.model;
            let provenance =
                serde_json::json!({ "model": m.name, "weights": m.weights, "corpus": corpus });
            let plan = plan_store(&capture, &contexts, self, provenance)?;
            let start = std::time::Instant::now();
            let shard = self.sweep.shard.unwrap_or(Shard::WHOLE);
            let (spec, computed, tokens) =
                capture_in_folder(&dir, resume, shard, args, &capture, &contexts, plan)?;
            exp.manifest.record_time("capture", start);
            let rate = tokens as f64 / start.elapsed().as_secs_f64();
            println!("captured {tokens} tokens in {computed} new shards ({rate:.0} tokens/s)");
            spec
        };
        exp.set_run(dir.clone());
        exp.manifest.set("store", &spec)?;
        if self.sweep.shard.is_none() {
            store_tables(exp, &dir, &spec, &contexts, tok)?;
        }
        let (_, peak) = memory();
        exp.manifest.set("peak_rss_bytes", peak)?;
        let max = self.max_memory >> 20;
        println!(
            "peak resident memory {} MB (--max-memory {max} MB)",
            peak >> 20
        );
        Ok(spec)
    }
}

/// Captures `capture` over `contexts` into the run folder (a shard's `shard=i` folder with
/// `--shard`), skipping shards already written on `--resume`. The store layout (batch and
/// shard sizes) comes from `spec`; `args` are saved and must match on resume. Returns the spec,
/// the shards computed now (not found from an earlier run) and their tokens.
fn capture_in_folder(
    dir: &RunDir,
    resume: bool,
    shard: Shard,
    args: &impl serde::Serialize,
    capture: &Capture,
    contexts: &Contexts,
    spec: StoreSpec,
) -> Result<(StoreSpec, usize, usize)> {
    crate::progress::save_or_check_args(dir, resume, args)?;
    let spec_path = dir.file("store.json");
    if resume {
        let saved: StoreSpec = crate::progress::read_json(&spec_path)?;
        if saved != spec {
            bail!(
                "{}: the store there was planned differently (batches, shards or hooks); start a new run with --run NAME",
                spec_path.display()
            );
        }
    } else {
        hooklens::atomic::atomic_write(
            &spec_path,
            serde_json::to_string_pretty(&spec)?.as_bytes(),
        )?;
    }
    // A shard cut short by a kill is a hidden temporary file: drop it, it is recomputed.
    if let Ok(entries) = std::fs::read_dir(dir.path.join("shards")) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    let mine = shard.select(&vec![1.0; spec.shards]);
    let todo: Vec<usize> = (0..spec.shards)
        .filter(|&i| mine[i] && !shard_path(&dir.path, i).is_file())
        .collect();
    let tokens: usize = todo
        .iter()
        .map(|&i| spec.shard_contexts(i).len() * spec.context_len)
        .sum();
    let bar = indicatif::ProgressBar::new(tokens as u64).with_style(indicatif::ProgressStyle::with_template(
        "capturing {bar:30} {human_pos}/{human_len} tokens  {per_sec}  [{elapsed}<{eta}]  shard {msg}",
    )?);
    for &i in &todo {
        bar.set_message(format!("{i} of {}", spec.shards));
        let data = capture.shard(&spec, contexts, i, &mut |n| bar.inc(n as u64))?;
        write_shard(&dir.path, &spec, i, &data)?;
    }
    bar.finish_and_clear();
    Ok((spec, todo.len(), tokens))
}

/// The store spec for capturing `capture` over `contexts` within --max-memory bytes of
/// resident memory in all (what is resident now, the model and corpus, counted, and the
/// model's packed weights to come), in shards of --shard-tokens.
fn plan_store(
    capture: &Capture,
    contexts: &Contexts,
    args: &StoreArgs,
    provenance: serde_json::Value,
) -> Result<StoreSpec> {
    let (max_memory, shard_tokens) = (args.max_memory, args.shard_tokens);
    let shapes = capture.shapes()?;
    let widths: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
    let resident = resident_with(capture.model());
    let available = max_memory.checked_sub(resident).with_context(|| {
        format!(
            "--max-memory {} MB is below the {} MB already resident (model, its packed weights to come, corpus); raise it",
            max_memory >> 20,
            resident >> 20
        )
    })?;
    let p = plan(
        capture,
        &widths,
        contexts.context_len,
        available,
        shard_tokens.map(|t| t as usize),
    )?;
    eprintln!(
        "plan: {} MB resident (model, its packed weights to come, corpus), {} contexts per forward (~{} MB), {} per shard ({} MB), within --max-memory {} MB",
        resident >> 20,
        p.contexts_per_batch,
        p.forward_bytes >> 20,
        p.contexts_per_shard,
        p.shard_bytes >> 20,
        max_memory >> 20
    );
    Ok(StoreSpec {
        format: FORMAT.into(),
        hooks: capture
            .hooks
            .iter()
            .zip(shapes)
            .map(|(h, shape)| hooklens::store::StoredHook {
                name: h.to_string(),
                shape,
            })
            .collect(),
        dtype: match capture.dtype {
            candle_core::DType::F16 => "f16",
            candle_core::DType::BF16 => "bf16",
            _ => "f32",
        }
        .into(),
        context_len: contexts.context_len,
        contexts: contexts.len(),
        tokens: contexts.tokens.len(),
        contexts_per_shard: p.contexts_per_shard,
        contexts_per_batch: p.contexts_per_batch,
        shards: contexts.len().div_ceil(p.contexts_per_shard),
        stop_at_layer: capture.stop_at_layer,
        provenance,
    })
}

/// Combines the finished `shard=i` folders of the run `root` into it: every store shard
/// hard-linked (or copied) into `root/shards/`, and `store.json`. The shards must have run with
/// the same arguments (`args`) and plan.
fn merge_store(root: &RunDir, args: &impl serde::Serialize) -> Result<StoreSpec> {
    let args = comparable_args(args)?;
    let mut spec: Option<StoreSpec> = None;
    let mut folders = Vec::new();
    for entry in
        std::fs::read_dir(&root.path).with_context(|| format!("reading {}", root.path.display()))?
    {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("shard="))
        {
            check_same_args(&read_args(&path.join("args.json"))?, &args, &path)?;
            let s: StoreSpec = crate::progress::read_json(&path.join("store.json"))?;
            if spec.as_ref().is_some_and(|p| *p != s) {
                bail!("{}: planned differently from the other shards; rerun it with the same --max-memory", path.display());
            }
            spec = Some(s);
            folders.push(path);
        }
    }
    let Some(spec) = spec else {
        bail!(
            "--merge: {} has no shard=INDEX folders; run the shards with --shard INDEX/COUNT first",
            root.path.display()
        );
    };
    for i in 0..spec.shards {
        let found = folders
            .iter()
            .map(|f| shard_path(f, i))
            .find(|p| p.is_file());
        let Some(from) = found else {
            bail!("store shard {i} is in none of the shard=INDEX folders: a shard run is unfinished; resume it with --resume");
        };
        let to = shard_path(&root.path, i);
        std::fs::create_dir_all(to.parent().context("shard path")?)?;
        if !to.exists() && std::fs::hard_link(&from, &to).is_err() {
            hooklens::atomic::atomic_write(&to, &std::fs::read(&from)?)?;
        }
    }
    hooklens::atomic::atomic_write(
        &root.file("store.json"),
        serde_json::to_string_pretty(&spec)?.as_bytes(),
    )?;
    Ok(spec)
}

/// Every token of the store as a table: `token_id`, `context`, `position`, `shard`, `row` (its
/// row in the shard) and `token` (its text).
pub fn tokens_frame(spec: &StoreSpec, contexts: &Contexts, tok: &Tokenizer) -> Result<DataFrame> {
    let n = spec.tokens;
    let c = spec.context_len;
    let ids = &contexts.tokens[..n];
    let shard: Vec<u32> = (0..n)
        .map(|t| (t / c / spec.contexts_per_shard) as u32)
        .collect();
    let row: Vec<u32> = (0..n)
        .map(|t| (t - (t / c / spec.contexts_per_shard) * spec.contexts_per_shard * c) as u32)
        .collect();
    let text: Vec<String> = ids
        .iter()
        .map(|&i| tok.decode(&[i]))
        .collect::<hooklens::Result<_>>()?;
    Ok(df!(
        "token_id" => ids.to_vec(),
        "context" => (0..n).map(|t| (t / c) as u32).collect::<Vec<_>>(),
        "position" => (0..n).map(|t| (t % c) as u32).collect::<Vec<_>>(),
        "shard" => shard,
        "row" => row,
        "token" => text,
    )?)
}

/// The columns of `tokens.parquet`.
pub const TOKEN_COLUMNS: &[(&str, &str)] = &[
    ("token_id", "The token's id"),
    ("context", "Its context (row of the packed corpus), from 0"),
    (
        "position",
        "Its position in the context, from 0 (0 is BOS when the model uses one)",
    ),
    (
        "shard",
        "The store shard holding its activations: shards/NNNNNN.safetensors",
    ),
    ("row", "Its row in that shard's tensors"),
    ("token", "The token's text"),
];

/// Without `--model`, the model `store` was captured with.
pub fn default_model(model: &mut crate::args::ModelArgs, store: &hooklens::store::ActivationStore) {
    if model.model.is_none() {
        model.model = store.spec.provenance["model"]
            .as_str()
            .filter(|m| *m != hooklens::loading::EMBEDDED_NAME)
            .map(String::from);
    }
}

/// An error unless the store `store` was captured from the model whose weight files
/// `weights` lists (`Manifest::model.weights`: paths and sha256).
pub fn check_store_model(
    store: &hooklens::store::ActivationStore,
    weights: &[crate::manifest::WeightsFile],
) -> Result<()> {
    let prov = &store.spec.provenance;
    let sha = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w["sha256"].as_str().map(String::from))
            .collect()
    };
    let mine: Vec<String> = weights.iter().map(|w| w.sha256.clone()).collect();
    if sha(&prov["weights"]) != mine {
        bail!(
            "{} was captured with {} (weights sha256 {:?}), not this model (sha256 {mine:?}); pass that --model",
            store.dir.display(),
            prov["model"],
            sha(&prov["weights"])
        );
    }
    Ok(())
}

/// The corpus means of the activation store `dir` (its `means.safetensors`), by hook point,
/// on `model`'s device, checked to come from this model (`weights`).
pub fn corpus_means(
    dir: &Path,
    model: &HookedTransformer,
    weights: &[crate::manifest::WeightsFile],
) -> Result<std::collections::HashMap<hooklens::HookPoint, candle_core::Tensor>> {
    let store = hooklens::store::ActivationStore::open(dir)?;
    check_store_model(&store, weights)?;
    let path = dir.join("means.safetensors");
    anyhow::ensure!(
        path.is_file(),
        "{}: no corpus means; the capture did not finish: resume it with --resume",
        path.display()
    );
    let means = candle_core::safetensors::load(&path, model.device()).map_err(|e| {
        hooklens::Error::CorruptFile {
            path: path.clone(),
            reason: e.to_string(),
        }
    })?;
    means
        .into_iter()
        .map(|(name, t)| Ok((model.hook_point(&name)?, t.to_dtype(model.dtype())?)))
        .collect()
}

/// The token ids of the store's first `n` contexts (fewer if it has fewer), [n, context_len].
pub fn store_contexts(
    store: &hooklens::store::ActivationStore,
    n: usize,
    device: &candle_core::Device,
) -> Result<candle_core::Tensor> {
    let c = store.spec.context_len;
    let n = n.min(store.spec.contexts);
    let mut ids = Vec::with_capacity(n * c);
    for s in 0..store.spec.shards {
        if ids.len() >= n * c {
            break;
        }
        ids.extend(store.column(s, "token_id")?);
    }
    ids.truncate(n * c);
    Ok(candle_core::Tensor::from_vec(ids, (n, c), device)?)
}

/// Which tokens an SAE is trained and measured on (`hooklens::store::TokenFilter`), as flags.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct TokenArgs {
    /// Only tokens at this position of their context or later: 1 leaves out the first, often an
    /// attention sink with a massive activation.
    #[arg(long, default_value_t = 0)]
    pub from_position: u32,
    /// Keep BOS and document separators (left out by default, as SAELens's
    /// exclude_special_tokens: their activations are outliers).
    #[arg(long)]
    pub include_special_tokens: bool,
    /// Leave out tokens whose activation norm exceeds this ("massive activations": in SmolLM2's
    /// layer-15 residual 0.05 % of tokens, at norms near 24,000 against a median of 172, hold
    /// 95 % of the variance). The store's stats.parquet gives its norms.
    #[arg(long)]
    pub max_norm: Option<f32>,
}

impl TokenArgs {
    /// The filter, with `special` (BOS, separator) left out unless --include-special-tokens.
    pub fn filter(&self, special: Vec<u32>) -> hooklens::store::TokenFilter {
        hooklens::store::TokenFilter {
            skip_tokens: if self.include_special_tokens {
                vec![]
            } else {
                special
            },
            from_position: self.from_position,
            max_norm: self.max_norm,
        }
    }
}

/// The store's BOS and document separator: left out of dashboards (their activations are
/// outliers in most models).
pub fn special_tokens(store: &hooklens::store::ActivationStore) -> Vec<u32> {
    let corpus = &store.spec.provenance["corpus"];
    let mut ids: Vec<u32> = ["bos", "separator"]
        .iter()
        .filter_map(|k| corpus[*k].as_u64().map(|t| t as u32))
        .collect();
    ids.dedup();
    ids
}

/// The folder of a capture: `outputs/capture/<run>`, a shard's `<run>/shard=i` with `--shard`,
/// the existing `<run>` with `--merge`.
pub fn capture_dir(out: &crate::args::RunArgs, shards: &crate::args::ShardArgs) -> Result<RunDir> {
    let name = out.run.as_deref();
    Ok(match (shards.shard, shards.merge) {
        (Some(s), _) => RunDir::create(
            &out.outputs.join("capture"),
            name.unwrap_or_default(),
            Some(&format!("shard={}", s.index)),
            out.resume,
        )?,
        (None, true) => RunDir::create(&out.outputs, "capture", name, true)?,
        (None, false) => out.dir("capture")?,
    })
}

/// A finished store's statistics (one pass over its shards, with a progress bar) and tables
/// ([`crate::report::store_views`]), written into `dir`.
fn store_tables(
    exp: &mut crate::Experiment,
    dir: &RunDir,
    spec: &StoreSpec,
    contexts: &Contexts,
    tok: &Tokenizer,
) -> Result<()> {
    use hooklens::store::{hook_stats, ActivationStore, Source};
    let store = ActivationStore::open(&dir.path)?;
    let names: Vec<String> = spec.hooks.iter().map(|h| h.name.clone()).collect();
    let bar = crate::args::progress_bar(spec.tokens as u64, "statistics", "tokens")?;
    let stats = exp.time("statistics", || {
        hook_stats(&Source::Disk(&store), &names, &mut |n| bar.inc(n as u64))
    })?;
    bar.finish_and_clear();
    crate::report::store_views(exp, spec, &stats, contexts, tok)
}

/// The stored hook whose units a dashboard shows: `name`, or the store's first
/// `mlp.hook_post` (MLP neurons), or its first hook.
pub fn unit_hook(store: &hooklens::store::ActivationStore, name: Option<&str>) -> Result<String> {
    let hooks = &store.spec.hooks;
    Ok(match name {
        Some(h) => store.spec.hook(h)?.1.name.clone(),
        None => hooks
            .iter()
            .find(|h| h.name.ends_with("mlp.hook_post"))
            .unwrap_or(&hooks[0])
            .name
            .clone(),
    })
}

/// Where a run's activation rows come from, owned for the run: an activation store, or the
/// model's forward over a corpus as they are needed.
pub enum Origin<'a> {
    Store(&'a hooklens::store::ActivationStore),
    Model {
        capture: hooklens::store::Capture<'a>,
        contexts: Contexts,
    },
}

impl<'a> Origin<'a> {
    /// `store` when there is one, else the model's `hooks` over `--corpus`.
    pub fn new(
        store: Option<&'a hooklens::store::ActivationStore>,
        model: &'a HookedTransformer,
        hooks: &[hooklens::HookPoint],
        corpus: &CorpusArgs,
        tok: &Tokenizer,
    ) -> Result<Self> {
        Ok(match store {
            Some(s) => Origin::Store(s),
            None => Origin::Model {
                capture: hooklens::store::Capture::new(
                    model,
                    hooks.to_vec(),
                    candle_core::DType::F32,
                )?,
                contexts: corpus.contexts(model, tok)?.0,
            },
        })
    }

    pub fn source(&self) -> hooklens::store::Source<'_> {
        match self {
            Origin::Store(s) => hooklens::store::Source::Disk(s),
            Origin::Model { capture, contexts } => hooklens::store::Source::Model {
                capture,
                contexts,
                contexts_per_chunk: 32,
            },
        }
    }

    /// The positions of `hooks` among the source's hooks (an error names one the store lacks).
    pub fn indices(&self, hooks: &[hooklens::HookPoint]) -> Result<Vec<usize>> {
        match self {
            Origin::Store(s) => hooks
                .iter()
                .map(|h| Ok(s.spec.hook(&h.to_string())?.0))
                .collect(),
            Origin::Model { .. } => Ok((0..hooks.len()).collect()),
        }
    }

    /// The tokens there are.
    pub fn tokens(&self) -> u64 {
        match self {
            Origin::Store(s) => s.spec.tokens as u64,
            Origin::Model { contexts, .. } => (contexts.len() * contexts.context_len) as u64,
        }
    }

    /// BOS and EOS, which token filters leave out by default.
    pub fn special_tokens(&self, tok: &Tokenizer) -> Vec<u32> {
        match self {
            Origin::Store(s) => special_tokens(s),
            Origin::Model { .. } => tok
                .bos_token_id
                .into_iter()
                .chain(tok.eos_token_id)
                .collect(),
        }
    }
}
