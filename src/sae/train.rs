//! Training TopK sparse autoencoders (Gao et al. 2024) with their gradients written out, so that
//! only the encoder's product is dense: the decode and every backward product touch the k
//! active latents of each row, not all d_sae of them.
//!
//! For a batch x [B, d_in]:
//!
//! - sae_in = x − b_dec; pre = sae_in·W_encᵀ + b_enc [B, d_sae] (W_enc kept as rows [d_sae, d_in]);
//! - the k largest of each row of pre, relu'd, are the activations (idx, val [B, k]);
//! - x̂ = Σ_j val_j·W_dec[idx_j] + b_dec; loss = mean over rows of ‖x̂ − x‖² (SAELens's MSE);
//! - AuxK, as SAELens: the k_aux = d_in/2 largest pre-activations among the latents that have
//!   not fired for `dead_steps` steps reconstruct the residual e = x − x̂ (held constant) without
//!   the bias: aux = aux_coefficient · min(1, dead/k_aux) · mean over rows of ‖ê − e‖².
//!
//! Adam with a linear warm-up and a linear decay to zero over the last `decay_steps`; the
//! decoder's rows are kept at unit norm (the gradient's component along each row is removed
//! before the step, the rows renormalised after it), so the saved SAE needs no decoder-norm
//! rescaling. `b_dec` starts at the geometric median of the first batch (or its mean).

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

/// A TopK run's settings.
#[derive(Debug, Clone)]
pub struct TopKConfig {
    pub d_sae: usize,
    pub k: usize,
    /// Adam's learning rate after warm-up.
    pub lr: f64,
    pub total_steps: usize,
    pub warmup_steps: usize,
    /// Steps at the end over which the learning rate decays linearly to zero.
    pub decay_steps: usize,
    /// AuxK's weight (SAELens's `aux_loss_coefficient`; sparsify uses 1/32).
    pub aux_coefficient: f64,
    /// A latent is dead once it has not fired for this many steps (SAELens's `dead_feature_window`).
    pub dead_steps: usize,
    pub b_dec_init: BDecInit,
    /// Scale inputs so that their mean norm is √d_in (SAELens's `expected_average_only_in`); the
    /// scale is folded into the saved weights.
    pub normalize: bool,
    pub seed: u64,
}

/// The parameters, or their gradients.
#[derive(Debug, Clone)]
pub struct Params {
    /// Encoder rows [d_sae, d_in] (SAELens's W_encᵀ).
    pub w_enc: Tensor,
    /// [d_sae]
    pub b_enc: Tensor,
    /// Decoder rows [d_sae, d_in].
    pub w_dec: Tensor,
    /// [d_in]
    pub b_dec: Tensor,
}

impl Params {
    fn zeros_like(&self) -> Result<Self> {
        Ok(Self {
            w_enc: self.w_enc.zeros_like()?,
            b_enc: self.b_enc.zeros_like()?,
            w_dec: self.w_dec.zeros_like()?,
            b_dec: self.b_dec.zeros_like()?,
        })
    }

    fn tensors(&self) -> [&Tensor; 4] {
        [&self.w_enc, &self.b_enc, &self.w_dec, &self.b_dec]
    }

    fn from_vec(v: Vec<Tensor>) -> Result<Self> {
        let [w_enc, b_enc, w_dec, b_dec] = <[Tensor; 4]>::try_from(v)
            .map_err(|v| Error::Invalid(format!("{} parameter tensors, not 4", v.len())))?;
        Ok(Self {
            w_enc,
            b_enc,
            w_dec,
            b_dec,
        })
    }
}

/// One step's measurements, on the batch it trained on (before the update).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub step: usize,
    /// Mean over rows of ‖x̂ − x‖², in the input's units.
    pub mse: f64,
    /// AuxK, weighted as it enters the loss (0 with no dead latents).
    pub aux: f64,
    /// 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² over the batch.
    pub explained_variance: f64,
    /// Mean active latents per row (k, less where some of the k are not positive).
    pub l0: f64,
    /// Latents dead at this step.
    pub dead: usize,
    pub lr: f64,
}

