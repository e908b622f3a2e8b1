//! SAE and transcoder training (`hooklens::sae::train`): the hand-written sparse gradients
//! against finite differences of a dense re-implementation of each loss and against SAELens's
//! autograd, recovery of known sparse features by each architecture, determinism,
//! checkpoints, and the saved SAELens folder.

use candle_core::{DType, Device, Tensor};
use hooklens::sae::train::{BDecInit, Params, Sparsity, TrainConfig, Trainer};
use hooklens::sae::Sae;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TOPK: Sparsity = Sparsity::TopK { k: 3 };
const BATCHTOPK: Sparsity = Sparsity::BatchTopK { k: 3.0 };
const JUMPRELU: Sparsity = Sparsity::JumpRelu {
    l0_coefficient: 0.7,
    bandwidth: 0.4,
    init_threshold: 0.2,
};
const RELU: Sparsity = Sparsity::Relu {
    l1_coefficient: 0.3,
};

fn config(sparsity: Sparsity, d_sae: usize, steps: usize) -> TrainConfig {
    TrainConfig {
        sparsity,
        d_sae,
        lr: 4e-3,
        total_steps: steps,
        warmup_steps: steps / 20,
        decay_steps: steps / 5,
        penalty_warmup_steps: 0,
        aux_coefficient: 1.0,
        dead_steps: 50,
        b_dec_init: BDecInit::GeometricMedian,
        normalize: false,
        skip: false,
        seed: 0,
    }
}

fn topk(k: usize, d_sae: usize, steps: usize) -> TrainConfig {
    config(Sparsity::TopK { k }, d_sae, steps)
}

