//! GPU benchmark: hooklens on CUDA against hooklens on the CPU of the same machine and against
//! transformers on the same GPU, on the same random GPT-2-small weights.
//!
//!     python3 benches/hf_cuda_bench.py DIR hf.json     # writes the model, times transformers
//!     cargo run --features cuda --example bench_cuda -- --model DIR --reference hf.json
//!
//! Prints the forward at several batch × length shapes (CPU f32, GPU f32 and bf16, transformers's
//! GPU times beside them), run_with_cache on the GPU, and the sweeps of `bench_sweeps` (144-head
//! zero-ablation, resid_pre patching grid) on the CPU and the GPU with their largest difference.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use hooklens::data::PairBatch;
use hooklens::{load_model, HookedTransformer, Hooks, LoadOptions, NameFilter};
mod common;

use common::{median_secs, read_reference, timed_sweeps};

#[derive(Parser)]
#[command(about = "Benchmark hooklens on CUDA against the CPU and transformers")]
struct Args {
    /// GPT-2-shaped model directory (benches/hf_cuda_bench.py writes a random GPT-2 small).
    #[arg(long)]
    model: String,
    /// JSON written by benches/hf_cuda_bench.py.
    #[arg(long)]
    reference: Option<std::path::PathBuf>,
    #[arg(long, default_value = "1x128,1x512,1x1024,8x1024")]
    shapes: String,
    #[arg(long, default_value_t = 10)]
    repeats: usize,
}

fn load(dir: &str, device: &Device, dtype: DType) -> Result<HookedTransformer> {
    let opts = LoadOptions {
        device: device.clone(),
        dtype,
        ..Default::default()
    };
    Ok(load_model(Some(dir), &opts)
        .context("loading the benchmark model")?
        .0)
}

/// Median seconds of `f`, waiting for the device's queue after each run.
fn timed(m: &HookedTransformer, repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    median_secs(repeats, || {
        f()?;
        m.device().synchronize()?;
        Ok(())
    })
}

fn ids(b: usize, n: usize, device: &Device) -> Result<Tensor> {
    let ids: Vec<u32> = (0..b * n)
        .map(|i| ((i % n) as u64 * 7919 % 50257) as u32)
        .collect();
    Ok(Tensor::from_vec(ids, (b, n), device)?)
}

/// The three sweeps of examples/bench_sweeps.rs on 64 tokens: (name, seconds, values).
fn sweeps(m: &HookedTransformer) -> Result<Vec<(&'static str, f64, Vec<f32>)>> {
    let p = 64;
    let clean: Vec<u32> = (0..p as u64).map(|i| (i * 7919 % 50257) as u32).collect();
    let mut corrupted = clean.clone();
    corrupted[p / 2] = 1000;
    let dev = m.device();
    let batch = PairBatch {
        clean: Tensor::new(clean.as_slice(), dev)?.unsqueeze(0)?,
        corrupted: Tensor::new(corrupted.as_slice(), dev)?.unsqueeze(0)?,
        lengths: vec![p],
        answers: vec![262],
        wrong: vec![286],
    };
    let timed = timed_sweeps(m, &batch, 4096)?;
    Ok(timed
        .into_iter()
        .map(|s| (s.name, s.secs, s.values))
        .collect())
}

fn main() -> Result<()> {
    let a = Args::parse();
    let reference = Some(read_reference(a.reference.as_deref())?).filter(|r| !r.is_null());
    let gpu = Device::new_cuda(0).context("a CUDA device (build with --features cuda)")?;
    let cpu = load(&a.model, &Device::Cpu, DType::F32)?;
    let on_gpu = load(&a.model, &gpu, DType::F32)?;
    let on_gpu_bf16 = load(&a.model, &gpu, DType::BF16)?;
    println!(
        "GPT-2 small, random weights; CPU threads {}; transformers on {}",
        candle_core::utils::get_num_threads(),
        reference
            .as_ref()
            .map_or("-".into(), |r| r["device"].to_string())
    );
    let hf = |dtype: &str, b: usize, n: usize| -> f64 {
        let runs = reference
            .as_ref()
            .and_then(|r| r["runs"].as_array().cloned());
        runs.unwrap_or_default()
            .iter()
            .find(|r| r["dtype"] == dtype && r["batch"] == b && r["tokens"] == n)
            .and_then(|r| r["forward_s"].as_f64())
            .unwrap_or(f64::NAN)
    };
    println!(
        "{:>8} | {:>9} | {:>9} {:>10} {:>7} {:>12} | {:>9} {:>10} {:>7}",
        "shape",
        "CPU f32",
        "GPU f32",
        "HF f32",
        "ratio",
        "GPU cache",
        "GPU bf16",
        "HF bf16",
        "ratio"
    );
    for shape in a.shapes.split(',') {
        let (b, n) = shape.split_once('x').context("shapes are BATCHxTOKENS")?;
        let (b, n): (usize, usize) = (b.parse()?, n.parse()?);
        let time = |m: &HookedTransformer, repeats| -> Result<f64> {
            let t = ids(b, n, m.device())?;
            timed(m, repeats, || {
                Ok(m.forward(&t, &mut Hooks::none()).map(drop)?)
            })
        };
        let c = time(&cpu, 3)?;
        let g = time(&on_gpu, a.repeats)?;
        let g16 = time(&on_gpu_bf16, a.repeats)?;
        let t = ids(b, n, &gpu)?;
        let cache = timed(&on_gpu, a.repeats, || {
            Ok(on_gpu.run_with_cache(&t, NameFilter::All).map(drop)?)
        })?;
        let (h, h16) = (hf("float32", b, n), hf("bfloat16", b, n));
        println!(
            "{shape:>8} | {c:>8.4}s | {g:>8.4}s {h:>9.4}s {:>6.2}x {cache:>11.4}s | {g16:>8.4}s {h16:>9.4}s {:>6.2}x",
            h / g,
            h16 / g16
        );
    }
    println!(
        "\n{:<38} {:>9} {:>9} {:>8} {:>10}",
        "sweep (64 tokens)", "CPU", "GPU", "speed-up", "max |diff|"
    );
    for ((name, c, want), (_, g, got)) in sweeps(&cpu)?.into_iter().zip(sweeps(&on_gpu)?) {
        let diff = want
            .iter()
            .zip(&got)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        println!(
            "{name:<38} {c:>8.3}s {g:>8.3}s {:>7.1}x {diff:>10.1e}",
            c / g
        );
    }
    Ok(())
}
