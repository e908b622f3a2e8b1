//! Loading a model and its tokenizer: by Hub id, local directory or file, or the embedded default.

mod gguf;
mod gpt2;
mod hub;
mod llama;
mod neox;
mod process;

pub use gguf::read_gguf;
pub use hub::resolve_hub_files;
pub use process::{process_weights, Processing};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::HookedTransformer;
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// How to load: weight processing, device and dtype.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub processing: Processing,
    pub device: Device,
    pub dtype: DType,
    /// Load weights holding NaN or Inf, and let passes yield them
    /// ([`HookedTransformer::allow_nonfinite`]); by default either is an error that names the
    /// tensors and the first hook point holding them.
    pub allow_nonfinite: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            processing: Processing::default(),
            device: Device::Cpu,
            dtype: DType::F32,
            allow_nonfinite: false,
        }
    }
}

/// Where a model's weights came from (what run manifests record).
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// What the caller asked for: a Hub id, path, alias, or [`EMBEDDED_NAME`].
    pub name: String,
    /// The weight files read.
    pub files: Vec<PathBuf>,
    /// The weights' bytes, for the embedded model (which has no file).
    pub embedded: Option<&'static [u8]>,
    pub processing: Processing,
}

/// The embedded default model (trained in-repo by `cargo run --release --bin train_embedded`).
pub const EMBEDDED_NAME: &str = "embedded-induction-2l";
const EMBEDDED_CONFIG: &str = include_str!("../../assets/embedded/config.json");
const EMBEDDED_WEIGHTS: &[u8] = include_bytes!("../../assets/embedded/model.safetensors");

/// A model, its tokenizer, and where they came from: what every loader returns.
pub type Loaded = (HookedTransformer, Tokenizer, ModelSource);

/// Loads a model and its tokenizer, and says where they came from.
///
/// `spec` is `None` for the embedded model, a local directory (`config.json` +
/// `model.safetensors` or a sharded `model.safetensors.index.json`, and `tokenizer.json` or
/// `vocab.json` + `merges.txt`), a `.safetensors` file inside such a directory, or a Hugging Face
/// model id such as `gpt2` (downloaded into, or read offline from, the standard HF cache).
pub fn load_model(spec: Option<&str>, opts: &LoadOptions) -> Result<Loaded> {
    let Some(spec) = spec else {
        return load_embedded(opts);
    };
    let (model, tok, source) = load_spec(spec, opts)?;
    // The manifest names the model as the caller did (a Hub id or alias, not the file read).
    let source = ModelSource {
        name: spec.into(),
        ..source
    };
    Ok((model, tok, source))
}

fn load_spec(spec: &str, opts: &LoadOptions) -> Result<Loaded> {
    let path = Path::new(spec);
    if path.is_dir() {
        return load_dir(path, opts);
    }
    if path.is_file() {
        return match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") | Some("json") => {
                load_dir(path.parent().unwrap_or(Path::new(".")), opts)
            }
            Some("gguf") => load_gguf(path, opts),
            _ => Err(Error::Unsupported(format!(
                "{spec}: expected a .gguf or .safetensors file, or a model directory"
            ))),
        };
    }
    if let Some((file, script)) = alias_file(spec) {
        return match file.is_file() {
            true => load_gguf(&file, opts),
            false => Err(Error::MissingFile {
                path: file,
                hint: format!("fetch it with scripts/{script}"),
            }),
        };
    }
    if spec.starts_with('.')
        || spec.starts_with('/')
        || spec.ends_with(".safetensors")
        || spec.ends_with(".gguf")
    {
        return Err(Error::MissingFile {
            path: path.into(),
            hint: "check the path".into(),
        });
    }
    let dir = resolve_hub_files(spec).map_err(|e| match close_alias(spec) {
        // A typo of an alias (`smollm`) reads as a Hub id: say which alias was meant.
        Some(alias) => Error::Hub(format!(
            "{e}; did you mean `{alias}` (a model hooklens knows by name)?"
        )),
        None => e,
    })?;
    load_dir(&dir, opts)
}

/// The names `--model` knows besides paths and Hub ids: the real models that a script in
/// `scripts/` fetches into the cache, as (names, file in the cache, script).
const ALIAS_FILES: &[(&[&str], &str, &str)] = &[
    (
        &["smollm2", "smollm2-135m", "SmolLM2-135M-Instruct"],
        "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "fetch_smollm2.sh",
    ),
    (
        &["gemma3", "gemma-3-270m", "gemma3-270m"],
        "gemma3/gemma-3-270m-q4_k_m.gguf",
        "fetch_gemma3.sh",
    ),
];

