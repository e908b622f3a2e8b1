//! Training sparse autoencoders and transcoders with their gradients written out, so that
//! only the encoder's product is dense: the decode and every backward product touch each row's
//! active latents, not all d_sae of them ([`super::sparse`]).
//!
//! For a batch x [B, d_in] and its target y [B, d_out] (x itself for an SAE; for a
//! transcoder, the MLP's output while x is its input):
//!
//! - sae_in = x − b_dec for an SAE (x for a transcoder, whose b_dec is an output bias);
//!   pre = sae_in·W_encᵀ + b_enc [B, d_sae] (W_enc kept as rows [d_sae, d_in]);
//! - the activations, by [`Sparsity`]: the k largest of each row (TopK), the k·B largest of the
//!   batch (BatchTopK), pre where pre > θ (JumpReLU), relu(pre) (ReLU);
//! - ŷ = acts·W_dec + b_dec (+ x·W_skipᵀ for a skip transcoder); mse = mean over rows of
//!   ‖ŷ − y‖² (SAELens's MSE);
//! - the sparsity term: TopK and BatchTopK have AuxK, as SAELens: the k_aux = d_in/2 largest
//!   pre-activations among the latents that have not fired for `dead_steps` steps reconstruct
//!   the residual e = y − ŷ (held constant) without the bias: aux_coefficient ·
//!   min(1, dead/k_aux) · mean ‖ê − e‖². JumpReLU has c·L0 (mean active latents), its threshold
//!   learnt through SAELens's straight-through estimator with a rectangle kernel of width
//!   `bandwidth`; ReLU has c·mean Σ_f acts_f·‖W_dec[f]‖ (L1 weighted by the decoder norm).
//!
//! Adam with a linear warm-up and a linear decay to zero over the last `decay_steps`. Except
//! for ReLU (whose L1 is weighted by the decoder's norms instead), the decoder's rows are kept
//! at unit norm: the gradient's component along each row is removed before the step and the
//! rows renormalised after it. `b_dec` starts at the geometric median of the first batch's
//! targets (or their mean).

use super::{sparse, Architecture, Sae};
use crate::error::{Error, Result};
use crate::hook_points::HookPoint;
use crate::matmul::matmul;
use candle_core::{DType, Device, Tensor, WithDType, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where `b_dec` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BDecInit {
    /// The geometric median of the first batch (SAELens's `b_dec_init_method="geometric_median"`).
    GeometricMedian,
    Mean,
    Zeros,
}

/// How the activations are made sparse, with the architecture's own settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sparsity {
    /// The k largest pre-activations of each row, relu'd (Gao et al.), with AuxK.
    TopK { k: usize },
    /// The k·rows largest relu'd pre-activations of the whole batch (Bussmann et al.), with
    /// AuxK. A threshold, the running mean of the smallest kept activation (SAELens's
    /// `topk_threshold`, rate 0.01), makes it a JumpReLU SAE for inference, as SAELens saves it.
    BatchTopK { k: f64 },
    /// pre·[pre > θ] with a learnt θ per latent and an L0 penalty (Rajamanoharan et al.).
    JumpRelu {
        l0_coefficient: f64,
        bandwidth: f64,
        init_threshold: f64,
    },
    /// relu(pre) with an L1 penalty weighted by the decoder norms (SAELens's `standard`).
    Relu { l1_coefficient: f64 },
}

impl Sparsity {
    /// SAELens's name for the architecture being trained.
    pub fn name(&self) -> &'static str {
        match self {
            Sparsity::TopK { .. } => "topk",
            Sparsity::BatchTopK { .. } => "batchtopk",
            Sparsity::JumpRelu { .. } => "jumprelu",
            Sparsity::Relu { .. } => "standard",
        }
    }

    fn unit_decoder(&self) -> bool {
        !matches!(self, Sparsity::Relu { .. })
    }

    fn aux_k(&self) -> bool {
        matches!(self, Sparsity::TopK { .. } | Sparsity::BatchTopK { .. })
    }
}

/// A training run's settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub sparsity: Sparsity,
    pub d_sae: usize,
    /// Adam's learning rate after warm-up.
    pub lr: f64,
    pub total_steps: usize,
    pub warmup_steps: usize,
    /// Steps at the end over which the learning rate decays linearly to zero.
    pub decay_steps: usize,
    /// Steps over which the L1 or L0 coefficient rises linearly to its value (SAELens's
    /// `l1_warm_up_steps`, `l0_warm_up_steps`).
    pub penalty_warmup_steps: usize,
    /// AuxK's weight (SAELens's `aux_loss_coefficient`; sparsify uses 1/32).
    pub aux_coefficient: f64,
    /// A latent is dead once it has not fired for this many steps (SAELens's `dead_feature_window`).
    pub dead_steps: usize,
    pub b_dec_init: BDecInit,
    /// Scale inputs (and a transcoder's targets) so that their mean norm is √width (SAELens's
    /// `expected_average_only_in`); the scales are folded into the saved weights.
    pub normalize: bool,
    /// A transcoder's skip connection W_skip [d_out, d_in], starting at zero.
    pub skip: bool,
    pub seed: u64,
}

