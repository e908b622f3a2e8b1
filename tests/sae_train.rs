//! TopK SAE training (`hooklens::sae::train`): the hand-written sparse gradients against finite
//! differences of a dense re-implementation of the loss, recovery of known sparse features,
//! determinism, and the saved SAELens folder.

use candle_core::{DType, Device, Tensor};
use hooklens::sae::train::{BDecInit, Params, TopKConfig, TopKTrainer};
use hooklens::sae::Sae;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn config(d_sae: usize, k: usize, steps: usize) -> TopKConfig {
    TopKConfig {
        d_sae,
        k,
        lr: 4e-3,
        total_steps: steps,
        warmup_steps: steps / 20,
        decay_steps: steps / 5,
        aux_coefficient: 1.0,
        dead_steps: 50,
        b_dec_init: BDecInit::GeometricMedian,
        normalize: false,
        seed: 0,
    }
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
/// latent, the top k by sorting, x̂ = acts·W_dec + b_dec; AuxK over the `dead` latents against
/// the residual `e` (held constant, as SAELens detaches it).
/// Returns the loss and the residuals x − x̂; `e` defaults to those.
fn dense_loss(
    p: &Params,
    x: &Tensor,
    k: usize,
    dead: &[bool],
    e: Option<&[Vec<f64>]>,
) -> (f64, Vec<Vec<f64>>) {
    let x: Vec<Vec<f64>> = x.to_vec2().unwrap();
    let w_enc: Vec<Vec<f64>> = p.w_enc.to_vec2().unwrap();
    let w_dec: Vec<Vec<f64>> = p.w_dec.to_vec2().unwrap();
    let b_enc: Vec<f64> = p.b_enc.to_vec1().unwrap();
    let b_dec: Vec<f64> = p.b_dec.to_vec1().unwrap();
    let (d_in, d_sae) = (b_dec.len(), b_enc.len());
    let n_dead = dead.iter().filter(|&&d| d).count();
    let decode = |acts: &[(usize, f64)]| -> Vec<f64> {
        (0..d_in)
            .map(|c| acts.iter().map(|&(f, a)| a * w_dec[f][c]).sum::<f64>())
            .collect()
    };
    let top = |pre: &[f64], n: usize, keep: &dyn Fn(usize) -> bool| -> Vec<(usize, f64)> {
        let mut order: Vec<usize> = (0..d_sae).filter(|&f| keep(f)).collect();
        order.sort_by(|&a, &b| pre[b].total_cmp(&pre[a]));
        order.truncate(n);
        order.into_iter().map(|f| (f, pre[f])).collect()
    };
    let (mut mse, mut aux, mut residuals) = (0.0, 0.0, vec![]);
    for (r, row) in x.iter().enumerate() {
        let sae_in: Vec<f64> = row.iter().zip(&b_dec).map(|(a, b)| a - b).collect();
        let pre: Vec<f64> = (0..d_sae)
            .map(|f| b_enc[f] + (0..d_in).map(|c| sae_in[c] * w_enc[f][c]).sum::<f64>())
            .collect();
        let acts: Vec<(usize, f64)> = top(&pre, k, &|_| true)
            .into_iter()
            .map(|(f, a)| (f, a.max(0.0)))
            .collect();
        let x_hat = decode(&acts);
        let res: Vec<f64> = (0..d_in).map(|c| row[c] - x_hat[c] - b_dec[c]).collect();
        mse += res.iter().map(|v| v * v).sum::<f64>();
        let e_row = e.map_or(&res, |e| &e[r]);
        if n_dead > 0 {
            let k_aux = (d_in / 2).min(n_dead);
            let e_hat = decode(&top(&pre, k_aux, &|f| dead[f]));
            aux += (0..d_in)
                .map(|c| (e_hat[c] - e_row[c]).powi(2))
                .sum::<f64>();
        }
        residuals.push(res);
    }
    let rows = x.len() as f64;
    let weight = (n_dead as f64 / (d_in / 2) as f64).min(1.0); // aux_coefficient 1
    (mse / rows + weight * aux / rows, residuals)
}

fn with_entry(p: &Params, which: usize, i: usize, delta: f64) -> Params {
    let mut q = p.clone();
    let t = match which {
        0 => &mut q.w_enc,
        1 => &mut q.b_enc,
        2 => &mut q.w_dec,
        _ => &mut q.b_dec,
    };
    let shape = t.dims().to_vec();
    let mut v: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
    v[i] += delta;
    *t = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
    q
}

#[test]
fn gradients_equal_finite_differences_of_the_dense_loss() {
    let (d_in, d_sae, k, rows) = (6, 14, 3, 7);
    let x = random(rows, d_in, 1, DType::F64);
    let mut t = TopKTrainer::new(config(d_sae, k, 10), &x, DType::F64).unwrap();
    // Move off the initialisation: biases and a decoder that is not the encoder.
    t.params.b_enc = (random(1, d_sae, 2, DType::F64).squeeze(0).unwrap() * 0.3).unwrap();
    t.params.w_dec = random(d_sae, d_in, 3, DType::F64);
    for dead in [vec![false; d_sae], (0..d_sae).map(|f| f % 3 == 0).collect()] {
        let (stats, g, _) = t.loss_and_grads(&x, &dead).unwrap();
        let p = &t.params;
        // The residual at this point, held constant as the trainer holds it.
        let (base, e) = dense_loss(p, &x, k, &dead, None);
        assert!(
            (base - (stats.mse + stats.aux)).abs() < 1e-4 * base,
            "loss {} + {} against the dense {base}",
            stats.mse,
            stats.aux
        );
        let (mut checked, eps) = (0, 1e-6);
        for (which, grad) in [&g.w_enc, &g.b_enc, &g.w_dec, &g.b_dec]
            .into_iter()
            .enumerate()
        {
            let grad: Vec<f64> = grad.flatten_all().unwrap().to_vec1().unwrap();
            for (i, &gi) in grad.iter().enumerate() {
                let up = dense_loss(&with_entry(p, which, i, eps), &x, k, &dead, Some(&e)).0;
                let down = dense_loss(&with_entry(p, which, i, -eps), &x, k, &dead, Some(&e)).0;
                let fd = (up - down) / (2.0 * eps);
                assert!(
                    (fd - gi).abs() <= 1e-5 * (1.0 + fd.abs()),
                    "parameter {which} entry {i}: gradient {gi}, finite difference {fd} (dead {:?})",
                    dead.iter().filter(|&&d| d).count()
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 2 * d_sae * d_in + d_sae + d_in);
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

fn train(cfg: TopKConfig, data: &mut Synthetic, batch: usize) -> (TopKTrainer, Vec<f64>) {
    let first = data.batch(batch);
    let mut t = TopKTrainer::new(cfg, &first, DType::F32).unwrap();
    let mut ev = vec![];
    for _ in 0..t.cfg.total_steps {
        ev.push(t.step(&data.batch(batch)).unwrap().explained_variance);
    }
    (t, ev)
}

#[test]
fn a_topk_sae_recovers_known_sparse_features() {
    let (n, d, active) = (48, 32, 3);
    let mut data = Synthetic::new(n, d, active, 7);
    // 300 rows: the sparse products run in chunks of 256, so two of them.
    let (t, ev) = train(config(2 * n, active, 1500), &mut data, 300);
    let sae = t
        .to_sae("blocks.0.hook_resid_post".parse().unwrap())
        .unwrap();
    // Each true direction's best cosine with a decoder row.
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
    assert!(
        mean > 0.9,
        "mean max cosine {mean} (explained variance at the end {last})"
    );
    assert!(last > 0.9, "explained variance {last}");
    // The expected L0: k, on fresh data.
    let acts = sae.encode(&data.batch(512)).unwrap();
    let l0 = acts
        .gt(0f64)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap();
    let l0 = l0.to_scalar::<f32>().unwrap() / 512.0;
    eprintln!("mean max cosine {mean:.4}, explained variance {last:.4}, L0 {l0}");
    assert!((l0 - active as f32).abs() < 0.05, "L0 {l0}");
}

#[test]
fn training_is_deterministic_and_the_saved_folder_loads_to_the_same_sae() {
    let cfg = TopKConfig {
        normalize: true,
        ..config(40, 4, 60)
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
        .to_sae("blocks.0.hook_resid_post".parse().unwrap())
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

#[test]
fn bad_settings_are_errors() {
    let x = random(8, 4, 0, DType::F32);
    for (cfg, needle) in [
        (config(10, 0, 10), "k"),
        (config(10, 11, 10), "k"),
        (config(10, 2, 0), "total_steps"),
        (
            TopKConfig {
                warmup_steps: 8,
                decay_steps: 8,
                ..config(10, 2, 10)
            },
            "total_steps",
        ),
    ] {
        let err = TopKTrainer::new(cfg, &x, DType::F32)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn a_checkpoint_resumes_to_the_same_weights() {
    let cfg = TopKConfig {
        dead_steps: 5, // some latents die, so the counters and AuxK matter
        normalize: true,
        ..config(40, 2, 30)
    };
    let batches: Vec<Tensor> = {
        let mut data = Synthetic::new(20, 16, 2, 5);
        (0..31).map(|_| data.batch(64)).collect()
    };
    let mut whole = TopKTrainer::new(cfg.clone(), &batches[0], DType::F32).unwrap();
    let mut first = TopKTrainer::new(cfg.clone(), &batches[0], DType::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    for b in &batches[1..16] {
        whole.step(b).unwrap();
        first.step(b).unwrap();
    }
    first.save_checkpoint(&path).unwrap();
    drop(first);
    let mut resumed = TopKTrainer::load_checkpoint(cfg.clone(), &path, &Device::Cpu).unwrap();
    assert_eq!(resumed.step, 15);
    let mut dead = 0;
    for b in &batches[16..] {
        let a = whole.step(b).unwrap();
        let r = resumed.step(b).unwrap();
        assert_eq!(a, r);
        dead = dead.max(a.dead);
    }
    assert!(
        dead > 0,
        "no latent died: AuxK and the counters were not exercised"
    );
    let d = (&whole.params.w_enc - &resumed.params.w_enc)
        .unwrap()
        .abs()
        .unwrap();
    assert_eq!(d.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    // Another run's checkpoint is refused.
    let err = TopKTrainer::load_checkpoint(config(41, 2, 30), &path, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another run"), "{err}");
}

/// The SAE `train_sae` saved (tests/fixtures/saes/trained-topk, see
/// tests/reference/make_trained_sae_reference.py) loads in SAELens 6 as it is, and SAELens's
/// encode and decode equal ours; saving it again writes the same cfg.json.
#[test]
fn saelens_reads_a_trained_sae_as_we_do() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let folder = root.join("tests/fixtures/saes/trained-topk");
    let sae = Sae::load(&folder, &Device::Cpu).unwrap();
    let r = candle_core::safetensors::load(
        root.join("tests/reference/trained_sae_ref.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let acts = sae.encode(&r["x"]).unwrap();
    let on = |t: &Tensor| t.gt(0f64).unwrap().to_vec2::<u8>().unwrap();
    assert_eq!(on(&acts), on(&r["acts"]), "the same latents active");
    for (ours, theirs) in [
        (acts.clone(), &r["acts"]),
        (sae.decode(&acts).unwrap(), &r["recons"]),
    ] {
        let scale = theirs
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap();
        let diff = diff.to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-5 * scale, "{diff} against a scale of {scale}");
    }
    let dir = tempfile::tempdir().unwrap();
    sae.save(&dir.path().join("again"), "embedded-induction-2l")
        .unwrap();
    let read = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    assert_eq!(
        read(dir.path().join("again/cfg.json")),
        read(folder.join("cfg.json"))
    );
}