/// A TopK SAE in training, with its optimiser state.
pub struct TopKTrainer {
    pub cfg: TopKConfig,
    pub params: Params,
    /// Adam's first and second moments.
    m: Params,
    v: Params,
    pub step: usize,
    /// Steps since each latent last fired.
    since_fired: Vec<usize>,
    /// Inputs are multiplied by this before the SAE sees them (1 unless `normalize`).
    pub scale: f64,
}

impl TopKTrainer {
    /// A fresh SAE for inputs of width `d_in`, its `b_dec` (and the normalisation scale) taken
    /// from `first` [rows, d_in], a batch of the training data. Weights are drawn from a seeded
    /// generator, so the same settings give the same run.
    pub fn new(cfg: TopKConfig, first: &Tensor, dtype: DType) -> Result<Self> {
        let (_, d_in) = first.dims2()?;
        if cfg.k == 0 || cfg.k > cfg.d_sae {
            return Err(Error::bad_parameter(
                "k",
                cfg.k,
                format!("must be between 1 and d_sae = {}", cfg.d_sae),
            ));
        }
        if cfg.total_steps == 0 || cfg.warmup_steps + cfg.decay_steps > cfg.total_steps {
            return Err(Error::bad_parameter(
                "total_steps",
                cfg.total_steps,
                format!(
                    "must be positive and hold the {} warm-up and {} decay steps",
                    cfg.warmup_steps, cfg.decay_steps
                ),
            ));
        }
        let device = first.device();
        let first = first.to_dtype(DType::F64)?;
        let scale = match cfg.normalize {
            true => {
                (d_in as f64).sqrt()
                    / first
                        .sqr()?
                        .sum(1)?
                        .sqrt()?
                        .mean_all()?
                        .to_scalar::<f64>()?
            }
            false => 1.0,
        };
        let first = (first * scale)?;
        let b_dec = match cfg.b_dec_init {
            BDecInit::GeometricMedian => geometric_median(&first)?,
            BDecInit::Mean => first.mean(0)?,
            BDecInit::Zeros => first.mean(0)?.zeros_like()?,
        };
        // nn.Linear's uniform(±1/√d_in) for the encoder; the decoder starts as its transpose
        // with unit rows (Gao et al.).
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let bound = 1.0 / (d_in as f64).sqrt();
        let w: Vec<f64> = (0..cfg.d_sae * d_in)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let w_enc = Tensor::from_vec(w, (cfg.d_sae, d_in), device)?; // [d_sae, d_in]
        let w_dec = unit_rows(&w_enc)?;
        let params = Params {
            w_enc: w_enc.to_dtype(dtype)?,
            b_enc: Tensor::zeros(cfg.d_sae, dtype, device)?,
            w_dec: w_dec.to_dtype(dtype)?,
            b_dec: b_dec.to_dtype(dtype)?,
        };
        Ok(Self {
            m: params.zeros_like()?,
            v: params.zeros_like()?,
            since_fired: vec![0; cfg.d_sae],
            cfg,
            params,
            step: 0,
            scale,
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

    /// Which latents count as dead now.
    pub fn dead_mask(&self) -> Vec<bool> {
        self.since_fired
            .iter()
            .map(|&s| s >= self.cfg.dead_steps)
            .collect()
    }

    /// The loss on `x` [rows, d_in] (already scaled) and its gradient with respect to every
    /// parameter, with the latents of `dead` feeding AuxK. Returns the statistics and, per
    /// latent, whether it fired. The encoder's product is a matmul on the parameters' device;
    /// the sparse rest runs on the host ([`super::sparse`]).
    pub fn loss_and_grads(
        &self,
        x: &Tensor,
        dead: &[bool],
    ) -> Result<(StepStats, Params, Vec<bool>)> {
        let p = &self.params;
        let x = x.to_dtype(p.w_enc.dtype())?;
        let sae_in = x.broadcast_sub(&p.b_dec)?; // [B, d_in]
        let pre = matmul(&sae_in, &p.w_enc.t()?)?.broadcast_add(&p.b_enc)?; // [B, d_sae]
        match p.w_enc.dtype() {
            DType::F32 => self.sparse_grads::<f32>(&x, &sae_in, &pre, dead),
            DType::F64 => self.sparse_grads::<f64>(&x, &sae_in, &pre, dead),
            other => Err(Error::Invalid(format!(
                "an SAE is trained in f32 (or f64), not {other:?}"
            ))),
        }
    }

    fn sparse_grads<T: WithDType>(
        &self,
        x: &Tensor,
        sae_in: &Tensor,
        pre: &Tensor,
        dead: &[bool],
    ) -> Result<(StepStats, Params, Vec<bool>)> {
        let p = &self.params;
        let (rows, d) = x.dims2()?;
        let n = self.cfg.d_sae;
        let host = |t: &Tensor| -> Result<Vec<T>> { Ok(t.flatten_all()?.to_vec1::<T>()?) };
        let (x_h, sae_in, pre) = (host(x)?, host(sae_in)?, host(pre)?);
        let (w_enc, w_dec, b_dec) = (host(&p.w_enc)?, host(&p.w_dec)?, host(&p.b_dec)?);
        let zero = T::from_f64(0.0);
        let sum_sq = |v: &[T]| v.iter().map(|a| a.to_f64() * a.to_f64()).sum::<f64>();

        let mut codes = sparse::top_k(&pre, n, self.cfg.k, None);
        codes
            .val
            .iter_mut()
            .for_each(|v| *v = if *v > zero { *v } else { zero }); // relu
                                                                   // err = x̂ − x, with x̂ = Σ val·W_dec[idx] + b_dec: [B, d]
        let mut err = sparse::decode(&codes, &w_dec, d);
        for (i, e) in err.iter_mut().enumerate() {
            *e += b_dec[i % d] - x_h[i];
        }
        let mse = sum_sq(&err) / rows as f64;
        let mut mean = vec![0f64; d];
        x_h.iter()
            .enumerate()
            .for_each(|(i, v)| mean[i % d] += v.to_f64() / rows as f64);
        let total: f64 = x_h
            .iter()
            .enumerate()
            .map(|(i, v)| (v.to_f64() - mean[i % d]).powi(2))
            .sum();
        let explained_variance = 1.0 - mse * rows as f64 / total.max(f64::MIN_POSITIVE);

        let mut g = HostGrads::new(n, d);
        // d mse / d x̂ = 2 (x̂ − x) / B, and x̂'s b_dec takes it whole.
        let scale = T::from_f64(2.0 / rows as f64);
        let g_out: Vec<T> = err.iter().map(|&e| e * scale).collect();
        g_out
            .iter()
            .enumerate()
            .for_each(|(i, &v)| g.b_dec[i % d] += v);
        let active: Vec<T> = codes
            .val
            .iter()
            .map(|&v| T::from_f64(if v > zero { 1.0 } else { 0.0 }))
            .collect();
        g.backprop(&codes, Some(&active), &g_out, &sae_in, &w_enc, &w_dec);

        let n_dead = dead.iter().filter(|&&x| x).count();
        let mut aux = 0.0;
        if n_dead > 0 && self.cfg.aux_coefficient > 0.0 {
            let half = (d / 2).max(1);
            let weight = self.cfg.aux_coefficient * (n_dead as f64 / half as f64).min(1.0);
            // The dead latents' top k_aux, not relu'd (as SAELens), reconstruct the residual
            // x − x̂ = −err without the bias: aux_err = ê − (−err).
            let aux_codes = sparse::top_k(&pre, n, half.min(n_dead), Some(dead));
            let mut aux_err = sparse::decode(&aux_codes, &w_dec, d);
            aux_err.iter_mut().zip(&err).for_each(|(a, &e)| *a += e);
            aux = weight * sum_sq(&aux_err) / rows as f64;
            let scale = T::from_f64(2.0 * weight / rows as f64);
            aux_err.iter_mut().for_each(|a| *a *= scale);
            g.backprop(&aux_codes, None, &aux_err, &sae_in, &w_enc, &w_dec);
        }

        let mut fired = vec![false; n];
        for (&f, &v) in codes.idx.iter().zip(&codes.val) {
            fired[f as usize] |= v > zero;
        }
        let stats = StepStats {
            step: self.step,
            mse: mse / (self.scale * self.scale),
            aux,
            explained_variance,
            l0: active.iter().map(|a| a.to_f64()).sum::<f64>() / rows as f64,
            dead: n_dead,
            lr: self.lr_at(self.step),
        };
        let dev = p.w_enc.device();
        let grads = Params {
            w_enc: Tensor::from_vec(g.w_enc, (n, d), dev)?,
            b_enc: Tensor::from_vec(g.b_enc, n, dev)?,
            w_dec: Tensor::from_vec(g.w_dec, (n, d), dev)?,
            b_dec: Tensor::from_vec(g.b_dec, d, dev)?,
        };
        Ok((stats, grads, fired))
    }

    /// One Adam step on the batch `x` [rows, d_in] (in the input's units).
    pub fn step(&mut self, x: &Tensor) -> Result<StepStats> {
        let x = (x.to_dtype(self.params.w_enc.dtype())? * self.scale)?;
        let dead = self.dead_mask();
        let (stats, mut g, fired) = self.loss_and_grads(&x, &dead)?;
        // Keep the decoder rows on the unit sphere: no gradient along them.
        let along = (&g.w_dec * &self.params.w_dec)?.sum_keepdim(1)?; // [d_sae, 1]
        g.w_dec = (&g.w_dec - self.params.w_dec.broadcast_mul(&along)?)?;

        // torch's Adam: p −= lr · m̂ / (√v̂ + ε), with the bias-corrected moments.
        let (b1, b2, eps): (f64, f64, f64) = (0.9, 0.999, 1e-8);
        let t = (self.step + 1) as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let mut next = Vec::with_capacity(4);
        let mut ms = Vec::with_capacity(4);
        let mut vs = Vec::with_capacity(4);
        for (((p, g), m), v) in self
            .params
            .tensors()
            .into_iter()
            .zip(g.tensors())
            .zip(self.m.tensors())
            .zip(self.v.tensors())
        {
            let m = ((m * b1)? + (g * (1.0 - b1))?)?;
            let v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + eps)?)?;
            next.push((p - (update * stats.lr)?)?);
            ms.push(m);
            vs.push(v);
        }
        self.params = Params::from_vec(next)?;
        self.params.w_dec = unit_rows(&self.params.w_dec)?;
        self.m = Params::from_vec(ms)?;
        self.v = Params::from_vec(vs)?;
        for (s, f) in self.since_fired.iter_mut().zip(fired) {
            *s = if f { 0 } else { *s + 1 };
        }
        self.step += 1;
        Ok(stats)
    }

    /// Writes everything the run needs to continue exactly where it is (parameters, Adam's
    /// moments, the step, the dead-latent counters, the input scale) to `path`, atomically.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let mut t = HashMap::new();
        for (prefix, p) in [
            ("", &self.params),
            ("adam_m.", &self.m),
            ("adam_v.", &self.v),
        ] {
            for (name, x) in ["w_enc", "b_enc", "w_dec", "b_dec"].iter().zip(p.tensors()) {
                t.insert(format!("{prefix}{name}"), x.to_device(&Device::Cpu)?);
            }
        }
        let since: Vec<u32> = self
            .since_fired
            .iter()
            .map(|&s| s.min(u32::MAX as usize) as u32)
            .collect();
        t.insert("since_fired".into(), Tensor::new(since, &Device::Cpu)?);
        t.insert(
            "step".into(),
            Tensor::new(&[self.step as u32], &Device::Cpu)?,
        );
        t.insert("scale".into(), Tensor::new(&[self.scale], &Device::Cpu)?);
        crate::atomic::atomic_write_with(path, |tmp| Ok(candle_core::safetensors::save(&t, tmp)?))
    }