fn random(rows: usize, cols: usize, seed: u64, dtype: DType) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let v: Vec<f64> = (0..rows * cols)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// The loss as the module docs define it, computed densely and independently: pre for every
/// latent, the activations by sorting (per row, or over the batch) or by comparison,
/// ŷ = acts·W_dec + b_dec (+ x·W_skipᵀ); the L1 or L0 term; AuxK over the `dead` latents
/// against the residual `e` (held constant, as SAELens detaches it). `y`: a transcoder's
/// targets. Returns the loss and the residuals y − ŷ; `e` defaults to those.
fn dense_loss(
    p: &Params,
    x: &Tensor,
    y: Option<&Tensor>,
    sparsity: Sparsity,
    dead: &[bool],
    e: Option<&[Vec<f64>]>,
) -> (f64, Vec<Vec<f64>>) {
    let m = |t: &Tensor| -> Vec<Vec<f64>> { t.to_vec2().unwrap() };
    let v = |t: &Tensor| -> Vec<f64> { t.to_vec1().unwrap() };
    let (x, y) = (m(x), y.map(m));
    let (w_enc, w_dec, b_enc, b_dec) = (m(&p.w_enc), m(&p.w_dec), v(&p.b_enc), v(&p.b_dec));
    let w_skip = p.w_skip.as_ref().map(m);
    let (d_in, d_out, d_sae, rows) = (x[0].len(), b_dec.len(), b_enc.len(), x.len());
    let n_dead = dead.iter().filter(|&&d| d).count();
    let decode = |acts: &[f64]| -> Vec<f64> {
        (0..d_out)
            .map(|c| (0..d_sae).map(|f| acts[f] * w_dec[f][c]).sum::<f64>())
            .collect()
    };
    let top = |pre: &[f64], n: usize, keep: &dyn Fn(usize) -> bool| -> Vec<f64> {
        let mut order: Vec<usize> = (0..d_sae).filter(|&f| keep(f)).collect();
        order.sort_by(|&a, &b| pre[b].total_cmp(&pre[a]));
        let mut acts = vec![0.0; d_sae];
        order.into_iter().take(n).for_each(|f| acts[f] = pre[f]);
        acts
    };
    let pre: Vec<Vec<f64>> = x
        .iter()
        .map(|row| {
            let sae_in: Vec<f64> = match y {
                Some(_) => row.clone(),
                None => row.iter().zip(&b_dec).map(|(a, b)| a - b).collect(),
            };
            (0..d_sae)
                .map(|f| b_enc[f] + (0..d_in).map(|c| sae_in[c] * w_enc[f][c]).sum::<f64>())
                .collect()
        })
        .collect();
    // BatchTopK's cut: the (k·rows)-th largest relu'd pre-activation of the batch.
    let mut all: Vec<f64> = pre.iter().flatten().map(|a| a.max(0.0)).collect();
    all.sort_by(|a, b| b.total_cmp(a));
    let acts: Vec<Vec<f64>> = pre
        .iter()
        .map(|pre| match sparsity {
            Sparsity::TopK { k } => top(pre, k, &|_| true).iter().map(|a| a.max(0.0)).collect(),
            Sparsity::BatchTopK { k } => {
                let cut = all[(k * rows as f64) as usize - 1];
                pre.iter()
                    .map(|&a| if a >= cut { a.max(0.0) } else { 0.0 })
                    .collect()
            }
            Sparsity::JumpRelu { .. } => {
                let th = v(p.threshold.as_ref().unwrap());
                pre.iter()
                    .zip(th)
                    .map(|(&a, t)| if a > t { a } else { 0.0 })
                    .collect()
            }
            Sparsity::Relu { .. } => pre.iter().map(|a| a.max(0.0)).collect(),
        })
        .collect();
    let (mut mse, mut extra, mut residuals) = (0.0, 0.0, vec![]);
    for r in 0..rows {
        let target = y.as_ref().map_or(&x[r], |y| &y[r]);
        let y_hat = decode(&acts[r]);
        let res: Vec<f64> = (0..d_out)
            .map(|c| {
                let skip = w_skip
                    .as_ref()
                    .map_or(0.0, |w| (0..d_in).map(|i| w[c][i] * x[r][i]).sum::<f64>());
                target[c] - y_hat[c] - b_dec[c] - skip
            })
            .collect();
        mse += res.iter().map(|v| v * v).sum::<f64>();
        match sparsity {
            Sparsity::Relu { l1_coefficient } => {
                extra += l1_coefficient
                    * (0..d_sae)
                        .map(|f| acts[r][f] * w_dec[f].iter().map(|w| w * w).sum::<f64>().sqrt())
                        .sum::<f64>()
            }
            Sparsity::JumpRelu { l0_coefficient, .. } => {
                extra += l0_coefficient * acts[r].iter().filter(|&&a| a > 0.0).count() as f64
            }
            _ if n_dead > 0 => {
                let e_row = e.map_or(&res, |e| &e[r]);
                let k_aux = (d_in / 2).min(n_dead);
                let weight = (n_dead as f64 / (d_in / 2) as f64).min(1.0); // aux_coefficient 1
                let e_hat = decode(&top(&pre[r], k_aux, &|f| dead[f]));
                extra += weight
                    * (0..d_out)
                        .map(|c| (e_hat[c] - e_row[c]).powi(2))
                        .sum::<f64>();
            }
            _ => {}
        }
        residuals.push(res);
    }
    ((mse + extra) / rows as f64, residuals)
}

/// `p` with entry `i` of its parameter number `which` (in the order of Params' fields) moved
/// by `delta`.
fn with_entry(p: &Params, which: usize, i: usize, delta: f64) -> Params {
    let mut q = p.clone();
    let t = match which {
        0 => &mut q.w_enc,
        1 => &mut q.b_enc,
        2 => &mut q.w_dec,
        3 => &mut q.b_dec,
        _ => q.w_skip.as_mut().unwrap(),
    };
    let shape = t.dims().to_vec();
    let mut v: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
    v[i] += delta;
    *t = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
    q
}

