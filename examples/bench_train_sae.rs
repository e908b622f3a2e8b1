//! SAE training benchmark: hooklens's TopK trainer on the first STEPS × BATCH rows of a store's
//! hook (in a seeded order; the next 8192 rows held out): training tokens/s, held-out MSE and
//! explained variance, and the fraction of the matmul roofline reached. `--serve` is the hooklens
//! side of benches/run_train_sae_bench.sh instead (interleaved with SAELens 6 on the same rows,
//! benches/saelens_train_bench.py and benches/interleave.py): "train" answers one seeded run.
//!
//!     benches/run_train_sae_bench.sh STORE
//!     cargo run --release --example bench_train_sae -- --store STORE [--serve]

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use hooklens::sae::train::{BDecInit, Sparsity, TrainConfig, Trainer};
use hooklens::store::ActivationStore;
use rand::seq::SliceRandom;
use rand::SeedableRng;

mod common;

use common::matmul_gflops;

const HELD_OUT: usize = 8192;

#[derive(Parser)]
#[command(
    about = "Benchmark TopK SAE training (against SAELens on the same activations, with --serve)"
)]
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
    /// Answer benches/interleave.py's commands on stdin instead ("train": one run).
    #[arg(long)]
    serve: bool,
}

/// One seeded training run from a fresh SAE.
struct Run {
    secs: f64,
    tokens_per_s: f64,
    mse: f64,
    explained_variance: f64,
}

fn main() -> Result<()> {
    let a = Args::parse();
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
    // What a step computes: the dense encoder product, and the sparse products over k latents
    // (decode, and four in the backward).
    let flops = 2.0 * (a.batch * d_in * d_sae) as f64 + 10.0 * (a.batch * a.k * d_in) as f64;
    let run = |steps: usize| -> Result<Run> {
        let cfg = TrainConfig {
            sparsity: Sparsity::TopK { k: a.k },
            d_sae,
            lr: a.lr,
            total_steps: steps,
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
        for i in 1..steps {
            t.step(&batch(i)?, None)?;
        }
        let secs = start.elapsed().as_secs_f64();
        let sae = t.to_sae(hook.parse()?, None)?;
        let err = (sae.forward(&held)? - &held)?.sqr()?;
        let mse = err.sum_all()?.to_scalar::<f32>()? as f64 / HELD_OUT as f64;
        let centred = held.broadcast_sub(&held.mean_keepdim(0)?)?;
        let total = centred.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        Ok(Run {
            secs,
            tokens_per_s: ((steps - 1) * a.batch) as f64 / secs,
            mse,
            explained_variance: 1.0 - mse * HELD_OUT as f64 / total,
        })
    };
    if a.serve {
        run(2)?; // warm-up (allocations, thread pool)
        return common::serve(serde_json::json!({"d_sae": d_sae}), |words| match words {
            ["train"] => {
                let r = run(a.steps)?;
                let gflops = flops * (a.steps - 1) as f64 / r.secs / 1e9;
                Ok(
                    serde_json::json!({"seconds": r.secs, "tokens_per_s": r.tokens_per_s,
                    "mse": r.mse, "explained_variance": r.explained_variance,
                    "useful_gflops": gflops}),
                )
            }
            _ => anyhow::bail!("unknown command {words:?}: expected train or matmul"),
        });
    }
    let Run {
        secs,
        tokens_per_s,
        mse,
        explained_variance: ev,
    } = run(a.steps)?;
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
    Ok(())
}