/// The parameters, or their gradients.
#[derive(Debug, Clone)]
pub struct Params {
    /// Encoder rows [d_sae, d_in] (SAELens's W_encᵀ).
    pub w_enc: Tensor,
    /// [d_sae]
    pub b_enc: Tensor,
    /// Decoder rows [d_sae, d_out].
    pub w_dec: Tensor,
    /// [d_out]
    pub b_dec: Tensor,
    /// JumpReLU's thresholds [d_sae].
    pub threshold: Option<Tensor>,
    /// A skip transcoder's [d_out, d_in].
    pub w_skip: Option<Tensor>,
}

impl Params {
    /// The tensors there are, by their names in SAELens's state dict.
    fn named(&self) -> Vec<(&'static str, &Tensor)> {
        let mut v = vec![
            ("w_enc", &self.w_enc),
            ("b_enc", &self.b_enc),
            ("w_dec", &self.w_dec),
            ("b_dec", &self.b_dec),
        ];
        v.extend(self.threshold.as_ref().map(|t| ("threshold", t)));
        v.extend(self.w_skip.as_ref().map(|t| ("w_skip", t)));
        v
    }

    /// The same parameters with each tensor replaced by `f(name, tensor)`.
    fn map(&self, mut f: impl FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<Self> {
        let mut opt = |name, t: &Option<Tensor>| t.as_ref().map(|t| f(name, t)).transpose();
        let (threshold, w_skip) = (
            opt("threshold", &self.threshold)?,
            opt("w_skip", &self.w_skip)?,
        );
        Ok(Self {
            w_enc: f("w_enc", &self.w_enc)?,
            b_enc: f("b_enc", &self.b_enc)?,
            w_dec: f("w_dec", &self.w_dec)?,
            b_dec: f("b_dec", &self.b_dec)?,
            threshold,
            w_skip,
        })
    }
}

/// One step's measurements, on the batch it trained on (before the update).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub step: usize,
    /// Mean over rows of ‖ŷ − y‖², in the target's units.
    pub mse: f64,
    /// AuxK, weighted as it enters the loss (0 with no dead latents, and for JumpReLU and ReLU).
    pub aux: f64,
    /// The L1 (ReLU) or L0 (JumpReLU) penalty, weighted as it enters the loss.
    pub penalty: f64,
    /// 1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖² over the batch.
    pub explained_variance: f64,
    /// Mean active latents per row.
    pub l0: f64,
    /// Latents dead at this step.
    pub dead: usize,
    pub lr: f64,
}

/// What one batch gives: its statistics, the gradients, which latents fired, and the smallest
/// activation that fired (BatchTopK's threshold follows it).
pub struct Gradients {
    pub stats: StepStats,
    pub grads: Params,
    pub fired: Vec<bool>,
    pub min_active: f64,
}

/// An SAE or transcoder in training, with its optimiser state.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub params: Params,
    /// Adam's first and second moments.
    m: Params,
    v: Params,
    pub step: usize,
    /// Steps since each latent last fired.
    since_fired: Vec<usize>,
    /// Inputs are multiplied by this before the SAE sees them (1 unless `normalize`).
    pub scale: f64,
    /// Targets are multiplied by this (`scale` for an SAE).
    pub scale_out: f64,
    /// Whether it maps inputs to other targets (a transcoder) rather than reconstructing them.
    pub transcoder: bool,
    /// BatchTopK's inference threshold.
    pub topk_threshold: f64,
}

