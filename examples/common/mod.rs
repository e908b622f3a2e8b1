//! Timing helpers shared by the benchmark binaries.
#![allow(dead_code)] // each benchmark uses a subset of these helpers

use anyhow::Result;
use std::time::Instant;

/// Median wall time of `repeats` runs of `f`, after one warm-up run.
pub fn median_secs(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut ts = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    Ok(ts[ts.len() / 2])
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

/// The f32 matmul rate of this build's matmul (`hooklens::matmul`, candle's or OpenBLAS's) in
/// this run (1024 x 768 x 3072, median of 10), in GFLOP/s.
pub fn matmul_gflops() -> Result<f64> {
    use candle_core::{Device, Tensor};
    let x = Tensor::randn(0f32, 1.0, (1024, 768), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 1.0, (768, 3072), &Device::Cpu)?;
    let mm = median_secs(10, || {
        hooklens::matmul::matmul(&x, &w)
            .map(drop)
            .map_err(Into::into)
    })?;
    Ok(2.0 * 1024.0 * 768.0 * 3072.0 / mm / 1e9)
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
