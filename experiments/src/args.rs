//! Command-line arguments shared by the `hooklens` CLI and the experiment binaries, and how a
//! binary ends: library errors rewritten in the flags' words.

use crate::run::RunDir;
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use hooklens::analysis::ablation::{top_neurons, MeanReference, NeuronRank, Unit};
use hooklens::error::{Error, Result};
use hooklens::loading::{load_model, LoadOptions, Loaded, Processing};
use hooklens::model::HookedTransformer;
use hooklens::tokenizer::Tokenizer;
use std::path::PathBuf;

/// Which model to load and how.
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct ModelArgs {
    /// A Hugging Face model id (e.g. `gpt2`, `EleutherAI/pythia-70m@step3000` for a branch), a
    /// model directory, a .safetensors or .gguf file (llama, qwen2, qwen3, gemma2, gemma3,
    /// gptneox), or the alias `smollm2` or `gemma3` (fetched by scripts/fetch_smollm2.sh,
    /// scripts/fetch_gemma3.sh). Without it, the embedded 2-layer induction model.
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
    /// Compute and write results even where the weights or activations hold NaN or Inf (by
    /// default an error naming the first hook point that holds them); marked in the manifest.
    #[arg(long)]
    pub allow_nonfinite: bool,
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

impl DTypeArg {
    pub fn dtype(self) -> DType {
        match self {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
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
        let dtype = self.dtype.dtype();
        let processing = if self.no_processing {
            Processing::none()
        } else {
            Processing::default()
        };
        Ok(LoadOptions {
            processing,
            device,
            dtype,
            allow_nonfinite: self.allow_nonfinite,
        })
    }

    /// Loads the model these arguments name (model, tokenizer, source), with a spinner on a
    /// terminal.
    pub fn load(&self) -> Result<Loaded> {
        let name = self
            .model
            .as_deref()
            .unwrap_or(hooklens::loading::EMBEDDED_NAME);
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
            let lines = read_lines(f)?;
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

/// A progress bar on stderr for `len` steps of `what` (counted in `unit`); hidden when stderr
/// is not a terminal. Call `finish_and_clear` when done.
pub fn progress_bar(len: u64, what: &str, unit: &str) -> anyhow::Result<indicatif::ProgressBar> {
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{{msg}} {{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed}}<{{eta}}]"
    ))?;
    Ok(indicatif::ProgressBar::new(len)
        .with_message(what.to_string())
        .with_style(style))
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
            eprintln!("Error: {}", in_flags_words(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `e` with every library [`Error::BadParameter`] in it written as the command line spells
/// its parameters: `top_k 0: must lie in 1..=257` becomes `--top-k 0: must lie in 1..=257`, and
/// a parameter named in backticks (`` `temperature` ``) becomes `--temperature`.
pub fn in_flags_words(e: &anyhow::Error) -> String {
    // Each cause once: a message that already ends with its cause's text (an OS error after
    // its path) does not repeat it.
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if !text.ends_with(&c) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&c);
        }
    }
    for cause in e.chain() {
        if let Some(p @ Error::BadParameter { name, value, valid }) = cause.downcast_ref() {
            let flag = |n: &str| format!("--{}", n.replace('_', "-"));
            let mut valid = valid.clone();
            while let Some((before, rest)) = valid.split_once('`') {
                let Some((name, after)) = rest.split_once('`') else {
                    break;
                };
                valid = format!("{before}{}{after}", flag(name));
            }
            text = text.replace(&p.to_string(), &format!("{} {value}: {valid}", flag(name)));
        }
    }
    text
}

/// A library enum chosen on the command line: every value with its spelling and help.
pub trait Choice: Copy + Send + Sync + 'static {
    const CHOICES: &'static [(Self, &'static str, &'static str)];
}

/// The value parser of a [`Choice`]: `#[arg(value_parser = choice::<Metric>())]`. `--help`
/// lists the values with their help.
pub fn choice<T: Choice>() -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let values = T::CHOICES
        .iter()
        .map(|(_, name, help)| PossibleValue::new(*name).help(*help));
    PossibleValuesParser::new(values).map(|s| {
        T::CHOICES
            .iter()
            .find(|(_, name, _)| *name == s)
            .map(|c| c.0)
            .expect("clap accepts only the listed values")
    })
}

