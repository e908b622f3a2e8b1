//! SAE training benchmark: hooklens's TopK trainer on the first STEPS × BATCH rows of a store's
//! hook (in a seeded order; the next 8192 rows held out), beside SAELens 6 on the same rows
//! (benches/saelens_train_bench.py): training tokens/s, held-out MSE and explained variance, and
//! the fraction of the matmul roofline reached.
//!
//!     benches/run_train_sae_bench.sh STORE
//!     cargo run --release --example bench_train_sae -- --store STORE [--reference saelens.json]

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use hooklens::sae::train::{BDecInit, Sparsity, TrainConfig, Trainer};
use hooklens::store::ActivationStore;
use rand::seq::SliceRandom;
use rand::SeedableRng;

mod common;

use common::{matmul_gflops, read_reference};

const HELD_OUT: usize = 8192;

#[derive(Parser)]
#[command(about = "Benchmark TopK SAE training against SAELens on the same activations")]
struct Args {
    #[arg(long)]
    store: std::path::PathBuf,
    /// Default: the store's first hook.
    #[arg(long)]
    hook: Option<String>,
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    #[arg(long, default_value_t = 40)]
    steps: usize,
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// Default: 8 × the hook's width.
    #[arg(long)]
    d_sae: Option<usize>,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// JSON written by benches/saelens_train_bench.py.
    #[arg(long)]
    reference: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let reference = read_reference(a.reference.as_deref())?;
    let store = ActivationStore::open(&a.store)?;
    let hook = a.hook.clone().unwrap_or(store.spec.hooks[0].name.clone());
    let need = a.steps * a.batch + HELD_OUT;
    let mut parts = vec![];
    let mut have = 0;
    for i in 0..store.spec.shards {
        let x = store.read(i, &hook)?.to_dtype(DType::F32)?;
        have += x.dim(0)?;
        parts.push(x.flatten_from(1)?);
        if have >= need {
            break;
        }
    }
    if have < need {
        bail!("the store holds {have} rows of {hook}; {need} are needed");
    }
    let x = Tensor::cat(&parts, 0)?.narrow(0, 0, need)?;
    let d_in = x.dim(1)?;
    let mut order: Vec<u32> = (0..(a.steps * a.batch) as u32).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(0));
    let train = x.index_select(&Tensor::new(order, &Device::Cpu)?, 0)?;
    let held = x.narrow(0, a.steps * a.batch, HELD_OUT)?;
    let d_sae = a.d_sae.unwrap_or(8 * d_in);
    let cfg = TrainConfig {
        sparsity: Sparsity::TopK { k: a.k },
        d_sae,
        lr: a.lr,
        total_steps: a.steps,
        warmup_steps: 0,
        decay_steps: 0,
        penalty_warmup_steps: 0,
        aux_coefficient: 1.0,
        dead_steps: 1000,
        b_dec_init: BDecInit::Zeros, // SAELens's default
        normalize: false,
        skip: false,
        seed: 0,
    };
    let batch = |i: usize| train.narrow(0, i * a.batch, a.batch);
    let mut t = Trainer::new(cfg, &batch(0)?, None, DType::F32)?;
    t.step(&batch(0)?, None)?; // warm-up, counted as a training step, as on the SAELens side
    let start = std::time::Instant::now();
    for i in 1..a.steps {
        t.step(&batch(i)?, None)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let tokens_per_s = ((a.steps - 1) * a.batch) as f64 / secs;
    let sae = t.to_sae(store.spec.hooks[0].name.parse()?, None)?;
    let err = (sae.forward(&held)? - &held)?.sqr()?;
    let mse = err.sum_all()?.to_scalar::<f32>()? as f64 / HELD_OUT as f64;
    let centred = held.broadcast_sub(&held.mean_keepdim(0)?)?;
    let ev = 1.0 - mse * HELD_OUT as f64 / centred.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    // What a step computes: the dense encoder product, and the sparse products over k latents
    // (decode, and four in the backward).
    let flops = 2.0 * (a.batch * d_in * d_sae) as f64 + 10.0 * (a.batch * a.k * d_in) as f64;
    let peak = matmul_gflops()?;
    let rate = flops * (a.steps - 1) as f64 / secs / 1e9;
    println!(
        "{hook}: d_in {d_in}, d_sae {d_sae}, k {}, batch {}, {} steps ({} build)",
        a.k,
        a.batch,
        a.steps,
        hooklens::matmul::backend()
    );
    println!(
        "hooklens: {tokens_per_s:.0} tokens/s, held-out MSE {mse:.4}, explained variance {ev:.4}; \
         {rate:.0} GFLOP/s of the {peak:.0} this build's matmul reaches ({:.0} % of the roofline)",
        100.0 * rate / peak
    );
    for variant in ["dense", "sparse"] {
        let r = &reference[variant];
        if let Some(e) = r["error"].as_str() {
            println!("SAELens ({variant} activations) failed: {e}");
        }
        if let Some(rate) = r["tokens_per_s"].as_f64() {
            println!(
                "SAELens ({variant} activations): {rate:.0} tokens/s, held-out MSE {:.4}, explained variance {:.4} (torch {}, {} threads): hooklens is {:.2}x",
                r["mse"].as_f64().unwrap_or(f64::NAN),
                r["explained_variance"].as_f64().unwrap_or(f64::NAN),
                r["torch"].as_str().unwrap_or("?"),
                r["threads"],
                tokens_per_s / rate
            );
        }
    }
    Ok(())
}