    /// A run continued from [`Self::save_checkpoint`]'s file, with the settings it was started
    /// with (the caller checks those: shapes are checked here).
    pub fn load_checkpoint(cfg: TopKConfig, path: &Path, device: &Device) -> Result<Self> {
        let mut t =
            candle_core::safetensors::load(path, device).map_err(|e| Error::CorruptFile {
                path: path.into(),
                reason: e.to_string(),
            })?;
        let mut take = |name: &str| {
            t.remove(name).ok_or_else(|| Error::CorruptFile {
                path: path.into(),
                reason: format!("no `{name}`: not a train_sae checkpoint"),
            })
        };
        let mut params = |prefix: &str| -> Result<Params> {
            Params::from_vec(
                ["w_enc", "b_enc", "w_dec", "b_dec"]
                    .iter()
                    .map(|n| take(&format!("{prefix}{n}")))
                    .collect::<Result<_>>()?,
            )
        };
        let (params, m, v) = (params("")?, params("adam_m.")?, params("adam_v.")?);
        let since_fired: Vec<u32> = take("since_fired")?.to_vec1()?;
        let step = take("step")?.to_vec1::<u32>()?[0] as usize;
        let scale = take("scale")?.to_vec1::<f64>()?[0];
        if params.w_enc.dims() != [cfg.d_sae, params.b_dec.dim(0)?]
            || since_fired.len() != cfg.d_sae
        {
            return Err(Error::CorruptFile {
                path: path.into(),
                reason: format!(
                    "its SAE is {:?}, not d_sae = {}: it belongs to another run",
                    params.w_enc.dims(),
                    cfg.d_sae
                ),
            });
        }
        Ok(Self {
            cfg,
            params,
            m,
            v,
            step,
            since_fired: since_fired.into_iter().map(|s| s as usize).collect(),
            scale,
        })
    }

