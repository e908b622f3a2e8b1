//! Timing helpers shared by the benchmark binaries.
#![allow(dead_code)] // each benchmark uses a subset of these helpers

use anyhow::Result;
use std::time::Instant;

/// Median wall time of `repeats` runs of `f`, after two warm-up runs.
pub fn median_secs(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    // Twice untimed: the first packs the weights, and both warm the caches.
    f()?;
    f()?;
    let mut ts = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    Ok(median(ts))
}

/// The median of `xs` (the upper one of an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Peak resident memory of this process so far (VmHWM), in MB.
pub fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The f32 rate of the forward's weight products in this run: `x @ W` through
/// `hooklens::model::linear`, from packed panels where they apply (AVX-512), else this build's
/// matmul (candle's or OpenBLAS's); 1024 x 768 x 3072, median of 10, in GFLOP/s.
pub fn matmul_gflops() -> Result<f64> {
    use candle_core::{Device, Tensor};
    use hooklens::model::{linear, Packed};
    let x = Tensor::randn(0f32, 1.0, (1024, 768), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 1.0, (768, 3072), &Device::Cpu)?;
    let packed = Packed::new(&w)?;
    let mm = median_secs(10, || {
        linear(&x, &w, packed.as_ref(), None)
            .map(drop)
            .map_err(Into::into)
    })?;
    Ok(2.0 * 1024.0 * 768.0 * 3072.0 / mm / 1e9)
}

/// The hooklens side of an interleaved benchmark (benches/interleave.py), once loaded: prints
/// a header line "@@ JSON" (this build's matmul backend and threads, and `header`'s fields), then
/// answers each command read from stdin, one a line, with one "@@ JSON" line: "matmul" with
/// `matmul_gflops`, any other with `answer` of its words.
pub fn serve(
    header: serde_json::Value,
    mut answer: impl FnMut(&[&str]) -> Result<serde_json::Value>,
) -> Result<()> {
    use std::io::BufRead;
    let mut head = serde_json::json!({
        "backend": hooklens::matmul::backend(),
        "threads": candle_core::utils::get_num_threads(),
    });
    if let (Some(h), serde_json::Value::Object(extra)) = (head.as_object_mut(), header) {
        h.extend(extra);
    }
    println!("@@ {head}");
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let out = match words[..] {
            ["matmul"] => serde_json::json!({"gflops": matmul_gflops()?}),
            _ => answer(&words)?,
        };
        println!("@@ {out}");
    }
    Ok(())
}

/// The JSON the Python side of a benchmark wrote, or `null` without `--reference`.
pub fn read_reference(path: Option<&std::path::Path>) -> Result<serde_json::Value> {
    use anyhow::Context;
    match path {
        Some(p) => Ok(serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?),
        None => Ok(serde_json::Value::Null),
    }
}

/// CPU time so far of candle's element-wise thread pool (threads `candle-bp-*`, started on
/// candle's first element-wise operation of 64 Ki elements or more), in ms; 0 if never started.
/// Its threads spin after each operation and take a core from the next matmul, so the forward
/// should not use it (`src/model/kernels.rs`). Linux only; 100 clock ticks a second assumed.
pub fn candle_pool_cpu_ms() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let mut ticks = 0u64;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("candle-bp") {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14 and stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse().ok())
            .collect();
        ticks += f.iter().sum::<u64>();
    }
    ticks as f64 * 10.0
}

/// The matmul FLOPs of a forward over `n` tokens: Q, K, V and O projections (grouped K/V where
/// the model has them), the MLP, attention scores and mixing over all n × n pairs (as
/// TransformerLens and transformers compute them) and the unembedding. The roofline is these at
/// the best matmul rate measured, over the forward's time.
pub fn forward_flops(c: &hooklens::ModelConfig, n: usize) -> f64 {
    let (d, t) = (c.d_model as f64, n as f64);
    let (q, kv) = (
        (c.n_heads * c.d_head) as f64,
        (c.n_key_value_heads * c.d_head) as f64,
    );
    let mlp = match (c.attn_only, c.gated_mlp) {
        (true, _) => 0.0,
        (false, gated) => 2.0 * d * c.d_mlp as f64 * if gated { 3.0 } else { 2.0 },
    };
    let layer = 2.0 * d * (2.0 * q + 2.0 * kv) + mlp + 4.0 * t * q;
    t * (c.n_layers as f64 * layer + 2.0 * d * c.d_vocab as f64)
}

/// One benchmark sweep, built and run: its name, the key of its reference values, the seconds
/// it took (jobs built and run), its values and the sweep itself.
pub struct TimedSweep<'m> {
    pub name: &'static str,
    pub key: &'static str,
    pub secs: f64,
    pub values: Vec<f32>,
    pub sweep: hooklens::analysis::sweep::Sweep<'m>,
}

/// The three sweeps the benchmarks time on one prompt pair: every head zero-ablated (loss, then
/// logit difference) and the `resid_pre` layer x position patching grid.
pub fn timed_sweeps<'m>(
    model: &'m hooklens::HookedTransformer,
    batch: &hooklens::data::PairBatch,
    tokens_per_pass: usize,
) -> Result<Vec<TimedSweep<'m>>> {
    use hooklens::analysis::ablation::{ablation_jobs, Ablation, Unit};
    use hooklens::analysis::patching::Grid;
    use hooklens::analysis::sweep::{Job, Metric, Sweep, Target};
    let heads = Unit::all_heads(model);
    let cells = Grid::ResidPre.cells(model, batch.clean.dim(1)?)?;
    let cases = [
        (
            "144-head zero-ablation, loss",
            "ablate_loss",
            Metric::Loss,
            false,
        ),
        (
            "144-head zero-ablation, logit diff",
            "ablate_logit_diff",
            Metric::LogitDiff,
            false,
        ),
        (
            "resid_pre patching grid, logit diff",
            "patch_resid_pre",
            Metric::LogitDiff,
            true,
        ),
    ];
    let mut out = vec![];
    for (name, key, metric, patch) in cases {
        let t = Instant::now();
        let (jobs, target, sources) = match patch {
            false => (
                ablation_jobs(&heads, Ablation::Zero, None)?,
                Target::new(batch, false)?,
                vec![],
            ),
            true => (
                cells
                    .iter()
                    .map(|c| Job::from_source(c.site(), 0))
                    .collect(),
                Target::new(batch, true)?,
                vec![batch.clean.clone()],
            ),
        };
        let sweep = Sweep::with_sources(model, target, sources, metric, jobs, tokens_per_pass)?;
        let values = sweep.compute()?;
        let secs = t.elapsed().as_secs_f64();
        out.push(TimedSweep {
            name,
            key,
            secs,
            values,
            sweep,
        });
    }
    Ok(out)
}