impl Choice for hooklens::analysis::sweep::Metric {
    const CHOICES: &'static [(Self, &'static str, &'static str)] = &[
        (
            Self::Loss,
            "loss",
            "Mean next-token cross-entropy (nats) over each prompt's positions",
        ),
        (
            Self::LogitDiff,
            "logit-diff",
            "logit(answer) - logit(wrong answer) at each prompt's last position",
        ),
        (
            Self::Prob,
            "prob",
            "Probability of the answer at each prompt's last position",
        ),
    ];
}

impl Choice for hooklens::analysis::ablation::Ablation {
    const CHOICES: &'static [(Self, &'static str, &'static str)] = &[
        (Self::Zero, "zero", "Zero"),
        (Self::Mean, "mean", "Its mean over the reference prompts at each position (prompts shorter than the position left out)"),
        (Self::Resample, "resample", "Its value on another prompt of the dataset, drawn with the seed (the same draw for every unit)"),
    ];
}

impl Choice for NeuronRank {
    const CHOICES: &'static [(Self, &'static str, &'static str)] = &[
        (
            Self::Mean,
            "mean",
            "Largest mean activation (`mlp.hook_post`) over all the prompts' real positions",
        ),
        (
            Self::Dla,
            "dla",
            "Largest |direct logit attribution| to answer - wrong at the last position",
        ),
    ];
}

impl Choice for hooklens::analysis::patching::Grid {
    const CHOICES: &'static [(Self, &'static str, &'static str)] = &[
        (
            Self::ResidPre,
            "resid_pre",
            "`blocks.L.hook_resid_pre` at one position: layer × position",
        ),
        (
            Self::AttnOut,
            "attn_out",
            "`blocks.L.hook_attn_out` at one position: layer × position",
        ),
        (
            Self::MlpOut,
            "mlp_out",
            "`blocks.L.hook_mlp_out` at one position: layer × position",
        ),
        (
            Self::AttnHeadOutAllPos,
            "attn_head_out_all_pos",
            "Each head's output (`hook_z`) at every position: layer × head",
        ),
        (
            Self::AttnHeadOutByPos,
            "attn_head_out_by_pos",
            "Each head's output at one position: layer × head × position",
        ),
        (
            Self::AttnHeadPatternAllPos,
            "attn_head_pattern_all_pos",
            "Each head's pattern (`hook_pattern`) at every query position: layer × head",
        ),
    ];
}

/// Prompt pairs (clean, corrupted, answer, wrong answer) for the experiments that compare or
/// ablate: one pair from flags, IOI pairs, or a pair file.
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct PairArgs {
    /// The clean prompt (with --corrupted, --answer and --wrong).
    #[arg(long, conflicts_with_all = ["ioi", "pairs"], requires_all = ["answer", "wrong"])]
    pub prompt: Option<String>,
    /// The corrupted prompt, of the same token length (default: the clean one).
    #[arg(long, requires = "prompt")]
    pub corrupted: Option<String>,
    /// The expected next token of the clean prompt (one token, e.g. " Mary").
    #[arg(long, requires = "prompt")]
    pub answer: Option<String>,
    /// The competing token (one token, e.g. " John").
    #[arg(long, requires = "prompt")]
    pub wrong: Option<String>,
    /// This many IOI pairs from the data module ("When Mary and John went to the store, John
    /// gave a drink to" / "..., Mary gave a drink to"; answer " Mary", wrong " John").
    #[arg(long, conflicts_with = "pairs", value_parser = clap::value_parser!(u32).range(1..))]
    pub ioi: Option<u32>,
    /// Only IOI template K (0..6; 0 is "When {A} and {B} went to the {place}, {S} gave a
    /// {object} to"): pairs of one length, so positions line up across them.
    #[arg(long, value_name = "K", requires = "ioi")]
    pub ioi_template: Option<usize>,
    /// A .tsv or .jsonl file of pairs (columns clean, corrupted, answer, wrong).
    #[arg(long)]
    pub pairs: Option<PathBuf>,
    /// Seed of the IOI pairs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub bos: BosArgs,
}

/// The embedded model's default pairs: induction prompts whose corrupted twin changes the
/// repeated token, so the clean run predicts `answer` and the corrupted one `wrong`.
const EMBEDDED_PAIRS: [(&str, &str, &str, &str); 3] = [
    ("abc xyz abc xyz abc x", "abc xqz abc xqz abc x", "y", "q"),
    ("dog cat dog cat dog c", "dog cut dog cut dog c", "a", "u"),
    ("red sun red sun red s", "red sin red sin red s", "u", "i"),
];