impl Trainer {
    /// A fresh SAE for inputs like `first` [rows, d_in], a batch of the training data, or a
    /// transcoder from them to `target` [rows, d_out]. `b_dec` (and the normalisation scales)
    /// come from this batch; weights are drawn from a seeded generator, so the same settings
    /// give the same run.
    pub fn new(
        cfg: TrainConfig,
        first: &Tensor,
        target: Option<&Tensor>,
        dtype: DType,
    ) -> Result<Self> {
        let (_, d_in) = first.dims2()?;
        check(&cfg, target.is_some())?;
        let device = first.device();
        let mean_norm_scale = |x: &Tensor| -> Result<f64> {
            let x = x.to_dtype(DType::F64)?;
            let norm = x.sqr()?.sum(1)?.sqrt()?.mean_all()?.to_scalar::<f64>()?;
            Ok(match cfg.normalize {
                true => (x.dim(1)? as f64).sqrt() / norm,
                false => 1.0,
            })
        };
        let scale = mean_norm_scale(first)?;
        let (scale_out, y) = match target {
            Some(y) => (mean_norm_scale(y)?, y),
            None => (scale, first),
        };
        let y = (y.to_dtype(DType::F64)? * scale_out)?;
        let d_out = y.dim(1)?;
        let b_dec = match cfg.b_dec_init {
            BDecInit::GeometricMedian => geometric_median(&y)?,
            BDecInit::Mean => y.mean(0)?,
            BDecInit::Zeros => y.mean(0)?.zeros_like()?,
        };
        // nn.Linear's uniform(±1/√d_in) for the encoder; an SAE's decoder starts as its
        // transpose with unit rows (Gao et al.), a transcoder's is drawn the same way. ReLU
        // starts with decoder rows of norm 0.1 and the encoder tied to them (SAELens's
        // decoder_init_norm, Anthropic's April 2024 update).
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut uniform = |rows: usize, cols: usize| -> Result<Tensor> {
            let bound = 1.0 / (cols as f64).sqrt();
            let w: Vec<f64> = (0..rows * cols)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            Ok(Tensor::from_vec(w, (rows, cols), device)?)
        };
        let mut w_enc = uniform(cfg.d_sae, d_in)?; // [d_sae, d_in]
        let mut w_dec = match target {
            Some(_) => unit_rows(&uniform(cfg.d_sae, d_out)?)?,
            None => unit_rows(&w_enc)?,
        }; // [d_sae, d_out]
        if let Sparsity::Relu { .. } = cfg.sparsity {
            w_dec = (w_dec * 0.1)?;
            if target.is_none() {
                w_enc = w_dec.clone();
            }
        }
        let threshold = match cfg.sparsity {
            Sparsity::JumpRelu { init_threshold, .. } => {
                Some(Tensor::full(init_threshold, cfg.d_sae, device)?)
            }
            _ => None,
        };
        let w_skip = match cfg.skip {
            true => Some(Tensor::zeros((d_out, d_in), DType::F64, device)?),
            false => None,
        };
        let params = Params {
            w_enc,
            b_enc: Tensor::zeros(cfg.d_sae, DType::F64, device)?,
            w_dec,
            b_dec,
            threshold,
            w_skip,
        }
        .map(|_, t| Ok(t.to_dtype(dtype)?))?;
        let zeros = params.map(|_, t| Ok(t.zeros_like()?))?;
        Ok(Self {
            m: zeros.clone(),
            v: zeros,
            since_fired: vec![0; cfg.d_sae],
            cfg,
            params,
            step: 0,
            scale,
            scale_out,
            transcoder: target.is_some(),
            topk_threshold: 0.0,
        })
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        self.params.w_enc.device()
    }

    /// The learning rate at step `step`: warm-up, constant, linear decay.
    pub fn lr_at(&self, step: usize) -> f64 {
        let c = &self.cfg;
        let warm = match c.warmup_steps {
            0 => 1.0,
            w => ((step + 1) as f64 / w as f64).min(1.0),
        };
        let decay_start = c.total_steps - c.decay_steps;
        let decay = match step >= decay_start && c.decay_steps > 0 {
            true => (c.total_steps - step) as f64 / c.decay_steps as f64,
            false => 1.0,
        };
        c.lr * warm * decay
    }

    /// The L1 or L0 coefficient at step `step`, after its warm-up.
    pub fn penalty_at(&self, step: usize) -> f64 {
        let c = match self.cfg.sparsity {
            Sparsity::JumpRelu { l0_coefficient, .. } => l0_coefficient,
            Sparsity::Relu { l1_coefficient } => l1_coefficient,
            _ => return 0.0,
        };
        match self.cfg.penalty_warmup_steps {
            0 => c,
            w => c * ((step + 1) as f64 / w as f64).min(1.0),
        }
    }

    /// Which latents count as dead now.
    pub fn dead_mask(&self) -> Vec<bool> {
        self.since_fired
            .iter()
            .map(|&s| s >= self.cfg.dead_steps)
            .collect()
    }

    /// The loss on `x` [rows, d_in] against `y` [rows, d_out] (`None`: x, for an SAE), both
    /// already scaled, and its gradient with respect to every parameter, with the latents of
    /// `dead` feeding AuxK. The dense products are matmuls on the parameters' device; the
    /// sparse rest runs on the host ([`super::sparse`]).
    pub fn loss_and_grads(
        &self,
        x: &Tensor,
        y: Option<&Tensor>,
        dead: &[bool],
    ) -> Result<Gradients> {
        let p = &self.params;
        if y.is_some() != self.transcoder {
            return Err(Error::Invalid(match self.transcoder {
                true => "a transcoder is trained on inputs and targets: no target given".into(),
                false => "an SAE reconstructs its input: it takes no target".into(),
            }));
        }
        let x = x.to_dtype(p.w_enc.dtype())?;
        let y = y.map(|y| y.to_dtype(p.w_enc.dtype())).transpose()?;
        let sae_in = match self.transcoder {
            true => x.clone(),
            false => x.broadcast_sub(&p.b_dec)?,
        }; // [B, d_in]
        let pre = matmul(&sae_in, &p.w_enc.t()?)?.broadcast_add(&p.b_enc)?; // [B, d_sae]
        let skip = p.w_skip.as_ref().map(|w| matmul(&x, &w.t()?)).transpose()?; // [B, d_out]
        let dense = Dense {
            x: &x,
            y: y.as_ref().unwrap_or(&x),
            sae_in: &sae_in,
            pre: &pre,
            skip: skip.as_ref(),
        };
        match p.w_enc.dtype() {
            DType::F32 => self.sparse_grads::<f32>(dense, dead),
            DType::F64 => self.sparse_grads::<f64>(dense, dead),
            other => Err(Error::Invalid(format!(
                "an SAE is trained in f32 (or f64), not {other:?}"
            ))),
        }
    }