/// Checks every gradient but the thresholds' (which only SAELens's estimator defines) against
/// central differences of [`dense_loss`], for an SAE or (`d_out`) a skip transcoder.
fn check_gradients(sparsity: Sparsity, d_out: Option<usize>) {
    let (d_in, d_sae, rows) = (6, 14, 7);
    let x = random(rows, d_in, 1, DType::F64);
    let y = d_out.map(|d| random(rows, d, 4, DType::F64));
    let cfg = TrainConfig {
        skip: d_out.is_some(),
        ..config(sparsity, d_sae, 10)
    };
    let mut t = Trainer::new(cfg, &x, y.as_ref(), DType::F64).unwrap();
    // Move off the initialisation: biases, a decoder that is not the encoder, a skip.
    t.params.b_enc = (random(1, d_sae, 2, DType::F64).squeeze(0).unwrap() * 0.3).unwrap();
    t.params.w_dec = random(d_sae, d_out.unwrap_or(d_in), 3, DType::F64);
    if let Some(w) = &mut t.params.w_skip {
        *w = (random(w.dim(0).unwrap(), d_in, 5, DType::F64) * 0.2).unwrap();
    }
    for dead in [vec![false; d_sae], (0..d_sae).map(|f| f % 3 == 0).collect()] {
        let r = t.loss_and_grads(&x, y.as_ref(), &dead).unwrap();
        let (p, s) = (&t.params, r.stats);
        // The residual at this point, held constant as the trainer holds it.
        let (base, e) = dense_loss(p, &x, y.as_ref(), sparsity, &dead, None);
        assert!(
            (base - (s.mse + s.aux + s.penalty)).abs() < 1e-9 * base,
            "{sparsity:?}: loss {} + {} + {} against the dense {base}",
            s.mse,
            s.aux,
            s.penalty
        );
        let (mut checked, eps) = (0, 1e-6);
        let g = &r.grads;
        let grads = [&g.w_enc, &g.b_enc, &g.w_dec, &g.b_dec]
            .into_iter()
            .chain(g.w_skip.as_ref());
        for (which, grad) in grads.enumerate() {
            let grad: Vec<f64> = grad.flatten_all().unwrap().to_vec1().unwrap();
            for (i, &gi) in grad.iter().enumerate() {
                let loss = |delta| {
                    let q = with_entry(p, which, i, delta);
                    dense_loss(&q, &x, y.as_ref(), sparsity, &dead, Some(&e)).0
                };
                let fd = (loss(eps) - loss(-eps)) / (2.0 * eps);
                assert!(
                    (fd - gi).abs() <= 1e-5 * (1.0 + fd.abs()),
                    "{sparsity:?} parameter {which} entry {i}: gradient {gi}, finite difference {fd} (dead {:?})",
                    dead.iter().filter(|&&d| d).count()
                );
                checked += 1;
            }
        }
        let d = d_out.unwrap_or(d_in);
        let skip = d_out.map_or(0, |d| d * d_in);
        assert_eq!(checked, d_sae * (d_in + d) + d_sae + d + skip);
    }
}

#[test]
fn topk_gradients_equal_finite_differences() {
    check_gradients(TOPK, None);
}

#[test]
fn batchtopk_gradients_equal_finite_differences() {
    check_gradients(BATCHTOPK, None);
    check_gradients(BATCHTOPK, Some(5));
}

#[test]
fn jumprelu_gradients_equal_finite_differences() {
    check_gradients(JUMPRELU, None);
    check_gradients(JUMPRELU, Some(5));
}

#[test]
fn relu_l1_gradients_equal_finite_differences() {
    check_gradients(RELU, None);
    check_gradients(RELU, Some(5));
}

