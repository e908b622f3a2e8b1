//! Per-hook statistics of a whole source in one pass: the mean activation (for mean ablation
//! over a distribution) and the distribution of norms.

use super::reader::Source;
use crate::error::Result;

/// One hook's statistics over every token of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct HookStats {
    pub hook: String,
    pub tokens: usize,
    /// The mean activation [width].
    pub mean: Vec<f32>,
    /// Mean, root-mean-square and largest L2 norm of one token's activation.
    pub mean_norm: f32,
    pub rms_norm: f32,
    pub max_norm: f32,
}

/// The statistics of every hook of `source` (named `names`, in the source's order), reading
/// each chunk once; `progress` gets each chunk's token count.
pub fn hook_stats(
    source: &Source,
    names: &[String],
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<HookStats>> {
    struct Acc {
        sum: Vec<f64>,
        norm: f64,
        norm2: f64,
        max: f32,
        n: usize,
    }
    let mut accs: Vec<Option<Acc>> = names.iter().map(|_| None).collect();
    for c in 0..source.chunks() {
        let chunk = source.chunk(c)?;
        let mut rows_done = 0;
        for (acc, x) in accs.iter_mut().zip(chunk) {
            let (rows, width) = x.dims2()?;
            let a = acc.get_or_insert_with(|| Acc {
                sum: vec![0.0; width],
                norm: 0.0,
                norm2: 0.0,
                max: 0.0,
                n: 0,
            });
            for row in x.to_vec2::<f32>()? {
                let mut sq = 0f64;
                for (s, &v) in a.sum.iter_mut().zip(&row) {
                    *s += v as f64;
                    sq += (v as f64) * (v as f64);
                }
                a.norm += sq.sqrt();
                a.norm2 += sq;
                a.max = a.max.max(sq.sqrt() as f32);
            }
            a.n += rows;
            rows_done = rows;
        }
        progress(rows_done);
    }
    Ok(names
        .iter()
        .zip(accs)
        .map(|(name, a)| {
            let a = a.unwrap_or(Acc {
                sum: vec![],
                norm: 0.0,
                norm2: 0.0,
                max: 0.0,
                n: 0,
            });
            let n = a.n.max(1) as f64;
            HookStats {
                hook: name.clone(),
                tokens: a.n,
                mean: a.sum.iter().map(|s| (s / n) as f32).collect(),
                mean_norm: (a.norm / n) as f32,
                rms_norm: (a.norm2 / n).sqrt() as f32,
                max_norm: a.max,
            }
        })
        .collect())
}