impl PairArgs {
    /// The pairs, tokenized and validated, as one right-padded batch; also the text pairs.
    pub fn load(
        &self,
        model: &HookedTransformer,
        tok: &Tokenizer,
    ) -> Result<(Vec<hooklens::data::PromptPair>, hooklens::data::PairBatch)> {
        use hooklens::data::{ioi_pairs, ioi_pairs_with, read_pairs, tokenize_pairs};
        use hooklens::data::{PairBatch, PromptPair};
        let pair = |c: &str, k: &str, a: &str, w: &str| PromptPair {
            clean: c.into(),
            corrupted: k.into(),
            answer: a.into(),
            wrong: w.into(),
            line: None,
        };
        let pairs = match (&self.prompt, self.ioi, &self.pairs) {
            (Some(p), _, _) => vec![pair(
                p,
                self.corrupted.as_deref().unwrap_or(p),
                self.answer.as_deref().unwrap_or_default(),
                self.wrong.as_deref().unwrap_or_default(),
            )],
            (_, Some(n), _) => ioi_pairs_with(tok, n as usize, self.seed, self.ioi_template)?,
            (_, _, Some(f)) => read_pairs(f)?,
            _ if model.cfg.d_vocab <= 512 => EMBEDDED_PAIRS
                .iter()
                .map(|&(c, k, a, w)| pair(c, k, a, w))
                .collect(),
            _ => ioi_pairs(tok, 8, self.seed)?,
        };
        let source = self
            .pairs
            .as_ref()
            .map_or("the prompt pairs".to_string(), |p| p.display().to_string());
        let t = tokenize_pairs(&pairs, tok, self.bos.resolve(model), &source)?;
        let batch = PairBatch::new(&t, 0, model.device())?;
        Ok((pairs, batch))
    }
}

/// Options of the sweep binaries (`ablate`, `patch`).
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct SweepArgs {
    /// Token positions per batched forward pass (interventions × prompts × positions, the
    /// cached prefix included). The prompts run in chunks that fit, so memory is bounded by
    /// this, not by the number of prompts. Larger runs faster until memory runs short.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub tokens_per_pass: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub shards: ShardArgs,
}

/// `--shard i/n` and `--merge`: a long run spread over machines (cluster array jobs).
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct ShardArgs {
    /// Run slice INDEX of COUNT (0-based; e.g. `--shard $SLURM_ARRAY_TASK_ID/8`) into
    /// `<run>/shard=INDEX/`. Needs --run NAME, the same for every shard; combine the finished
    /// shards with --merge.
    #[arg(long, requires = "run", conflicts_with = "merge")]
    pub shard: Option<crate::progress::Shard>,
    /// Combine the finished shards of --run NAME into one run.
    #[arg(long, requires = "run")]
    pub merge: bool,
}