/// Each loss and every gradient (the thresholds' straight-through estimates included) equal
/// SAELens 6's autograd on the same weights and batch (tests/reference/make_train_grads_reference.py).
#[test]
fn losses_and_gradients_equal_saelens() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let r = candle_core::safetensors::load(
        root.join("tests/reference/train_grads_ref.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let x = &r["x"];
    let dead: Vec<bool> = r["dead"]
        .to_vec1::<f64>()
        .unwrap()
        .iter()
        .map(|&d| d > 0.0)
        .collect();
    for (name, sparsity) in [
        ("topk", TOPK),
        ("batchtopk", BATCHTOPK),
        ("jumprelu", JUMPRELU),
        ("relu", RELU),
    ] {
        let mut t = Trainer::new(config(sparsity, 14, 10), x, None, DType::F64).unwrap();
        let get = |p: &str| r[&format!("{name}.{p}")].clone();
        t.params.w_enc = get("W_enc").t().unwrap().contiguous().unwrap();
        t.params.b_enc = get("b_enc");
        t.params.w_dec = get("W_dec");
        t.params.b_dec = get("b_dec");
        if name == "jumprelu" {
            t.params.threshold = Some(get("threshold"));
        }
        let out = t.loss_and_grads(x, None, &dead).unwrap();
        let scalar = |p: &str| get(p).to_vec1::<f64>().unwrap()[0];
        let s = out.stats;
        for (what, ours, theirs) in [
            ("mse", s.mse, scalar("mse_loss")),
            ("aux", s.aux + s.penalty, scalar("aux_loss")),
        ] {
            assert!(
                (ours - theirs).abs() <= 1e-9 * theirs.abs().max(1.0),
                "{name} {what}: {ours} against SAELens's {theirs}"
            );
        }
        let g = &out.grads;
        let mut pairs = vec![
            ("W_enc", g.w_enc.t().unwrap()),
            ("b_enc", g.b_enc.clone()),
            ("W_dec", g.w_dec.clone()),
            ("b_dec", g.b_dec.clone()),
        ];
        pairs.extend(g.threshold.clone().map(|t| ("threshold", t)));
        for (p, ours) in pairs {
            let theirs = get(&format!("grad.{p}"));
            let scale = theirs
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let diff = (ours - &theirs).unwrap().abs().unwrap().max_all().unwrap();
            let diff = diff.to_scalar::<f64>().unwrap();
            // SAELens keeps the thresholds (and so their gradient) in f32.
            let tol = if p == "threshold" { 1e-6 } else { 1e-10 };
            assert!(
                diff <= tol * scale.max(1.0),
                "{name} d{p}: off by {diff} (scale {scale})"
            );
        }
    }
}

/// Sparse combinations of `n` random unit directions in `d` dimensions: each row has `active`
/// of them, with coefficients in [1, 2). Returns (directions [n, d], a batch generator).
struct Synthetic {
    directions: Vec<Vec<f32>>,
    active: usize,
    rng: StdRng,
}

impl Synthetic {
    fn new(n: usize, d: usize, active: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let directions = (0..n)
            .map(|_| {
                let v: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
                v.into_iter().map(|a| a / norm).collect()
            })
            .collect();
        Self {
            directions,
            active,
            rng,
        }
    }

    fn batch(&mut self, rows: usize) -> Tensor {
        let (n, d) = (self.directions.len(), self.directions[0].len());
        let mut out = vec![0f32; rows * d];
        for r in 0..rows {
            for f in rand::seq::index::sample(&mut self.rng, n, self.active) {
                let c: f32 = self.rng.random_range(1.0..2.0);
                for (o, v) in out[r * d..(r + 1) * d].iter_mut().zip(&self.directions[f]) {
                    *o += c * v;
                }
            }
        }
        Tensor::from_vec(out, (rows, d), &Device::Cpu).unwrap()
    }
}

fn train(cfg: TrainConfig, data: &mut Synthetic, batch: usize) -> (Trainer, Vec<f64>) {
    let first = data.batch(batch);
    let mut t = Trainer::new(cfg, &first, None, DType::F32).unwrap();
    let mut ev = vec![];
    for _ in 0..t.cfg.total_steps {
        ev.push(t.step(&data.batch(batch), None).unwrap().explained_variance);
    }
    (t, ev)
}

/// Trains `cfg` on sparse combinations of 48 directions in 32 dimensions, 3 active per row,
/// and returns the mean over the directions of their best cosine with a decoder row, the
/// explained variance over the last 50 steps and the saved SAE's L0 on fresh data.
fn recovery(cfg: TrainConfig) -> (f32, f64, f32) {
    let (n, d, active) = (48, 32, 3);
    let mut data = Synthetic::new(n, d, active, 7);
    // 300 rows: more than one of the sparse products' parallel chunks.
    let (t, ev) = train(cfg, &mut data, 300);
    let sae = t
        .to_sae("blocks.0.hook_resid_post".parse().unwrap(), None)
        .unwrap();
    let dec: Vec<Vec<f32>> = sae.w_dec.to_vec2().unwrap();
    let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
    let best: Vec<f32> = data
        .directions
        .iter()
        .map(|t| {
            dec.iter()
                .map(|r| r.iter().zip(t).map(|(a, b)| a * b).sum::<f32>() / norm(r))
                .fold(f32::MIN, f32::max)
        })
        .collect();
    let mean = best.iter().sum::<f32>() / n as f32;
    let last = ev[ev.len() - 50..].iter().sum::<f64>() / 50.0;
    let acts = sae.encode(&data.batch(512)).unwrap();
    let l0 = acts.gt(0f64).unwrap().to_dtype(DType::F32).unwrap();
    let l0 = l0.sum_all().unwrap().to_scalar::<f32>().unwrap() / 512.0;
    eprintln!(
        "{:?}: mean max cosine {mean:.4}, explained variance {last:.4}, L0 {l0}",
        t.cfg.sparsity
    );
    (mean, last, l0)
}

#[test]
fn a_topk_sae_recovers_known_sparse_features() {
    let (cosine, ev, l0) = recovery(topk(3, 96, 1500));
    assert!(cosine > 0.9, "mean max cosine {cosine} (EV {ev})");
    assert!(ev > 0.9, "explained variance {ev}");
    assert!((l0 - 3.0).abs() < 0.05, "L0 {l0}");
}

#[test]
fn a_batchtopk_sae_recovers_known_sparse_features() {
    // Saved as JumpReLU with the learnt threshold: L0 is k on average, not on every row.
    let (cosine, ev, l0) = recovery(config(Sparsity::BatchTopK { k: 3.0 }, 96, 1500));
    assert!(cosine > 0.9, "mean max cosine {cosine} (EV {ev})");
    assert!(ev > 0.9, "explained variance {ev}");
    assert!((l0 - 3.0).abs() < 0.5, "L0 {l0}");
}

#[test]
fn a_jumprelu_sae_recovers_known_sparse_features() {
    let cfg = TrainConfig {
        penalty_warmup_steps: 300,
        ..config(
            Sparsity::JumpRelu {
                l0_coefficient: 0.1,
                bandwidth: 0.05,
                init_threshold: 0.01,
            },
            96,
            1500,
        )
    };
    let (cosine, ev, l0) = recovery(cfg);
    assert!(cosine > 0.9, "mean max cosine {cosine} (EV {ev})");
    assert!(ev > 0.9, "explained variance {ev}");
    assert!((l0 - 3.0).abs() < 0.5, "L0 {l0}");
}

#[test]
fn a_relu_l1_sae_recovers_known_sparse_features() {
    let cfg = TrainConfig {
        penalty_warmup_steps: 300,
        ..config(
            Sparsity::Relu {
                l1_coefficient: 0.4,
            },
            96,
            1500,
        )
    };
    let (cosine, ev, l0) = recovery(cfg);
    assert!(cosine > 0.9, "mean max cosine {cosine} (EV {ev})");
    assert!(ev > 0.9, "explained variance {ev}");
    // L1's shrinkage leaves a tail of small activations beside the 3 true ones (7.8 here;
    // a larger coefficient trades explained variance for it).
    assert!(l0 > 3.0 && l0 < 10.0, "L0 {l0}");
}

#[test]
fn training_is_deterministic_and_the_saved_folder_loads_to_the_same_sae() {
    let cfg = TrainConfig {
        normalize: true,
        ..topk(4, 40, 60)
    };
    let (a, _) = train(cfg.clone(), &mut Synthetic::new(20, 16, 4, 3), 64);
    let (b, _) = train(cfg, &mut Synthetic::new(20, 16, 4, 3), 64);
    for (x, y) in [
        (&a.params.w_enc, &b.params.w_enc),
        (&a.params.w_dec, &b.params.w_dec),
        (&a.params.b_enc, &b.params.b_enc),
        (&a.params.b_dec, &b.params.b_dec),
    ] {
        let d = (x - y).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }
    assert!(a.scale != 1.0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sae");
    let sae = a
        .to_sae("blocks.0.hook_resid_post".parse().unwrap(), None)
        .unwrap();
    sae.save(&path, "synthetic").unwrap();
    let loaded = Sae::load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.architecture, sae.architecture);
    let x = Synthetic::new(20, 16, 4, 3).batch(32);
    // The scale is folded in: the loaded SAE on x is the trainer's SAE on scale·x, over scale.
    let inner = Sae {
        w_enc: a.params.w_enc.t().unwrap().contiguous().unwrap(),
        w_dec: a.params.w_dec.clone(),
        b_enc: Some(a.params.b_enc.clone()),
        b_dec: a.params.b_dec.clone(),
        ..sae.clone()
    };
    let want = (inner.forward(&(&x * a.scale).unwrap()).unwrap() / a.scale).unwrap();
    let got = loaded.forward(&x).unwrap();
    let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
    let diff = diff.to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "{diff}");
    assert_eq!(
        loaded
            .encode(&x)
            .unwrap()
            .gt(0f64)
            .unwrap()
            .to_vec2::<u8>()
            .unwrap(),
        inner
            .encode(&(&x * a.scale).unwrap())
            .unwrap()
            .gt(0f64)
            .unwrap()
            .to_vec2::<u8>()
            .unwrap()
    );
    // Never over an existing folder.
    let err = sae.save(&path, "synthetic").unwrap_err().to_string();
    assert!(err.contains("exists"), "{err}");
}

