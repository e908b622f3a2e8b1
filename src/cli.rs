//! Command-line arguments shared by the `hooklens` CLI and the experiment binaries.

use crate::error::{Error, Result};
use crate::export::run::RunDir;
use crate::loading::{load_model, LoadOptions, Processing};
use crate::model::HookedTransformer;
use crate::tokenizer::Tokenizer;
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Which model to load and how.
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct ModelArgs {
    /// A Hugging Face model id (e.g. `gpt2`), a model directory, a .safetensors or llama .gguf
    /// file, or the alias `smollm2` (fetched by scripts/fetch_smollm2.sh). Without it, the
    /// embedded 2-layer induction model.
    #[arg(long)]
    pub model: Option<String>,
    /// Use the checkpoint's weights as they are (no fold_ln, centring or value-bias folding).
    #[arg(long)]
    pub no_processing: bool,
    /// Where to run the model.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Precision of weights and activations. In f16/bf16 the norms, attention scores and
    /// logits are still computed in f32 (README, "Half precision").
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceArg {
    Cpu,
    /// The first CUDA GPU (needs a build with `--features cuda`).
    Cuda,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

impl ModelArgs {
    pub fn options(&self) -> Result<LoadOptions> {
        let device = match self.device {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::new_cuda(0).map_err(|e| {
                Error::Unsupported(format!(
                    "CUDA device: {e}; build with `--features cuda` on a machine with a GPU"
                ))
            })?,
        };
        let dtype = match self.dtype {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
        };
        let processing = if self.no_processing {
            Processing::none()
        } else {
            Processing::default()
        };
        Ok(LoadOptions {
            processing,
            device,
            dtype,
        })
    }

    /// Loads the model and tokenizer these arguments name, with a spinner on a terminal.
    pub fn load(&self) -> Result<(HookedTransformer, Tokenizer)> {
        let name = self
            .model
            .as_deref()
            .unwrap_or(crate::loading::EMBEDDED_NAME);
        let bar = spinner(&format!("loading {name}"));
        let loaded = load_model(self.model.as_deref(), &self.options()?);
        bar.finish_and_clear();
        loaded
    }
}

/// The prompt(s) to run.
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct PromptArgs {
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// A file whose non-empty lines are prompts (run as one padded batch).
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    #[command(flatten)]
    pub bos: BosArgs,
}

impl PromptArgs {
    /// The prompts, from `--prompt` or `--prompt-file`.
    pub fn prompts(&self) -> Result<Vec<String>> {
        if let Some(p) = &self.prompt {
            return Ok(vec![p.clone()]);
        }
        if let Some(f) = &self.prompt_file {
            let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
            let lines: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect();
            if lines.is_empty() {
                return Err(Error::EmptyPrompt);
            }
            return Ok(lines);
        }
        Err(Error::Invalid(
            "give a prompt with --prompt TEXT or --prompt-file FILE".into(),
        ))
    }

    /// Whether to prepend BOS for `model` given the flags.
    pub fn prepend_bos(&self, model: &HookedTransformer) -> bool {
        self.bos.resolve(model)
    }
}

/// `--prepend-bos` / `--no-prepend-bos`.
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct BosArgs {
    /// Prepend the BOS token (TransformerLens's `prepend_bos=True`). Without either flag, the
    /// model's default.
    #[arg(long, conflicts_with = "no_prepend_bos")]
    pub prepend_bos: bool,
    /// Do not prepend the BOS token.
    #[arg(long)]
    pub no_prepend_bos: bool,
}

impl BosArgs {
    /// Whether to prepend BOS for `model` given the flags.
    pub fn resolve(&self, model: &HookedTransformer) -> bool {
        match (self.prepend_bos, self.no_prepend_bos) {
            (_, true) => false,
            (true, _) => true,
            _ => model.cfg.default_prepend_bos,
        }
    }
}

/// Where an experiment writes: `--outputs`, `--run`, `--resume`.
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct RunArgs {
    /// Where runs are written.
    #[arg(long, default_value = "outputs")]
    pub outputs: PathBuf,
    /// Run folder name, one path component (default: a UTC timestamp).
    #[arg(long)]
    pub run: Option<String>,
    /// Write into an existing run folder.
    #[arg(long)]
    pub resume: bool,
}

impl RunArgs {
    /// The run folder `outputs/<experiment>/<run>` (see [`RunDir::create`]).
    pub fn dir(&self, experiment: &str) -> Result<RunDir> {
        RunDir::create(&self.outputs, experiment, self.run.as_deref(), self.resume)
    }
}

/// A spinner with `msg` on stderr for work of unknown length; hidden when stderr is not a
/// terminal. Call `finish_and_clear` when done.
pub fn spinner(msg: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner().with_message(msg.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// The exit code for a binary's result: errors are printed with their context; output cut
/// short by a closed pipe (`hooklens hooks | head -1`) ends quietly, as Unix tools do.
pub fn finish(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