    fn sparse_grads<T: WithDType>(&self, t: Dense, dead: &[bool]) -> Result<Gradients> {
        let p = &self.params;
        let (rows, d_in) = t.x.dims2()?;
        let d = t.y.dim(1)?;
        let n = self.cfg.d_sae;
        let host = |t: &Tensor| -> Result<Vec<T>> { Ok(t.flatten_all()?.to_vec1::<T>()?) };
        let (y_h, sae_in) = (host(t.y)?, host(t.sae_in)?);
        // The pre-activations [B, d_sae] are the step's largest array: read in place on the CPU.
        let (storage, layout) = t.pre.storage_and_layout();
        let pre: std::borrow::Cow<[T]> = match sparse::cpu_slice(&storage, layout) {
            Some(s) => s.into(),
            None => host(t.pre)?.into(),
        };
        let (w_enc, w_dec, b_dec) = (host(&p.w_enc)?, host(&p.w_dec)?, host(&p.b_dec)?);
        let threshold = p.threshold.as_ref().map(host).transpose()?;
        let zero = T::from_f64(0.0);
        let sum_sq = |v: &[T]| v.iter().map(|a| a.to_f64() * a.to_f64()).sum::<f64>();

        // The active latents of each row; JumpReLU also keeps the inactive ones within half a
        // bandwidth of their threshold, with value 0, for the threshold's gradient.
        let mut codes = match self.cfg.sparsity {
            Sparsity::TopK { k } => sparse::top_k(&pre, n, k, None),
            Sparsity::BatchTopK { k } => {
                sparse::batch_top_k(&pre, n, (k * rows as f64).round() as usize)
            }
            Sparsity::Relu { .. } => sparse::select(&pre, n, |_, v| v > zero),
            Sparsity::JumpRelu { bandwidth, .. } => {
                let th = threshold.as_deref().unwrap_or_default();
                let half = bandwidth / 2.0;
                sparse::select(&pre, n, |f, v| v.to_f64() > th[f].to_f64() - half)
            }
        };
        for b in 0..codes.rows() {
            for e in codes.row(b) {
                let on = match &threshold {
                    Some(th) => codes.val[e] > th[codes.idx[e] as usize],
                    None => codes.val[e] > zero,
                };
                if !on {
                    codes.val[e] = zero;
                }
            }
        }
        // err = ŷ − y, with ŷ = acts·W_dec + b_dec (+ skip): [B, d]
        let mut err = sparse::decode(&codes, &w_dec, d);
        let skip = t.skip.map(host).transpose()?;
        for (i, e) in err.iter_mut().enumerate() {
            *e += b_dec[i % d] - y_h[i] + skip.as_ref().map_or(zero, |s| s[i]);
        }
        let mse = sum_sq(&err) / rows as f64;
        let mut mean = vec![0f64; d];
        y_h.iter()
            .enumerate()
            .for_each(|(i, v)| mean[i % d] += v.to_f64() / rows as f64);
        let total: f64 = y_h
            .iter()
            .enumerate()
            .map(|(i, v)| (v.to_f64() - mean[i % d]).powi(2))
            .sum();
        let explained_variance = 1.0 - mse * rows as f64 / total.max(f64::MIN_POSITIVE);

        let mut g = HostGrads::new(n, d_in, d);
        // d mse / d ŷ = 2 (ŷ − y) / B, and ŷ's b_dec takes it whole.
        let scale = T::from_f64(2.0 / rows as f64);
        let g_out: Vec<T> = err.iter().map(|&e| e * scale).collect();
        g_out
            .iter()
            .enumerate()
            .for_each(|(i, &v)| g.b_dec[i % d] += v);
        let groups = sparse::by_latent(&codes, n);
        let mut d_val = sparse::dots(&codes, &w_dec, &g_out, d); // dL/dacts per entry
        sparse::scatter(&groups, &codes.val, &g_out, d, &mut g.w_dec);

        let active = codes.val.iter().filter(|&&v| v > zero).count();
        let c = self.penalty_at(self.step);
        let mut penalty = 0.0;
        match self.cfg.sparsity {
            Sparsity::Relu { .. } => {
                // L1 = c/B Σ acts_f‖W_dec[f]‖: into each act, and into each decoder row
                // along itself.
                let norms: Vec<f64> = w_dec
                    .chunks(d)
                    .map(|r| sum_sq(r).sqrt().max(f64::MIN_POSITIVE))
                    .collect();
                let per = c / rows as f64;
                for (v, &f) in d_val.iter_mut().zip(&codes.idx) {
                    *v += T::from_f64(per * norms[f as usize]);
                }
                let total_act = sparse::sums(&groups, &codes.val);
                for (f, s) in total_act.iter().enumerate() {
                    penalty += per * s.to_f64() * norms[f];
                    let coef = T::from_f64(per * s.to_f64() / norms[f]);
                    for (g, &w) in g.w_dec[f * d..(f + 1) * d]
                        .iter_mut()
                        .zip(&w_dec[f * d..(f + 1) * d])
                    {
                        *g += coef * w;
                    }
                }
            }
            Sparsity::JumpRelu { bandwidth, .. } => {
                // SAELens's rectangle-kernel estimators, each entry within half a bandwidth
                // of its threshold: the jump's dθ −= (θ/ε)·dL/dacts, the L0 step's
                // dθ −= c/(B ε).
                let th = threshold.as_deref().unwrap_or_default();
                penalty = c * active as f64 / rows as f64;
                let l0 = c / (rows as f64 * bandwidth);
                for (e, &f) in codes.idx.iter().enumerate() {
                    let (f, v) = (f as usize, pre_of(&codes, e, &pre, n));
                    if (v - th[f].to_f64()).abs() < bandwidth / 2.0 {
                        g.threshold[f] -=
                            T::from_f64(th[f].to_f64() / bandwidth * d_val[e].to_f64() + l0);
                    }
                }
            }
            _ => {}
        }
        // Through the activation into pre: only the active entries pass.
        for (v, &a) in d_val.iter_mut().zip(&codes.val) {
            if a <= zero {
                *v = zero;
            }
        }
        g.encoder(&groups, &d_val, &sae_in, &w_enc, !self.transcoder);

        let n_dead = dead.iter().filter(|&&x| x).count();
        let mut aux = 0.0;
        if self.cfg.sparsity.aux_k() && n_dead > 0 && self.cfg.aux_coefficient > 0.0 {
            let half = (d_in / 2).max(1);
            let weight = self.cfg.aux_coefficient * (n_dead as f64 / half as f64).min(1.0);
            // The dead latents' top k_aux, not relu'd (as SAELens), reconstruct the residual
            // y − ŷ = −err without the bias: aux_err = ê − (−err).
            let aux_codes = sparse::top_k(&pre, n, half.min(n_dead), Some(dead));
            let mut aux_err = sparse::decode(&aux_codes, &w_dec, d);
            aux_err.iter_mut().zip(&err).for_each(|(a, &e)| *a += e);
            aux = weight * sum_sq(&aux_err) / rows as f64;
            let scale = T::from_f64(2.0 * weight / rows as f64);
            aux_err.iter_mut().for_each(|a| *a *= scale);
            let groups = sparse::by_latent(&aux_codes, n);
            let d_val = sparse::dots(&aux_codes, &w_dec, &aux_err, d);
            sparse::scatter(&groups, &aux_codes.val, &aux_err, d, &mut g.w_dec);
            g.encoder(&groups, &d_val, &sae_in, &w_enc, !self.transcoder);
        }

        let mut fired = vec![false; n];
        let mut min_active = f64::INFINITY;
        for (&f, &v) in codes.idx.iter().zip(&codes.val) {
            if v > zero {
                fired[f as usize] = true;
                min_active = min_active.min(v.to_f64());
            }
        }
        let stats = StepStats {
            step: self.step,
            mse: mse / (self.scale_out * self.scale_out),
            aux,
            penalty,
            explained_variance,
            l0: active as f64 / rows as f64,
            dead: n_dead,
            lr: self.lr_at(self.step),
        };
        let dev = p.w_enc.device();
        // dW_skip = g_outᵀ·x [d_out, d_in], a dense product.
        let w_skip = match &p.w_skip {
            Some(_) => {
                let g_out = Tensor::from_vec(g_out, (rows, d), dev)?;
                Some(matmul(&g_out.t()?, t.x)?)
            }
            None => None,
        };
        let grads = Params {
            w_enc: Tensor::from_vec(g.w_enc, (n, d_in), dev)?,
            b_enc: Tensor::from_vec(g.b_enc, n, dev)?,
            w_dec: Tensor::from_vec(g.w_dec, (n, d), dev)?,
            b_dec: Tensor::from_vec(g.b_dec, d, dev)?,
            threshold: match &p.threshold {
                Some(_) => Some(Tensor::from_vec(g.threshold, n, dev)?),
                None => None,
            },
            w_skip,
        };
        Ok(Gradients {
            stats,
            grads,
            fired,
            min_active,
        })
    }