/// A transcoder of each architecture SAELens saves (relu, jumprelu, batchtopk as jumprelu),
/// with and without a skip, trained with normalisation: the saved folder is a SAELens
/// transcoder whose output on x equals the trainer's on the scaled x, over the target's scale.
#[test]
fn transcoders_train_and_save_as_saelens_transcoders() {
    let mut data = Synthetic::new(20, 16, 3, 9);
    let batches: Vec<Tensor> = (0..41).map(|_| data.batch(64)).collect();
    // The target: a fixed linear map of the input to 12 dimensions, plus a relu'd part.
    let map = random(16, 12, 11, DType::F32);
    let target = |x: &Tensor| (x.matmul(&map).unwrap().relu().unwrap() * 3.0).unwrap();
    for (sparsity, skip, name) in [
        (RELU, false, "transcoder"),
        (JUMPRELU, true, "jumprelu_skip_transcoder"),
        (BATCHTOPK, false, "jumprelu_transcoder"),
    ] {
        let cfg = TrainConfig {
            normalize: true,
            skip,
            ..config(sparsity, 40, 40)
        };
        let mut t = Trainer::new(cfg, &batches[0], Some(&target(&batches[0])), DType::F32).unwrap();
        assert!(t.scale_out != t.scale && t.transcoder);
        let mut first = None;
        for b in &batches[1..] {
            let s = t.step(b, Some(&target(b))).unwrap();
            first.get_or_insert(s.mse);
            assert!(s.mse.is_finite());
        }
        let hook = "blocks.0.ln2.hook_normalized".parse().unwrap();
        let out = "blocks.0.hook_mlp_out".parse().unwrap();
        assert!(
            t.to_sae(hook, None).is_err(),
            "a transcoder without its output hook"
        );
        let sae = t.to_sae(hook, Some(out)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        sae.save(&dir.path().join("tc"), "synthetic").unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("tc/cfg.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["architecture"], name);
        let loaded = Sae::load(&dir.path().join("tc"), &Device::Cpu).unwrap();
        assert_eq!(loaded.d_out, 12);
        let x = &batches[0];
        let got = loaded.forward(x).unwrap();
        // The trainer's own map: encode the scaled x, decode, over the target's scale.
        let p = &t.params;
        let inner = Sae {
            w_enc: p.w_enc.t().unwrap().contiguous().unwrap(),
            w_dec: p.w_dec.clone(),
            b_dec: p.b_dec.clone(),
            w_skip: p.w_skip.clone(),
            ..sae.clone()
        };
        let want = (inner.forward(&(x * t.scale).unwrap()).unwrap() / t.scale_out).unwrap();
        let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
        let diff = diff.to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{name}: {diff}");
        let y = target(x);
        let err = (loaded.forward(x).unwrap() - &y).unwrap().sqr().unwrap();
        let mse = err.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64 / 64.0;
        assert!(
            mse < first.unwrap(),
            "{name}: MSE {mse}, from {}",
            first.unwrap()
        );
    }
}

#[test]
fn bad_settings_are_errors() {
    let x = random(8, 4, 0, DType::F32);
    let y = random(8, 3, 1, DType::F32);
    for (cfg, target, needle) in [
        (topk(0, 10, 10), None, "k"),
        (topk(11, 10, 10), None, "k"),
        (topk(2, 10, 0), None, "total_steps"),
        (
            TrainConfig {
                warmup_steps: 8,
                decay_steps: 8,
                ..topk(2, 10, 10)
            },
            None,
            "total_steps",
        ),
        (config(Sparsity::BatchTopK { k: 0.0 }, 10, 10), None, "k"),
        (
            config(
                Sparsity::JumpRelu {
                    l0_coefficient: 1.0,
                    bandwidth: 0.0,
                    init_threshold: 0.01,
                },
                10,
                10,
            ),
            None,
            "bandwidth",
        ),
        (
            config(
                Sparsity::Relu {
                    l1_coefficient: -1.0,
                },
                10,
                10,
            ),
            None,
            "l1_coefficient",
        ),
        (topk(2, 10, 10), Some(&y), "TopK transcoder"),
        (
            TrainConfig {
                skip: true,
                ..config(RELU, 10, 10)
            },
            None,
            "skip",
        ),
    ] {
        let err = Trainer::new(cfg, &x, target, DType::F32)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
}

/// Stops a run at step 15, saves, loads and continues: the same statistics and weights as the
/// run that never stopped. `target`: a transcoder's, as a function of the batch.
fn check_resume(cfg: TrainConfig, target: Option<&dyn Fn(&Tensor) -> Tensor>) -> usize {
    let batches: Vec<Tensor> = {
        let mut data = Synthetic::new(20, 16, 2, 5);
        (0..31).map(|_| data.batch(64)).collect()
    };
    let y = |b: &Tensor| target.map(|f| f(b));
    let y0 = y(&batches[0]);
    let mut whole = Trainer::new(cfg.clone(), &batches[0], y0.as_ref(), DType::F32).unwrap();
    let mut first = Trainer::new(cfg.clone(), &batches[0], y0.as_ref(), DType::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    for b in &batches[1..16] {
        whole.step(b, y(b).as_ref()).unwrap();
        first.step(b, y(b).as_ref()).unwrap();
    }
    first.save_checkpoint(&path).unwrap();
    drop(first);
    let mut resumed = Trainer::load_checkpoint(cfg.clone(), &path, &Device::Cpu).unwrap();
    assert_eq!(resumed.step, 15);
    let mut dead = 0;
    for b in &batches[16..] {
        let a = whole.step(b, y(b).as_ref()).unwrap();
        let r = resumed.step(b, y(b).as_ref()).unwrap();
        assert_eq!(a, r);
        dead = dead.max(a.dead);
    }
    let (w, r) = (&whole.params, &resumed.params);
    for (a, b) in [(&w.w_enc, &r.w_enc), (&w.w_dec, &r.w_dec)]
        .into_iter()
        .chain(w.threshold.as_ref().zip(r.threshold.as_ref()))
        .chain(w.w_skip.as_ref().zip(r.w_skip.as_ref()))
    {
        let d = (a - b).unwrap().abs().unwrap();
        assert_eq!(d.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
    assert_eq!(whole.topk_threshold, resumed.topk_threshold);
    // Another run's checkpoint is refused.
    let other = TrainConfig {
        d_sae: cfg.d_sae + 1,
        ..cfg
    };
    let err = Trainer::load_checkpoint(other, &path, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another run"), "{err}");
    dead
}

#[test]
fn a_checkpoint_resumes_to_the_same_weights() {
    let cfg = TrainConfig {
        dead_steps: 5, // some latents die, so the counters and AuxK matter
        normalize: true,
        ..topk(2, 40, 30)
    };
    let dead = check_resume(cfg.clone(), None);
    assert!(
        dead > 0,
        "no latent died: AuxK and the counters were not exercised"
    );
    check_resume(config(BATCHTOPK, 40, 30), None);
    // A skip transcoder with thresholds.
    let map = random(16, 12, 11, DType::F32);
    let target = move |x: &Tensor| x.matmul(&map).unwrap();
    let cfg = TrainConfig {
        skip: true,
        normalize: true,
        ..config(JUMPRELU, 40, 30)
    };
    check_resume(cfg, Some(&target));
}

/// The SAEs and the transcoder `train_sae` saved (tests/fixtures/saes/trained-*, see
/// tests/reference/make_trained_sae_reference.py) load in SAELens 6 as they are (BatchTopK as
/// JumpReLU, ReLU as standard, a JumpReLU skip transcoder), and SAELens's encode and output equal
/// ours; saving one again writes the same cfg.json.
#[test]
fn saelens_reads_trained_saes_as_we_do() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let r = candle_core::safetensors::load(
        root.join("tests/reference/trained_sae_ref.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for name in [
        "trained-topk",
        "trained-batchtopk",
        "trained-relu",
        "trained-jumprelu-skip-transcoder",
    ] {
        let folder = root.join("tests/fixtures/saes").join(name);
        let sae = Sae::load(&folder, &Device::Cpu).unwrap();
        let get = |k: &str| r[&format!("{name}.{k}")].clone();
        let acts = sae.encode(&get("x")).unwrap();
        let on = |t: &Tensor| t.gt(0f64).unwrap().to_vec2::<u8>().unwrap();
        assert_eq!(
            on(&acts),
            on(&get("acts")),
            "{name}: the same latents active"
        );
        for (ours, theirs) in [
            (acts.clone(), get("acts")),
            (sae.forward(&get("x")).unwrap(), get("out")),
        ] {
            let scale = theirs
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let diff = (ours - &theirs).unwrap().abs().unwrap().max_all().unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            assert!(
                diff <= 1e-5 * scale,
                "{name}: {diff} against a scale of {scale}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        sae.save(&dir.path().join("again"), "embedded-induction-2l")
            .unwrap();
        let read = |p: std::path::PathBuf| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        assert_eq!(
            read(dir.path().join("again/cfg.json")),
            read(folder.join("cfg.json")),
            "{name}"
        );
    }
}
