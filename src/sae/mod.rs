//! Sparse autoencoders as SAELens defines them, loaded from the folders SAELens writes
//! (`cfg.json` + `sae_weights.safetensors`).
//!
//! sae_in = x − b_dec·[apply_b_dec_to_input]; pre = sae_in·W_enc + b_enc; then
//! - standard: relu(pre);
//! - JumpReLU (and BatchTopK, which SAELens saves for inference as JumpReLU): relu(pre)·[pre > θ];
//! - TopK: the k largest of pre (each scaled by its decoder row's norm first when
//!   `rescale_acts_by_decoder_norm`), relu'd, the rest zero;
//! - gated: [sae_in·W_enc + b_gate > 0] · relu(sae_in·(W_enc·exp(r_mag)) + b_mag);
//!
//! and recons = acts·W_dec + b_dec (acts divided by the decoder norms first for a rescaled TopK).
//!
//! A transcoder (`transcoder`, `skip_transcoder`, `jumprelu_transcoder`,
//! `jumprelu_skip_transcoder`) reads one hook point (the MLP's input) and writes another
//! (`hook_name_out`, by default the same layer's `hook_mlp_out`): W_dec is [d_sae, d_out], b_dec
//! is not subtracted from the input, and a skip transcoder adds x·W_skipᵀ.

pub mod metrics;
mod sparse;
pub mod train;

pub use metrics::{ce_loss, reconstruction, CeLoss, Reconstruction};

use crate::error::{Error, Result};
use crate::hook_points::{BlockHook, HookPoint};
use crate::model::HookedTransformer;
use candle_core::{DType, Device, Tensor, D};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How an SAE turns pre-activations into feature activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Standard,
    JumpRelu,
    TopK {
        k: usize,
        rescale_acts_by_decoder_norm: bool,
    },
    Gated,
}

/// The gated architecture's extra parameters, each [d_sae].
#[derive(Debug, Clone)]
pub struct Gate {
    pub b_gate: Tensor,
    pub r_mag: Tensor,
    pub b_mag: Tensor,
}

/// A sparse autoencoder reading the activation at `hook`.
#[derive(Debug, Clone)]
pub struct Sae {
    pub architecture: Architecture,
    /// Where it reads (SAELens's `hook_name`).
    pub hook: HookPoint,
    /// Where a transcoder writes (`hook_name_out`); `None` for an SAE, which writes where it reads.
    pub hook_out: Option<HookPoint>,
    pub d_in: usize,
    pub d_sae: usize,
    /// Output width: d_in for an SAE.
    pub d_out: usize,
    pub apply_b_dec_to_input: bool,
    /// [d_in, d_sae]
    pub w_enc: Tensor,
    /// [d_sae] (the gated architecture has none)
    pub b_enc: Option<Tensor>,
    /// [d_sae, d_out]
    pub w_dec: Tensor,
    /// [d_out]
    pub b_dec: Tensor,
    /// A skip transcoder's [d_out, d_in].
    pub w_skip: Option<Tensor>,
    /// JumpReLU thresholds [d_sae].
    pub threshold: Option<Tensor>,
    pub gate: Option<Gate>,
    /// The folder it was loaded from.
    pub path: PathBuf,
}