    /// One Adam step on the batch `x` [rows, d_in] with its targets `y` [rows, d_out] for a
    /// transcoder (`None` for an SAE), in the data's units.
    pub fn step(&mut self, x: &Tensor, y: Option<&Tensor>) -> Result<StepStats> {
        let dtype = self.params.w_enc.dtype();
        let x = (x.to_dtype(dtype)? * self.scale)?;
        let y = y.map(|y| y.to_dtype(dtype)? * self.scale_out).transpose()?;
        let dead = self.dead_mask();
        let Gradients {
            stats,
            grads: mut g,
            fired,
            min_active,
        } = self.loss_and_grads(&x, y.as_ref(), &dead)?;
        let unit = self.cfg.sparsity.unit_decoder();
        if unit {
            // Keep the decoder rows on the unit sphere: no gradient along them.
            let along = (&g.w_dec * &self.params.w_dec)?.sum_keepdim(1)?; // [d_sae, 1]
            g.w_dec = (&g.w_dec - self.params.w_dec.broadcast_mul(&along)?)?;
        }
        let grads: HashMap<&str, &Tensor> = g.named().into_iter().collect();

        // torch's Adam: p −= lr · m̂ / (√v̂ + ε), with the bias-corrected moments.
        let (b1, b2, eps): (f64, f64, f64) = (0.9, 0.999, 1e-8);
        let t = (self.step + 1) as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        self.m = self
            .m
            .map(|name, m| Ok(((m * b1)? + (grads[name] * (1.0 - b1))?)?))?;
        self.v = self
            .v
            .map(|name, v| Ok(((v * b2)? + (grads[name].sqr()? * (1.0 - b2))?)?))?;
        let (m, v): (HashMap<_, _>, HashMap<_, _>) = (
            self.m.named().into_iter().collect(),
            self.v.named().into_iter().collect(),
        );
        self.params = self.params.map(|name, p| {
            let update = ((m[name] / c1)? / ((v[name] / c2)?.sqrt()? + eps)?)?;
            Ok((p - (update * stats.lr)?)?)
        })?;
        if unit {
            self.params.w_dec = unit_rows(&self.params.w_dec)?;
        }
        // SAELens keeps JumpReLU's thresholds non-negative by projection.
        if let Some(th) = &self.params.threshold {
            self.params.threshold = Some(th.relu()?);
        }
        if let (Sparsity::BatchTopK { .. }, true) = (self.cfg.sparsity, min_active.is_finite()) {
            self.topk_threshold = 0.99 * self.topk_threshold + 0.01 * min_active;
        }
        for (s, f) in self.since_fired.iter_mut().zip(fired) {
            *s = if f { 0 } else { *s + 1 };
        }
        self.step += 1;
        Ok(stats)
    }