/// The alias `spec` is most likely a typo of, if any is close.
fn close_alias(spec: &str) -> Option<&'static str> {
    let lower = spec.to_lowercase();
    (ALIAS_FILES.iter())
        .flat_map(|(names, _, _)| names.iter())
        .map(|a| (strsim::jaro_winkler(&lower, &a.to_lowercase()), *a))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, a)| a)
}

/// Where a short alias (`smollm2`, `gemma3`) lives: the cache that its script in `scripts/`
/// fills (`$HOOKLENS_CACHE`, default `~/.cache/hooklens`).
pub fn alias_path(spec: &str) -> Option<PathBuf> {
    alias_file(spec).map(|(file, _)| file)
}

/// An alias's file and the script that fetches it.
fn alias_file(spec: &str) -> Option<(PathBuf, &'static str)> {
    let (_, file, script) = ALIAS_FILES
        .iter()
        .find(|(names, _, _)| names.contains(&spec))?;
    let base = std::env::var_os("HOOKLENS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hooklens")))?;
    Some((base.join(file), script))
}

/// Loads a `.gguf` file (llama, qwen2, qwen3, gemma2, gemma3, gptneox), dequantized, with the
/// tokenizer from its metadata.
pub fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let (cfg, tok, raw) = read_gguf(path)?;
    let (w, ignored) = to_canonical(&raw, &cfg)?;
    raw.check_all_used(ignored)?;
    let source = file_source(path.display().to_string(), raw.files.clone(), opts);
    Ok((build(cfg, w, opts)?, tok, source))
}

/// The embedded model and its byte-level tokenizer.
pub fn load_embedded(opts: &LoadOptions) -> Result<Loaded> {
    if EMBEDDED_WEIGHTS.is_empty() {
        return Err(Error::Invalid(
            "this build has no embedded model; run `cargo run --release --bin train_embedded`"
                .into(),
        ));
    }
    let cfg = ModelConfig::from_hf_json(EMBEDDED_CONFIG)?;
    let tensors = candle_core::safetensors::load_buffer(EMBEDDED_WEIGHTS, &Device::Cpu)?;
    let w = Weights {
        tensors: tensors.into_iter().collect(),
    };
    let source = ModelSource {
        name: EMBEDDED_NAME.into(),
        files: vec![],
        embedded: Some(EMBEDDED_WEIGHTS),
        processing: opts.processing,
    };
    Ok((build(cfg, w, opts)?, Tokenizer::bytes()?, source))
}

/// Loads a model directory laid out like a Hugging Face model repo.
pub fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(Error::MissingFile {
            path: cfg_path,
            hint: "a model directory needs config.json".into(),
        });
    }
    let text = crate::text::read_text(&cfg_path)?;
    let cfg = ModelConfig::from_hf_json(&text)?;
    let raw = RawTensors::open(dir)?;
    let (w, ignored) = to_canonical(&raw, &cfg)?;
    raw.check_all_used(ignored)?;
    let source = file_source(dir.display().to_string(), raw.files.clone(), opts);
    Ok((build(cfg, w, opts)?, load_tokenizer(dir)?, source))
}

/// A checkpoint's tensors (under Hugging Face's names) as canonical weights, with the names its
/// family deliberately leaves unread.
fn to_canonical(raw: &RawTensors, cfg: &ModelConfig) -> Result<(Weights, &'static [&'static str])> {
    Ok(match cfg.original_architecture.as_str() {
        "GPT2LMHeadModel" => (gpt2::to_canonical(raw, cfg)?, gpt2::IGNORED),
        "GPTNeoXForCausalLM" => (neox::to_canonical(raw, cfg)?, neox::IGNORED),
        "LlamaForCausalLM" | "MistralForCausalLM" | "Qwen2ForCausalLM" | "Qwen3ForCausalLM"
        | "Gemma2ForCausalLM" | "Gemma3ForCausalLM" => {
            (llama::to_canonical(raw, cfg)?, llama::IGNORED)
        }
        _ => (raw.canonical_as_is()?, &[]),
    })
}