impl Sae {
    /// Loads an SAE folder as it is shared:
    /// - SAELens: `cfg.json` (architecture, d_in, d_sae, `hook_name` under `metadata` or, in
    ///   older files, at the top) and `sae_weights.safetensors`;
    /// - Gemma Scope 1: `params.npz` (`w_enc`, `w_dec`, `b_enc`, `b_dec`, `threshold`) in its
    ///   published path (`gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/`), which says
    ///   the hook point;
    /// - Gemma Scope 2: `params.safetensors` (and `config.json`) likewise
    ///   (`.../resid_post/layer_12_width_16k_l0_medium/`).
    ///
    /// An unknown architecture or option, a missing or unused tensor, a wrong shape, a
    /// non-finite parameter: each is an error naming the file and what to do.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        for (file, npz) in [("params.npz", true), ("params.safetensors", false)] {
            let path = dir.join(file);
            if path.is_file() {
                let tensors: HashMap<String, Tensor> = match npz {
                    true => Tensor::read_npz(&path)
                        .map_err(|e| Error::BadSae {
                            path: path.clone(),
                            reason: e.to_string(),
                        })?
                        .into_iter()
                        .collect(),
                    false => load_safetensors(&path, device)?,
                };
                let (layout, tensors) = gemma_scope(dir, &path, tensors)?;
                return Self::from_tensors(layout, tensors, &path, dir, device);
            }
        }
        let layout = saelens_layout(dir)?;
        let weights_path = dir.join("sae_weights.safetensors");
        let tensors = load_safetensors(&weights_path, device)?;
        Self::from_tensors(layout, tensors, &weights_path, dir, device)
    }

    /// The SAE of `layout` from its `tensors` (read from `weights_path`; SAELens's names),
    /// each checked for shape, none left over.
    fn from_tensors(
        layout: Layout,
        mut tensors: HashMap<String, Tensor>,
        weights_path: &Path,
        dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let Layout {
            architecture,
            hook,
            hook_out,
            d_in,
            d_sae,
            d_out,
            skip,
            apply_b_dec_to_input,
        } = layout;

        let mut take = |name: &str, shape: &[usize]| -> Result<Option<Tensor>> {
            let Some(t) = tensors.remove(name) else {
                return Ok(None);
            };
            if t.dims() != shape {
                return Err(Error::BadSae {
                    path: weights_path.into(),
                    reason: format!(
                        "{name} has shape {:?}; cfg.json implies {shape:?}",
                        t.dims()
                    ),
                });
            }
            Ok(Some(t.to_dtype(DType::F32)?.to_device(device)?))
        };
        let need = |t: Option<Tensor>, name: &str| {
            t.ok_or_else(|| Error::BadSae {
                path: weights_path.into(),
                reason: format!("{name} is missing"),
            })
        };
        let w_enc = need(take("W_enc", &[d_in, d_sae])?, "W_enc")?;
        let w_dec = need(take("W_dec", &[d_sae, d_out])?, "W_dec")?;
        let b_dec = need(take("b_dec", &[d_out])?, "b_dec")?;
        let w_skip = match skip {
            true => Some(need(take("W_skip", &[d_out, d_in])?, "W_skip")?),
            false => None,
        };
        let (b_enc, threshold, gate) = match architecture {
            Architecture::Gated => {
                let gate = Gate {
                    b_gate: need(take("b_gate", &[d_sae])?, "b_gate")?,
                    r_mag: need(take("r_mag", &[d_sae])?, "r_mag")?,
                    b_mag: need(take("b_mag", &[d_sae])?, "b_mag")?,
                };
                (None, None, Some(gate))
            }
            Architecture::JumpRelu => {
                let b_enc = need(take("b_enc", &[d_sae])?, "b_enc")?;
                // Older files store log θ.
                let threshold = match take("threshold", &[d_sae])? {
                    Some(t) => t,
                    None => need(take("log_threshold", &[d_sae])?, "threshold")?.exp()?,
                };
                (Some(b_enc), Some(threshold), None)
            }
            _ => (Some(need(take("b_enc", &[d_sae])?, "b_enc")?), None, None),
        };
        if let Some(name) = tensors.keys().next() {
            return Err(Error::BadSae {
                path: weights_path.into(),
                reason: format!(
                    "tensor {name} is not used by a {architecture:?} SAE; the file does not match its architecture"
                ),
            });
        }
        let sae = Self {
            architecture,
            hook,
            hook_out,
            d_in,
            d_sae,
            d_out,
            apply_b_dec_to_input,
            w_enc,
            b_enc,
            w_dec,
            b_dec,
            w_skip,
            threshold,
            gate,
            path: dir.into(),
        };
        sae.check_finite(weights_path)?;
        Ok(sae)
    }

    /// Every parameter finite (a NaN threshold would silently switch features off).
    fn check_finite(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(&str, &Tensor)> = vec![
            ("W_enc", &self.w_enc),
            ("W_dec", &self.w_dec),
            ("b_dec", &self.b_dec),
        ];
        named.extend(self.b_enc.iter().map(|t| ("b_enc", t)));
        named.extend(self.threshold.iter().map(|t| ("threshold", t)));
        named.extend(self.w_skip.iter().map(|t| ("W_skip", t)));
        if let Some(g) = &self.gate {
            named.extend([
                ("b_gate", &g.b_gate),
                ("r_mag", &g.r_mag),
                ("b_mag", &g.b_mag),
            ]);
        }
        for (name, t) in named {
            let bad = t
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .filter(|v| !v.is_finite())
                .count();
            if bad > 0 {
                return Err(Error::BadSae {
                    path: path.into(),
                    reason: format!("{name} has {bad} non-finite values (NaN or infinite)"),
                });
            }
        }
        Ok(())
    }

    /// An error unless `model` has this SAE's hook point with d_in values per token (and a
    /// transcoder's output hook point with d_out).
    pub fn check_fits(&self, model: &HookedTransformer) -> Result<()> {
        let ends = [(self.hook, self.d_in, "d_in")]
            .into_iter()
            .chain(self.hook_out.map(|h| (h, self.d_out, "d_out")));
        for (hook, want, what) in ends {
            model.check_hook(&hook)?;
            let width: usize = model.hook_shape(&hook)?.iter().product();
            if width != want {
                return Err(Error::BadSae {
                    path: self.path.join("cfg.json"),
                    reason: format!(
                        "{what} {want} does not fit {hook}, whose activations have {width} values per token on this model"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Where the reconstruction goes: the output hook of a transcoder, else the input hook.
    pub fn writes(&self) -> HookPoint {
        self.hook_out.unwrap_or(self.hook)
    }

    /// The input minus b_dec (when `apply_b_dec_to_input`), [.., d_in], in f32.
    fn sae_in(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        match self.apply_b_dec_to_input {
            true => Ok(x.broadcast_sub(&self.b_dec)?),
            false => Ok(x),
        }
    }

    /// Pre-activations (`hook_sae_acts_pre`) [.., d_sae] of inputs [.., d_in].
    pub fn encode_pre(&self, x: &Tensor) -> Result<Tensor> {
        let sae_in = self.sae_in(x)?;
        let pre = match (&self.gate, &self.b_enc) {
            (Some(g), _) => {
                let w = self.w_enc.broadcast_mul(&g.r_mag.exp()?)?;
                matmul_last(&sae_in, &w)?.broadcast_add(&g.b_mag)?
            }
            (None, Some(b)) => matmul_last(&sae_in, &self.w_enc)?.broadcast_add(b)?,
            (None, None) => return Err(Error::Invalid("an SAE without b_enc or gate".into())),
        };
        Ok(pre)
    }

    /// Feature activations (`hook_sae_acts_post`) [.., d_sae] of inputs [.., d_in].
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.activate(&self.encode_pre(x)?, x)
    }

    /// Feature activations [.., d_sae] from pre-activations `pre` [.., d_sae] of inputs `x`
    /// [.., d_in] (which the gated architecture's gate reads).
    pub fn activate(&self, pre: &Tensor, x: &Tensor) -> Result<Tensor> {
        let pre = pre.to_dtype(DType::F32)?;
        Ok(match self.architecture {
            Architecture::Standard => pre.relu()?,
            Architecture::JumpRelu => {
                let theta = self
                    .threshold
                    .as_ref()
                    .ok_or_else(|| Error::Invalid("a JumpReLU SAE without thresholds".into()))?;
                let on = pre.broadcast_gt(theta)?.to_dtype(DType::F32)?;
                (pre.relu()? * on)?
            }
            Architecture::Gated => {
                let g = self
                    .gate
                    .as_ref()
                    .ok_or_else(|| Error::Invalid("a gated SAE without its gate".into()))?;
                let gating =
                    matmul_last(&self.sae_in(x)?, &self.w_enc)?.broadcast_add(&g.b_gate)?;
                let on = gating.gt(0f64)?.to_dtype(DType::F32)?;
                (pre.relu()? * on)?
            }
            Architecture::TopK {
                k,
                rescale_acts_by_decoder_norm,
            } => {
                let pre = match rescale_acts_by_decoder_norm {
                    true => pre.broadcast_mul(&self.decoder_norms()?)?,
                    false => pre,
                };
                let on = match pre.device().is_cpu() {
                    // A selection per row (sae::sparse), not a sort of d_sae values.
                    true => {
                        let n = pre.dim(D::Minus1)?;
                        let flat: Vec<f32> = pre.flatten_all()?.to_vec1()?;
                        let codes = sparse::top_k(&flat, n, k, None);
                        let mut on = vec![0f32; flat.len()];
                        for r in 0..codes.rows() {
                            for &i in &codes.idx[codes.row(r)] {
                                on[r * n + i as usize] = 1.0;
                            }
                        }
                        Tensor::from_vec(on, pre.dims(), pre.device())?
                    }
                    // The k-th largest of each row; ties at it keep more than k (as good as
                    // never with real-valued activations).
                    false => {
                        let sorted = pre.sort_last_dim(false)?.0;
                        let kth = sorted.narrow(D::Minus1, k - 1, 1)?;
                        pre.broadcast_ge(&kth)?.to_dtype(DType::F32)?
                    }
                };
                (pre.relu()? * on)?
            }
        })
    }

    /// Each feature's direction in the residual stream [d_sae, d_model]: its decoder row
    /// through the output directions of the hook it writes
    /// ([`crate::analysis::dashboards::output_directions`]); `None` where that hook has none.
    pub fn residual_directions(&self, model: &HookedTransformer) -> Result<Option<Tensor>> {
        crate::analysis::dashboards::output_directions(model, &self.writes())?
            .map(|d| crate::matmul::matmul(&self.w_dec, &d))
            .transpose()
    }

    /// ‖W_dec row‖ per feature [d_sae].
    pub fn decoder_norms(&self) -> Result<Tensor> {
        Ok(self.w_dec.sqr()?.sum(1)?.sqrt()?)
    }

    /// The reconstruction (`hook_sae_recons`) [.., d_in] of feature activations [.., d_sae].
    pub fn decode(&self, acts: &Tensor) -> Result<Tensor> {
        let acts = acts.to_dtype(DType::F32)?;
        let acts = match self.architecture {
            Architecture::TopK {
                rescale_acts_by_decoder_norm: true,
                ..
            } => acts.broadcast_div(&self.decoder_norms()?)?,
            _ => acts,
        };
        Ok(matmul_last(&acts, &self.w_dec)?.broadcast_add(&self.b_dec)?)
    }

    /// decode(encode(x)) + skip(x): [.., d_in] -> [.., d_out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self
            .decode(&self.encode(x)?)?
            .broadcast_add(&self.skip(x)?)?)
    }

    /// A skip transcoder's skip connection x·W_skipᵀ [.., d_out] (zero for any other).
    pub fn skip(&self, x: &Tensor) -> Result<Tensor> {
        match &self.w_skip {
            Some(w) => matmul_last(&x.to_dtype(DType::F32)?, &w.t()?),
            None => Ok(Tensor::zeros(1, DType::F32, x.device())?),
        }
    }

    /// The output for an activation as the model holds it at [`Self::hook`] ([batch, pos,
    /// ...]), shaped `like` the activation at [`Self::writes`] (its dtype too): what replaces
    /// that activation when the SAE is spliced in.
    pub fn reconstruct(&self, x: &Tensor, like: &Tensor) -> Result<Tensor> {
        let (b, p) = (x.dim(0)?, x.dim(1)?);
        // [batch, pos, ...] -> [batch, pos, d_in]
        let flat = x.reshape((b, p, self.d_in))?;
        Ok(self
            .forward(&flat)?
            .reshape(like.dims())?
            .to_dtype(like.dtype())?)
    }
}

impl Sae {
    /// Writes the SAE as a SAELens folder (`cfg.json` + `sae_weights.safetensors`, f32, the
    /// names and `cfg.json` fields SAELens 6 reads), `model_name` in its metadata. The folder
    /// must not exist; it appears whole or not at all (written beside it, then renamed).
    pub fn save(&self, dir: &Path, model_name: &str) -> Result<()> {
        if dir.exists() {
            return Err(Error::Invalid(format!(
                "{} exists: an SAE is never written over another; choose a new folder",
                dir.display()
            )));
        }
        let transcoder = self.hook_out.is_some();
        let skip = self.w_skip.is_some();
        let name = match (self.architecture, transcoder, skip) {
            (Architecture::Standard, false, _) => "standard",
            (Architecture::Standard, true, false) => "transcoder",
            (Architecture::Standard, true, true) => "skip_transcoder",
            (Architecture::JumpRelu, false, _) => "jumprelu",
            (Architecture::JumpRelu, true, false) => "jumprelu_transcoder",
            (Architecture::JumpRelu, true, true) => "jumprelu_skip_transcoder",
            (Architecture::TopK { .. }, false, _) => "topk",
            (Architecture::Gated, false, _) => "gated",
            (a, true, _) => {
                return Err(Error::Invalid(format!(
                    "SAELens has no {a:?} transcoder to save this as"
                )))
            }
        };
        // SAELens reads `metadata` only in files marked as its format 6 or later (older ones
        // are converted, losing the hook name): this is that format.
        let mut metadata = serde_json::json!({
            "sae_lens_version": "6.0.0",
            "hook_name": self.hook.to_string(),
            "model_name": model_name,
            "hooklens_version": env!("CARGO_PKG_VERSION"),
        });
        if let Some(out) = &self.hook_out {
            metadata["hook_name_out"] = out.to_string().into();
        }
        let mut cfg = serde_json::json!({
            "architecture": name,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": metadata,
        });
        if transcoder {
            cfg["d_out"] = self.d_out.into();
        }
        if let Architecture::TopK {
            k,
            rescale_acts_by_decoder_norm,
        } = self.architecture
        {
            cfg["k"] = k.into();
            cfg["rescale_acts_by_decoder_norm"] = rescale_acts_by_decoder_norm.into();
        }
        let mut tensors = vec![
            ("W_enc", &self.w_enc),
            ("W_dec", &self.w_dec),
            ("b_dec", &self.b_dec),
        ];
        let optional = [
            ("b_enc", self.b_enc.as_ref()),
            ("threshold", self.threshold.as_ref()),
            ("W_skip", self.w_skip.as_ref()),
            ("b_gate", self.gate.as_ref().map(|g| &g.b_gate)),
            ("r_mag", self.gate.as_ref().map(|g| &g.r_mag)),
            ("b_mag", self.gate.as_ref().map(|g| &g.b_mag)),
        ];
        tensors.extend(optional.into_iter().filter_map(|(n, t)| Some((n, t?))));
        let tensors = tensors
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)))
            .collect::<Result<HashMap<_, _>>>()?;

        crate::atomic::atomic_write_with(dir, |tmp| {
            std::fs::create_dir(tmp).map_err(|e| Error::io(tmp, e))?;
            candle_core::safetensors::save(&tensors, tmp.join("sae_weights.safetensors"))?;
            let text = serde_json::to_string_pretty(&cfg)
                .map_err(|e| Error::Invalid(format!("cfg.json: {e}")))?;
            std::fs::write(tmp.join("cfg.json"), text + "\n").map_err(|e| Error::io(tmp, e))
        })
    }
}