    /// The trained SAE, reading (and writing) `hook`, with the input scale folded into its
    /// weights, in f32 on the trainer's device: what SAELens saves for inference.
    pub fn to_sae(&self, hook: HookPoint) -> Result<Sae> {
        let p = &self.params;
        let s = self.scale;
        let (d_sae, d_in) = p.w_enc.dims2()?;
        // sae(x) = decode(encode(s·x)) / s: W_enc·s, and W_dec, b_dec over s.
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        Ok(Sae {
            architecture: Architecture::TopK {
                k: self.cfg.k,
                rescale_acts_by_decoder_norm: false,
            },
            hook,
            hook_out: None,
            d_in,
            d_sae,
            d_out: d_in,
            apply_b_dec_to_input: true,
            w_enc: f32(&(p.w_enc.t()? * s)?)?.contiguous()?,
            b_enc: Some(f32(&p.b_enc)?),
            w_dec: f32(&(&p.w_dec / s)?)?,
            b_dec: f32(&(&p.b_dec / s)?)?,
            w_skip: None,
            threshold: None,
            gate: None,
            path: PathBuf::new(),
        })
    }
}

/// Gradients being summed on the host, laid out as [`Params`].
struct HostGrads<T> {
    w_enc: Vec<T>,
    b_enc: Vec<T>,
    w_dec: Vec<T>,
    b_dec: Vec<T>,
}