fn file_source(name: String, files: Vec<PathBuf>, opts: &LoadOptions) -> ModelSource {
    ModelSource {
        name,
        files,
        embedded: None,
        processing: opts.processing,
    }
}

/// Writes `weights` with their `cfg` and `tok` as a model directory that [`load_dir`] reads
/// back (`config.json`, `model.safetensors`, `tokenizer.json`), each file atomically.
pub fn save_dir(dir: &Path, cfg: &ModelConfig, weights: Weights, tok: &Tokenizer) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors: HashMap<String, Tensor> = weights.tensors.into_iter().collect();
    crate::atomic::atomic_write_with(&dir.join("model.safetensors"), |tmp| {
        Ok(candle_core::safetensors::save(&tensors, tmp)?)
    })?;
    crate::atomic::atomic_write(&dir.join("config.json"), cfg.to_hf_json().as_bytes())?;
    crate::atomic::atomic_write(&dir.join("tokenizer.json"), tok.to_json()?.as_bytes())
}

/// Processes canonical weights, moves them to the device and dtype, and builds the model.
/// Processing runs in f32 on the CPU so that half-precision models are processed exactly.
pub fn build(cfg: ModelConfig, w: Weights, opts: &LoadOptions) -> Result<HookedTransformer> {
    let mut w = w.to(&Device::Cpu, DType::F32)?;
    let bad = w.nonfinite()?;
    let cfg = process_weights(&mut w, &cfg, opts.processing)?;
    let w = w.to(&opts.device, opts.dtype)?;
    let mut model = HookedTransformer::new(cfg, &w)?;
    model.allow_nonfinite = opts.allow_nonfinite;
    if bad.is_empty() || opts.allow_nonfinite {
        return Ok(model);
    }
    // Where they first show, over a few tokens: the hook point a user would look at.
    let n = model.cfg.n_ctx.min(model.cfg.d_vocab).min(4) as u32;
    let tokens = Tensor::arange(0, n, &opts.device)?.unsqueeze(0)?;
    Err(Error::NonFinite {
        what: format!("the checkpoint's weights {}", bad.join(", ")),
        first: model.first_nonfinite(&tokens)?.map(|p| p.to_string()),
        hint: format!(
            "the checkpoint is damaged: re-download or regenerate it. {}",
            crate::finite::ALLOW
        ),
    })
}

fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let tj = dir.join("tokenizer.json");
    if tj.is_file() {
        return Tokenizer::from_file(&tj);
    }
    let (v, m) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if v.is_file() && m.is_file() {
        let read = |p: &Path| crate::text::read_text(p);
        return Tokenizer::from_vocab_merges(&read(&v)?, &read(&m)?);
    }
    Err(Error::MissingFile {
        path: tj,
        hint: "a model directory needs tokenizer.json (or vocab.json + merges.txt)".into(),
    })
}

/// A checkpoint's tensors under their own names: memory-mapped safetensors, or tensors already
/// in memory (dequantized GGUF).
pub struct RawTensors {
    source: Source,
    /// Name prefix to strip (GPT-2 checkpoints saved from `GPT2LMHeadModel` use `transformer.`).
    prefix: String,
    path: PathBuf,
    /// Every file the tensors come from.
    pub files: Vec<PathBuf>,
    /// Full names of the tensors read so far, to find the ones no loader used.
    used: RefCell<HashSet<String>>,
}

enum Source {
    Mmap(MmapedSafetensors),
    Memory(HashMap<String, Tensor>),
}