/// A head as the command line writes it, `L1H2` (layer 1, head 2). The older `1.2` is still
/// read, with a note on stderr.
pub fn parse_head(s: &str) -> anyhow::Result<(usize, usize)> {
    use hooklens::analysis::ablation::Unit;
    if let Ok(Unit::Head { layer, head }) = s.trim().parse::<Unit>() {
        return Ok((layer, head));
    }
    let bad = || anyhow::anyhow!("--heads {s:?}: write L<layer>H<head>, e.g. L1H2");
    let (l, h) = s.trim().split_once('.').ok_or_else(bad)?;
    let (l, h): (usize, usize) = (l.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    eprintln!("note: --heads {s} is the old spelling of L{l}H{h}; write L{l}H{h}");
    Ok((l, h))
}

/// What `ablate --reference` names for mean ablation to average over: an activation store (its
/// corpus means, checked to come from the model of `weights`), a file of prompts (one per line,
/// tokenized with `bos`), or, without one, the dataset.
pub fn mean_reference(
    reference: Option<&std::path::Path>,
    model: &HookedTransformer,
    tok: &Tokenizer,
    bos: bool,
    weights: &[crate::manifest::WeightsFile],
) -> anyhow::Result<MeanReference> {
    Ok(match reference {
        None => MeanReference::Dataset,
        Some(store) if store.is_dir() => {
            MeanReference::Means(crate::store::corpus_means(store, model, weights)?)
        }
        Some(file) => {
            let lines = read_lines(file)?;
            anyhow::ensure!(
                !lines.is_empty(),
                "{}: no reference prompts (one per line)",
                file.display()
            );
            let ids = (lines.iter())
                .map(|p| tok.encode_prompt(p, bos))
                .collect::<hooklens::Result<Vec<_>>>()?;
            let tokens = hooklens::tokenizer::pad_batch(&ids, 0, model.device())?;
            MeanReference::Prompts(tokens, ids.iter().map(Vec::len).collect())
        }
    })
}

/// The non-empty lines of `file` (prompts, one per line).
pub fn read_lines(file: &std::path::Path) -> Result<Vec<String>> {
    let text = hooklens::text::read_text(file)?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitSet {
    /// Every attention head.
    Heads,
    /// Every MLP layer.
    Mlps,
}

/// Which units an ablation knocks out: whole sets, a list, and a layer's top neurons.
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct UnitArgs {
    /// Which units to ablate (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "heads,mlps")]
    pub units: Vec<UnitSet>,
    /// Ablate exactly these units instead (comma-separated, e.g. L1H2,MLP0,L0N42).
    #[arg(long, value_delimiter = ',', conflicts_with = "units")]
    pub unit: Vec<String>,
    /// Also ablate the top K neurons of each of --neuron-layers.
    #[arg(long, value_name = "K")]
    pub top_neurons: Option<usize>,
    /// Layers for --top-neurons (comma-separated; default every layer).
    #[arg(long, value_delimiter = ',', requires = "top_neurons")]
    pub neuron_layers: Vec<usize>,
    /// How --top-neurons ranks a layer's neurons.
    #[arg(long, value_parser = choice::<NeuronRank>(), default_value = "mean", requires = "top_neurons")]
    pub rank_by: NeuronRank,
}

impl UnitArgs {
    /// The units these arguments name for `model` (top neurons ranked on `batch`).
    pub fn select(
        &self,
        model: &HookedTransformer,
        batch: &hooklens::data::PairBatch,
        tokens_per_pass: usize,
    ) -> Result<Vec<Unit>> {
        let mut units: Vec<Unit> = match self.unit.is_empty() {
            false => self.unit.iter().map(|u| u.parse()).collect::<Result<_>>()?,
            true => self
                .units
                .iter()
                .flat_map(|s| match s {
                    UnitSet::Heads => Unit::all_heads(model),
                    UnitSet::Mlps => Unit::all_mlps(model),
                })
                .collect(),
        };
        if let Some(k) = self.top_neurons {
            let all: Vec<usize> = (0..model.cfg.n_layers).collect();
            let layers = match self.neuron_layers.is_empty() {
                true => &all,
                false => &self.neuron_layers,
            };
            units.extend(top_neurons(
                model,
                batch,
                layers,
                k,
                self.rank_by,
                tokens_per_pass,
            )?);
        }
        Ok(distinct(units, "--unit", Unit::to_string))
    }
}

impl Choice for hooklens::analysis::detectors::HeadKind {
    const CHOICES: &'static [(Self, &'static str, &'static str)] = &[
        (
            Self::Induction,
            "induction",
            "Attends to the token after an earlier copy of the current one",
        ),
        (
            Self::PreviousToken,
            "previous-token",
            "Attends to the previous position",
        ),
        (
            Self::DuplicateToken,
            "duplicate-token",
            "Attends to earlier copies of the current token",
        ),
    ];
}

/// Which heads to show: listed, whole layers, or the best by a detector.
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct HeadArgs {
    /// Heads, comma-separated: L1H2 is head 2 of layer 1 (the older 1.2 still works).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["layers", "top"])]
    pub heads: Vec<String>,
    /// Every head of these layers (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "top")]
    pub layers: Vec<usize>,
    /// The K heads with the highest detector score (see --by); 8 without any of these flags.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub top: Option<u32>,
    /// The detector that ranks heads for --top, scored on repeated random tokens.
    #[arg(long, value_parser = choice::<hooklens::analysis::detectors::HeadKind>(), default_value = "induction")]
    pub by: hooklens::analysis::detectors::HeadKind,
    /// Seed of the detector's random tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl HeadArgs {
    /// The heads (layer, head) these arguments name for `model`, each checked.
    pub fn select(
        &self,
        model: &HookedTransformer,
        tok: &Tokenizer,
    ) -> anyhow::Result<Vec<(usize, usize)>> {
        let nh = model.cfg.n_heads;
        let heads: Vec<(usize, usize)> = match (self.heads.is_empty(), self.layers.is_empty()) {
            (false, _) => self
                .heads
                .iter()
                .map(|s| parse_head(s))
                .collect::<anyhow::Result<_>>()?,
            (_, false) => self
                .layers
                .iter()
                .flat_map(|&l| (0..nh).map(move |h| (l, h)))
                .collect(),
            _ => {
                let bos = model.cfg.bos_token_id.or(tok.bos_token_id);
                let k = self.top.unwrap_or(8) as usize;
                hooklens::analysis::detectors::top_heads(model, self.by, k, bos, self.seed)?
            }
        };
        for &(l, h) in &heads {
            model.block(l)?;
            model.check_head(h)?;
        }
        Ok(distinct(heads, "--heads", |(l, h)| format!("L{l}H{h}")))
    }
}

/// `items` with repeats left out (first occurrences in order), with a note naming (as `name`
/// writes it) what `flag` listed twice: each unit, kind or metric is computed and written once.
pub fn distinct<T: PartialEq>(items: Vec<T>, flag: &str, name: impl Fn(&T) -> String) -> Vec<T> {
    let mut kept: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        match kept.contains(&item) {
            true => eprintln!(
                "note: {flag} lists {} more than once; it is computed once",
                name(&item)
            ),
            false => kept.push(item),
        }
    }
    kept
}