    /// Writes everything the run needs to continue exactly where it is (parameters, Adam's
    /// moments, the step, the dead-latent counters, the scales, BatchTopK's threshold) to
    /// `path`, atomically.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let mut t = HashMap::new();
        for (prefix, p) in [
            ("", &self.params),
            ("adam_m.", &self.m),
            ("adam_v.", &self.v),
        ] {
            for (name, x) in p.named() {
                t.insert(format!("{prefix}{name}"), x.to_device(&Device::Cpu)?);
            }
        }
        let since: Vec<u32> = self
            .since_fired
            .iter()
            .map(|&s| s.min(u32::MAX as usize) as u32)
            .collect();
        let cpu = &Device::Cpu;
        t.insert("since_fired".into(), Tensor::new(since, cpu)?);
        t.insert("step".into(), Tensor::new(&[self.step as u32], cpu)?);
        t.insert("scale".into(), Tensor::new(&[self.scale], cpu)?);
        t.insert("scale_out".into(), Tensor::new(&[self.scale_out], cpu)?);
        t.insert(
            "transcoder".into(),
            Tensor::new(&[self.transcoder as u8], cpu)?,
        );
        t.insert(
            "topk_threshold".into(),
            Tensor::new(&[self.topk_threshold], cpu)?,
        );
        crate::atomic::atomic_write_with(path, |tmp| Ok(candle_core::safetensors::save(&t, tmp)?))
    }

    /// A run continued from [`Self::save_checkpoint`]'s file, with the settings it was started
    /// with (the caller checks those: shapes are checked here).
    pub fn load_checkpoint(cfg: TrainConfig, path: &Path, device: &Device) -> Result<Self> {
        let corrupt = |reason: String| Error::CorruptFile {
            path: path.into(),
            reason,
        };
        let mut t =
            candle_core::safetensors::load(path, device).map_err(|e| corrupt(e.to_string()))?;
        let mut take = |name: &str| {
            t.remove(name)
                .ok_or_else(|| corrupt(format!("no `{name}`: not a train_sae checkpoint")))
        };
        let scalar =
            |x: Tensor| -> Result<f64> { Ok(x.to_dtype(DType::F64)?.to_vec1::<f64>()?[0]) };
        let since_fired: Vec<u32> = take("since_fired")?.to_vec1()?;
        let step = scalar(take("step")?)? as usize;
        let scale = scalar(take("scale")?)?;
        let scale_out = scalar(take("scale_out")?)?;
        let transcoder = scalar(take("transcoder")?)? != 0.0;
        let topk_threshold = scalar(take("topk_threshold")?)?;
        let mut params = |prefix: &str| -> Result<Params> {
            let mut get = |name: &str| take(&format!("{prefix}{name}"));
            Ok(Params {
                w_enc: get("w_enc")?,
                b_enc: get("b_enc")?,
                w_dec: get("w_dec")?,
                b_dec: get("b_dec")?,
                threshold: match cfg.sparsity {
                    Sparsity::JumpRelu { .. } => Some(get("threshold")?),
                    _ => None,
                },
                w_skip: match cfg.skip {
                    true => Some(get("w_skip")?),
                    false => None,
                },
            })
        };
        let (params, m, v) = (params("")?, params("adam_m.")?, params("adam_v.")?);
        if params.w_enc.dim(0)? != cfg.d_sae || since_fired.len() != cfg.d_sae {
            return Err(corrupt(format!(
                "its SAE is {:?}, not d_sae = {}: it belongs to another run",
                params.w_enc.dims(),
                cfg.d_sae
            )));
        }
        if let Some(extra) = t.keys().next() {
            return Err(corrupt(format!(
                "`{extra}` is not part of a {} run: it belongs to another run",
                cfg.sparsity.name()
            )));
        }
        Ok(Self {
            cfg,
            params,
            m,
            v,
            step,
            since_fired: since_fired.into_iter().map(|s| s as usize).collect(),
            scale,
            scale_out,
            transcoder,
            topk_threshold,
        })
    }

    /// The trained SAE reading `hook` (and writing `hook_out`, for a transcoder), with the
    /// scales folded into its weights, in f32 on the trainer's device: what SAELens saves for
    /// inference. BatchTopK becomes JumpReLU with its threshold for every latent.
    pub fn to_sae(&self, hook: HookPoint, hook_out: Option<HookPoint>) -> Result<Sae> {
        if hook_out.is_some() != self.transcoder {
            return Err(Error::Invalid(match self.transcoder {
                true => "a transcoder needs the hook it writes".into(),
                false => "an SAE writes where it reads: no output hook".into(),
            }));
        }
        let p = &self.params;
        let (s_in, s_out) = (self.scale, self.scale_out);
        let (d_sae, d_in) = p.w_enc.dims2()?;
        let d_out = p.w_dec.dim(1)?;
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let architecture = match self.cfg.sparsity {
            Sparsity::TopK { k } => Architecture::TopK {
                k,
                rescale_acts_by_decoder_norm: false,
            },
            Sparsity::BatchTopK { .. } | Sparsity::JumpRelu { .. } => Architecture::JumpRelu,
            Sparsity::Relu { .. } => Architecture::Standard,
        };
        let threshold = match (&p.threshold, self.cfg.sparsity) {
            (Some(th), _) => Some(f32(th)?),
            (None, Sparsity::BatchTopK { .. }) => Some(Tensor::full(
                self.topk_threshold as f32,
                d_sae,
                p.w_enc.device(),
            )?),
            _ => None,
        };
        // sae(x) = decode(encode(s_in·x)) / s_out: W_enc·s_in, and W_dec, b_dec over s_out;
        // the skip x·W_skipᵀ·s_in/s_out. The pre-activations, and so the thresholds, are
        // unchanged.
        Ok(Sae {
            architecture,
            hook,
            hook_out,
            d_in,
            d_sae,
            d_out,
            apply_b_dec_to_input: !self.transcoder,
            w_enc: f32(&(p.w_enc.t()? * s_in)?)?.contiguous()?,
            b_enc: Some(f32(&p.b_enc)?),
            w_dec: f32(&(&p.w_dec / s_out)?)?,
            b_dec: f32(&(&p.b_dec / s_out)?)?,
            w_skip: p
                .w_skip
                .as_ref()
                .map(|w| f32(&(w * (s_in / s_out))?))
                .transpose()?,
            threshold,
            gate: None,
            path: PathBuf::new(),
        })
    }
}