impl<T: WithDType> HostGrads<T> {
    fn new(n: usize, d: usize) -> Self {
        let zeros = |len| vec![T::from_f64(0.0); len];
        Self {
            w_enc: zeros(n * d),
            b_enc: zeros(n),
            w_dec: zeros(n * d),
            b_dec: zeros(d),
        }
    }

    /// Adds the gradients that flow back from `g_out` = dL/dx̂ [B, d] through a sparse decode
    /// x̂ = Σ_j val[b, j]·W_dec[idx[b, j]] and, through val = pre[idx] (times `mask`, the relu's
    /// derivative, where there is one), into the encoder rows, b_enc and b_dec.
    fn backprop(
        &mut self,
        codes: &sparse::Codes<T>,
        mask: Option<&[T]>,
        g_out: &[T],
        sae_in: &[T],
        w_enc: &[T],
        w_dec: &[T],
    ) {
        let d = self.b_dec.len();
        let mut d_val = sparse::dots(codes, w_dec, g_out, d); // dL/dval [B·k]
        if let Some(m) = mask {
            d_val.iter_mut().zip(m).for_each(|(v, &m)| *v *= m);
        }
        let groups = sparse::by_latent(&codes.idx, self.b_enc.len());
        // dW_dec[f] += Σ val·g_out[b]; dW_enc[f] += Σ d_val·sae_in[b]; db_enc[f] += Σ d_val
        sparse::scatter(&groups, codes.k, &codes.val, g_out, d, &mut self.w_dec);
        sparse::scatter(&groups, codes.k, &d_val, sae_in, d, &mut self.w_enc);
        let per_latent = sparse::sums(&groups, &d_val);
        // sae_in = x − b_dec: db_dec −= Σ_f (Σ d_val)·W_enc[f]
        for (f, &s) in per_latent.iter().enumerate() {
            self.b_enc[f] += s;
            for (b, &w) in self.b_dec.iter_mut().zip(&w_enc[f * d..(f + 1) * d]) {
                *b -= s * w;
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