impl RawTensors {
    /// Opens `model.safetensors`, or every shard listed in `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.is_file() {
            vec![single.clone()]
        } else if index.is_file() {
            let text = crate::text::read_text(&index)?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::CorruptFile {
                    path: index.clone(),
                    reason: e.to_string(),
                })?;
            let mut shards: Vec<PathBuf> = v["weight_map"]
                .as_object()
                .ok_or_else(|| Error::CorruptFile {
                    path: index.clone(),
                    reason: "no weight_map".into(),
                })?
                .values()
                .filter_map(|f| f.as_str().map(|f| dir.join(f)))
                .collect();
            shards.sort();
            shards.dedup();
            shards
        } else {
            return Err(Error::MissingFile {
                path: single,
                hint: "a model directory needs model.safetensors or model.safetensors.index.json"
                    .into(),
            });
        };
        for f in &files {
            if !f.is_file() {
                return Err(Error::MissingFile {
                    path: f.clone(),
                    hint: "a shard named in the index is missing".into(),
                });
            }
        }
        // SAFETY: the files are opened read-only and not modified while mapped.
        #[allow(unsafe_code)]
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| Error::CorruptFile {
            path: files[0].clone(),
            reason: e.to_string(),
        })?;
        let prefix = if st.get("transformer.wte.weight").is_ok() {
            "transformer."
        } else {
            ""
        };
        Ok(Self {
            source: Source::Mmap(st),
            prefix: prefix.into(),
            path: files[0].clone(),
            files,
            used: RefCell::default(),
        })
    }

    /// Tensors already in memory, read from `path`.
    pub fn from_map(map: HashMap<String, Tensor>, path: &Path) -> Self {
        Self {
            source: Source::Memory(map),
            prefix: String::new(),
            path: path.into(),
            files: vec![path.into()],
            used: RefCell::default(),
        }
    }

    /// Whether the checkpoint has tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        let full = format!("{}{name}", self.prefix);
        match &self.source {
            Source::Mmap(st) => st.get(&full).is_ok(),
            Source::Memory(m) => m.contains_key(&full),
        }
    }

    /// Tensor `name` (f32, CPU), checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        if !self.has(name) {
            return Err(Error::MissingWeight(full));
        }
        self.used.borrow_mut().insert(full.clone());
        let t = match &self.source {
            Source::Mmap(st) => st
                .load(&full, &Device::Cpu)
                .map_err(|e| Error::CorruptFile {
                    path: self.path.clone(),
                    reason: format!("{full}: {e}"),
                })?,
            Source::Memory(m) => m[&full].clone(),
        };
        if t.dims() != shape {
            return Err(Error::WeightShape {
                name: full,
                expected: shape.to_vec(),
                got: t.dims().to_vec(),
            });
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    /// Marks tensor `name` as deliberately not read.
    pub fn skip(&self, name: &str) {
        self.used
            .borrow_mut()
            .insert(format!("{}{name}", self.prefix));
    }

    /// Every tensor name in the checkpoint.
    fn names(&self) -> Vec<String> {
        match &self.source {
            Source::Mmap(st) => st.tensors().into_iter().map(|(n, _)| n).collect(),
            Source::Memory(m) => m.keys().cloned().collect(),
        }
    }

    /// Errors naming every tensor that no loader read and that does not match one of the
    /// `ignored` patterns (`*` stands for a layer number): buffers such as GPT-2's causal-mask
    /// `attn.bias`, or an `lm_head.weight` tied to the embedding. A tensor left over means the
    /// model would silently differ from the checkpoint (llama attention biases, say).
    pub fn check_all_used(&self, ignored: &[&str]) -> Result<()> {
        let used = self.used.borrow();
        let mut unused: Vec<String> = self
            .names()
            .into_iter()
            .filter(|n| !used.contains(n))
            .filter(|n| {
                let bare = n.strip_prefix(&self.prefix).unwrap_or(n);
                !ignored.iter().any(|pat| matches_layer_pattern(pat, bare))
            })
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        Err(Error::UnusedWeights {
            path: self.path.clone(),
            names: unused,
        })
    }

    /// All tensors, for checkpoints already in canonical names (hooklens's own format).
    fn canonical_as_is(&self) -> Result<Weights> {
        let tensors = self
            .names()
            .into_iter()
            .map(|n| {
                self.used.borrow_mut().insert(n.clone());
                let t = match &self.source {
                    Source::Mmap(st) => st.load(&n, &Device::Cpu)?,
                    Source::Memory(m) => m[&n].clone(),
                };
                Ok((n, t.to_dtype(DType::F32)?))
            })
            .collect::<Result<_>>()?;
        Ok(Weights { tensors })
    }
}

/// Whether `name` matches `pattern`, where a `*` in the pattern stands for a decimal number.
fn matches_layer_pattern(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((pre, post)) => name.strip_prefix(pre).is_some_and(|rest| {
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            digits > 0 && matches_layer_pattern(post, &rest[digits..])
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn layer_patterns() {
        use super::matches_layer_pattern as m;
        assert!(m("h.*.attn.bias", "h.11.attn.bias"));
        assert!(!m("h.*.attn.bias", "h.x.attn.bias"));
        assert!(!m("h.*.attn.bias", "h.1.attn.bias2"));
        assert!(m("lm_head.weight", "lm_head.weight"));
    }
}