/// The settings' own consistency, for an SAE or (`transcoder`) a transcoder.
fn check(cfg: &TrainConfig, transcoder: bool) -> Result<()> {
    let bad = |name: &str, value: &dyn std::fmt::Display, why: String| {
        Err(Error::bad_parameter(name, value, why))
    };
    match cfg.sparsity {
        Sparsity::TopK { k } if k == 0 || k > cfg.d_sae => {
            return bad("k", &k, format!("must be between 1 and d_sae = {}", cfg.d_sae))
        }
        Sparsity::BatchTopK { k } if !(k > 0.0 && k <= cfg.d_sae as f64) => {
            return bad("k", &k, format!("must be between 1 and d_sae = {}", cfg.d_sae))
        }
        Sparsity::JumpRelu {
            l0_coefficient,
            bandwidth,
            init_threshold,
        } if !(l0_coefficient >= 0.0 && bandwidth > 0.0 && init_threshold >= 0.0) => {
            return bad(
                "jumprelu",
                &format!("l0 {l0_coefficient}, bandwidth {bandwidth}, threshold {init_threshold}"),
                "the L0 coefficient and initial threshold must be ≥ 0 and the bandwidth > 0".into(),
            )
        }
        Sparsity::Relu { l1_coefficient } if l1_coefficient.is_nan() || l1_coefficient < 0.0 => {
            return bad("l1_coefficient", &l1_coefficient, "must be ≥ 0".into())
        }
        Sparsity::TopK { .. } if transcoder => {
            return Err(Error::Unsupported(
                "SAELens has no TopK transcoder to save: train it as batchtopk (saved as jumprelu_transcoder), jumprelu or relu".into(),
            ))
        }
        _ => {}
    }
    if cfg.skip && !transcoder {
        return bad(
            "skip",
            &true,
            "a skip connection is a transcoder's: give it an output hook".into(),
        );
    }
    if cfg.total_steps == 0 || cfg.warmup_steps + cfg.decay_steps > cfg.total_steps {
        return bad(
            "total_steps",
            &cfg.total_steps,
            format!(
                "must be positive and hold the {} warm-up and {} decay steps",
                cfg.warmup_steps, cfg.decay_steps
            ),
        );
    }
    Ok(())
}