/// The name of `value` on the command line.
pub fn choice_name<T: Choice + PartialEq>(value: &T) -> String {
    let found = T::CHOICES.iter().find(|c| c.0 == *value);
    found.map_or_else(String::new, |c| c.1.to_string())
}

/// The token ids (a, b, c) of an analogy a - b + c written `"a, b, c"`: the first keeps its
/// spacing; after a comma one space is the separator's, and b and c take a's leading space.
pub fn parse_analogy(tok: &Tokenizer, s: &str) -> anyhow::Result<(u32, u32, u32)> {
    let parts: Vec<&str> = s.split(',').collect();
    let [x, y, z] = parts[..] else {
        anyhow::bail!("--analogy {s:?}: write three tokens \"a, b, c\" for a - b + c");
    };
    let trim = |t: &str| t.strip_prefix(' ').unwrap_or(t).to_string();
    let spaced = |t: String| match x.starts_with(' ') && !t.starts_with(' ') {
        true => format!(" {t}"),
        false => t,
    };
    let id = |t: &str| tok.single_token(t, "the --analogy token");
    Ok((id(x)?, id(&spaced(trim(y)))?, id(&spaced(trim(z)))?))
}

impl Choice for hooklens::config::Positional {
    const CHOICES: &'static [(Self, &'static str, &'static str)] = &[
        (
            Self::Rotary,
            "rotary",
            "Rotary embeddings applied to queries and keys",
        ),
        (
            Self::Standard,
            "standard",
            "A learned W_pos added to the token embedding",
        ),
        (
            Self::Sinusoidal,
            "sinusoidal",
            "The fixed sine/cosine table of the original transformer",
        ),
    ];
}

impl Choice for hooklens::train::Layout {
    const CHOICES: &'static [(Self, &'static str, &'static str)] = &[
        (
            Self::Shifted,
            "shifted",
            "Random tokens before and between the copies",
        ),
        (
            Self::Adjacent,
            "adjacent",
            "The copies right after BOS, back to back",
        ),
    ];
}

/// MLP neurons as the command line writes them, `L1N42` (neuron 42 of layer 1).
pub fn parse_neurons(names: &[String]) -> anyhow::Result<Vec<Unit>> {
    names
        .iter()
        .map(|s| match s.parse::<Unit>()? {
            u @ Unit::Neuron { .. } => Ok(u),
            u => anyhow::bail!("--neuron {u}: write L<layer>N<neuron>, e.g. L1N42"),
        })
        .collect()
}

/// Numbers and ranges below `limit`, comma-separated: `0..64,100` (`flag` names them in errors).
pub fn parse_ranges(s: &str, limit: usize, flag: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || {
            anyhow::anyhow!(
                "{flag} {part:?}: write numbers and ranges below {limit}, e.g. 0..64,100"
            )
        };
        let (a, b) = match part.split_once("..") {
            Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
            None => {
                let n: usize = part.parse().map_err(|_| bad())?;
                (n, n + 1)
            }
        };
        if a >= b || b > limit {
            return Err(bad());
        }
        out.extend(a..b);
    }
    if out.is_empty() {
        anyhow::bail!("{flag} {s:?} names no units");
    }
    Ok(out)
}