const NOT_AN_SAE: &str = "an SAE folder holds cfg.json and sae_weights.safetensors (SAELens), params.npz (Gemma Scope) or params.safetensors (Gemma Scope 2)";

/// What a loader reads from a file's configuration (or path) before the tensors.
struct Layout {
    architecture: Architecture,
    hook: HookPoint,
    hook_out: Option<HookPoint>,
    d_in: usize,
    d_sae: usize,
    d_out: usize,
    skip: bool,
    apply_b_dec_to_input: bool,
}

fn load_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(Error::BadSae {
            path: path.into(),
            reason: format!("not found: {NOT_AN_SAE}"),
        });
    }
    candle_core::safetensors::load(path, device).map_err(|e| Error::BadSae {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// A SAELens `cfg.json`.
fn saelens_layout(dir: &Path) -> Result<Layout> {
    let cfg_path = dir.join("cfg.json");
    if !cfg_path.is_file() {
        return Err(Error::BadSae {
            path: dir.into(),
            reason: format!("{NOT_AN_SAE}; this folder has none of them"),
        });
    }
    let bad = |reason: String| Error::BadSae {
        path: cfg_path.clone(),
        reason,
    };
    let text = crate::text::read_text(&cfg_path)?;
    let cfg: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
    let int = |key: &str| {
        cfg[key]
            .as_u64()
            .map(|v| v as usize)
            .filter(|&v| v > 0)
            .ok_or_else(|| bad(format!("`{key}` must be a positive integer")))
    };
    let (d_in, d_sae) = (int("d_in")?, int("d_sae")?);
    let name = cfg["architecture"].as_str().unwrap_or("standard");
    let transcoder = name.ends_with("transcoder");
    let skip = name.ends_with("skip_transcoder");
    let architecture = match name {
            "standard" | "transcoder" | "skip_transcoder" => Architecture::Standard,
            "jumprelu" | "jumprelu_transcoder" | "jumprelu_skip_transcoder" => {
                Architecture::JumpRelu
            }
            "gated" => Architecture::Gated,
            "topk" => Architecture::TopK {
                k: int("k")?,
                rescale_acts_by_decoder_norm: cfg["rescale_acts_by_decoder_norm"]
                    .as_bool()
                    .unwrap_or(false),
            },
            other => {
                return Err(bad(format!(
                    "architecture `{other}` is not supported; hooklens loads standard, jumprelu (and batchtopk saved for inference), topk and gated SAEs, and (jumprelu_)(skip_)transcoders"
                )))
            }
        };
    let d_out = match transcoder {
        true => int("d_out")?,
        false => d_in,
    };
    let apply_b_dec_to_input = cfg["apply_b_dec_to_input"].as_bool().unwrap_or(!transcoder);
    if transcoder && apply_b_dec_to_input {
        return Err(bad(
                "apply_b_dec_to_input is true, which transcoders do not support (b_dec is an output bias)".into(),
            ));
    }
    if let Architecture::TopK { k, .. } = architecture {
        if k > d_sae {
            return Err(bad(format!("k {k} is larger than d_sae {d_sae}")));
        }
    }
    let hook_name = cfg["metadata"]["hook_name"]
        .as_str()
        .or(cfg["hook_name"].as_str())
        .ok_or_else(|| bad("no `hook_name` (in `metadata` or at the top)".into()))?;
    let hook: HookPoint = hook_name
        .parse()
        .map_err(|e| bad(format!("hook_name: {e}")))?;
    // hook_z SAEs read [.., n_heads, d_head] flattened, as every SAE here reads its hook.
    let z = matches!(hook, HookPoint::Block(_, BlockHook::Z));
    for (key, fine) in [
        ("normalize_activations", &["none"][..]),
        (
            "reshape_activations",
            if z { &["none", "hook_z"] } else { &["none"] },
        ),
    ] {
        match cfg[key].as_str() {
            None => {}
            Some(v) if fine.contains(&v) => {}
            Some(v) => {
                return Err(bad(format!(
                    "`{key}: {v}` is not supported for {hook}; only {}",
                    fine.join(" or ")
                )))
            }
        }
    }
    let hook_out = match (transcoder, cfg["metadata"]["hook_name_out"].as_str()) {
        (false, _) => None,
        (true, Some(out)) => Some(
            out.parse()
                .map_err(|e| bad(format!("hook_name_out: {e}")))?,
        ),
        (true, None) => match hook.layer() {
            Some(l) => Some(HookPoint::block(l, BlockHook::MlpOut)),
            None => {
                return Err(bad(
                    "a transcoder needs `hook_name_out` in `metadata`".into()
                ))
            }
        },
    };
    Ok(Layout {
        architecture,
        hook,
        hook_out,
        d_in,
        d_sae,
        d_out,
        skip,
        apply_b_dec_to_input,
    })
}

/// Gemma Scope 1 and 2: tensors renamed to SAELens's (`w_enc` -> `W_enc`, an affine skip
/// connection [d_in, d_out] -> `W_skip` [d_out, d_in]), shapes from the tensors, and the hook
/// point from the published path: `layer_N` and the kind of site, as SAELens reads them
/// (`res`/`resid_post` -> `hook_resid_post`, `embedding` -> `hook_embed`, `mlp`/`mlp_out` ->
/// `hook_mlp_out`, `att`/`attn_out` -> `attn.hook_z`; a transcoder reads the MLP's input,
/// `hook_resid_mid` in hooklens, and writes `hook_mlp_out`). JumpReLU, b_dec not subtracted.
fn gemma_scope(
    dir: &Path,
    file: &Path,
    tensors: HashMap<String, Tensor>,
) -> Result<(Layout, HashMap<String, Tensor>)> {
    use crate::hook_points::BlockHook;
    let bad = |reason: String| Error::BadSae {
        path: file.into(),
        reason,
    };
    let config = dir.join("config.json");
    if config.is_file() {
        let text = crate::text::read_text(&config)?;
        let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::BadSae {
            path: config.clone(),
            reason: format!("not JSON ({e})"),
        })?;
        if let Some(a) = cfg["architecture"].as_str().filter(|a| *a != "jump_relu") {
            return Err(Error::BadSae {
                path: config,
                reason: format!("architecture `{a}`; Gemma Scope SAEs are jump_relu"),
            });
        }
    }
    let mut renamed = HashMap::new();
    for (name, t) in tensors {
        let (name, t) = match name.as_str() {
            "affine_skip_connection" => ("W_skip".to_string(), t.t()?.contiguous()?),
            n if n.starts_with("w_") => (format!("W_{}", &n[2..]), t),
            _ => (name, t),
        };
        renamed.insert(name, t);
    }
    let dims = |name: &str| -> Result<Vec<usize>> {
        Ok(renamed
            .get(name)
            .ok_or_else(|| bad(format!("{} is missing", name.to_lowercase())))?
            .dims()
            .to_vec())
    };
    let (enc, dec) = (dims("W_enc")?, dims("W_dec")?);
    let (&[d_in, d_sae], &[_, d_out]) = (enc.as_slice(), dec.as_slice()) else {
        return Err(bad(format!(
            "w_enc {enc:?} and w_dec {dec:?} must be matrices"
        )));
    };
    let path = dir.display().to_string();
    let layer = regex::Regex::new(r"layer_(\d+)")
        .ok()
        .and_then(|r| r.captures(&path)?.get(1)?.as_str().parse::<usize>().ok());
    let has = |s: &str| {
        dir.components()
            .any(|c| c.as_os_str().to_string_lossy().contains(s))
    };
    let block = |h: BlockHook| -> Result<HookPoint> {
        layer.map(|l| HookPoint::block(l, h)).ok_or_else(|| {
            bad(format!(
                "no `layer_N` in its path {path}: keep the folders as Gemma Scope publishes them"
            ))
        })
    };
    let transcoder = has("transcoder");
    let (hook, hook_out) = if transcoder {
        (block(BlockHook::ResidMid)?, Some(block(BlockHook::MlpOut)?))
    } else if has("embedding") {
        (HookPoint::Embed, None)
    } else if has("resid_post") || has("-res") {
        (block(BlockHook::ResidPost)?, None)
    } else if has("mlp_out") || has("-mlp") {
        (block(BlockHook::MlpOut)?, None)
    } else if has("attn_out") || has("-att") {
        (block(BlockHook::Z)?, None)
    } else {
        return Err(bad(format!(
            "its path {path} does not say the site (res, mlp, att; resid_post, mlp_out, attn_out, transcoder): keep the folders as Gemma Scope publishes them"
        )));
    };
    let layout = Layout {
        architecture: Architecture::JumpRelu,
        hook,
        hook_out,
        d_in,
        d_sae,
        d_out,
        skip: renamed.contains_key("W_skip"),
        apply_b_dec_to_input: false,
    };
    Ok((layout, renamed))
}

/// x [.., n] · w [n, m] -> [.., m].
fn matmul_last(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let n = dims[dims.len() - 1];
    let rows = x.elem_count() / n.max(1);
    let y = crate::matmul::matmul(&x.reshape((rows, n))?, w)?; // [rows, m]
    let mut out = dims;
    *out.last_mut().unwrap_or(&mut 0) = w.dim(1)?;
    Ok(y.reshape(out)?)
}