/// The dense products of a batch, from [`Trainer::loss_and_grads`].
struct Dense<'a> {
    /// [B, d_in]
    x: &'a Tensor,
    /// [B, d_out]
    y: &'a Tensor,
    /// [B, d_in]
    sae_in: &'a Tensor,
    /// [B, d_sae]
    pre: &'a Tensor,
    /// x·W_skipᵀ [B, d_out]
    skip: Option<&'a Tensor>,
}

/// The pre-activation of entry `e` of `codes`.
fn pre_of<T: WithDType>(codes: &sparse::Codes<T>, e: usize, pre: &[T], n: usize) -> f64 {
    let b = codes.offsets.partition_point(|&o| o <= e) - 1;
    pre[b * n + codes.idx[e] as usize].to_f64()
}

/// Gradients being summed on the host, laid out as [`Params`].
struct HostGrads<T> {
    w_enc: Vec<T>,
    b_enc: Vec<T>,
    w_dec: Vec<T>,
    b_dec: Vec<T>,
    threshold: Vec<T>,
}

impl<T: WithDType> HostGrads<T> {
    fn new(n: usize, d_in: usize, d_out: usize) -> Self {
        let zeros = |len| vec![T::from_f64(0.0); len];
        Self {
            w_enc: zeros(n * d_in),
            b_enc: zeros(n),
            w_dec: zeros(n * d_out),
            b_dec: zeros(d_out),
            threshold: zeros(n),
        }
    }

    /// Adds the gradients that flow from `d_pre` = dL/dpre at each entry of the codes that
    /// `groups` groups into the encoder rows, b_enc and (`through_b_dec`: an SAE, whose
    /// sae_in = x − b_dec) b_dec.
    fn encoder(
        &mut self,
        groups: &sparse::ByLatent,
        d_pre: &[T],
        sae_in: &[T],
        w_enc: &[T],
        through_b_dec: bool,
    ) {
        let d = w_enc.len() / self.b_enc.len();
        // dW_enc[f] += Σ d_pre·sae_in[b]; db_enc[f] += Σ d_pre
        sparse::scatter(groups, d_pre, sae_in, d, &mut self.w_enc);
        let per_latent = sparse::sums(groups, d_pre);
        for (f, &s) in per_latent.iter().enumerate() {
            self.b_enc[f] += s;
            if through_b_dec {
                // db_dec −= Σ_f (Σ d_pre)·W_enc[f]
                for (b, &w) in self.b_dec.iter_mut().zip(&w_enc[f * d..(f + 1) * d]) {
                    *b -= s * w;
                }
            }
        }
    }
}

/// Rows scaled to unit norm.
fn unit_rows(w: &Tensor) -> Result<Tensor> {
    let norm = w
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(w.broadcast_div(&norm)?)
}

/// The geometric median of the rows of `x` [rows, d] (Weiszfeld's iteration from the mean).
pub fn geometric_median(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F64)?;
    let mut m = x.mean(0)?;
    for _ in 0..100 {
        let dist = x
            .broadcast_sub(&m)?
            .sqr()?
            .sum(1)?
            .sqrt()?
            .clamp(1e-8, f64::MAX)?; // [rows]
        let w = dist.recip()?;
        let next = x
            .broadcast_mul(&w.unsqueeze(1)?)?
            .sum(0)?
            .broadcast_div(&w.sum_all()?)?;
        let moved = (&next - &m)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        m = next;
        if moved < 1e-6 {
            break;
        }
    }
    Ok(m)
}
