//! How good an SAE is: reconstruction over a store or the model on the fly (L0, MSE, explained
//! variance, feature density), and the language-modelling loss with it spliced in against the
//! clean model and the hook zero-ablated (CE loss recovered).

use super::Sae;
use crate::analysis::metrics::next_token_losses;
use crate::error::{Error, Result};
use crate::hook_points::{NameFilter, SaeHook};
use crate::hooks::{Hooks, Splice};
use crate::intervention::Intervention;
use crate::model::HookedTransformer;
use crate::store::{Source, TokenFilter};
use candle_core::{DType, Tensor};

/// Features whose density is above this are counted dense.
pub const DENSE: f32 = 0.1;

/// Reconstruction of every token of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconstruction {
    pub tokens: usize,
    /// Mean number of active features per token.
    pub l0: f32,
    /// Mean squared error per element, (1 / tokens·d_out) Σ‖y − ŷ‖² (y = x for an SAE; a
    /// transcoder's target is its output hook's activation).
    pub mse: f32,
    /// 1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖², ȳ the mean over the source.
    pub explained_variance: f32,
    /// Per feature, the fraction of tokens where it is active [d_sae].
    pub density: Vec<f32>,
    /// Features never active, and active on more than [`DENSE`] of tokens.
    pub dead: usize,
    pub dense: usize,
}

/// The reconstruction metrics of `sae` over hook number `input` of `source` against hook
/// number `target` (the same for an SAE; a transcoder's output hook), in one pass that reads
/// every chunk once, `progress` told each chunk's tokens.
pub fn reconstruction(
    sae: &Sae,
    source: &Source,
    (input, target): (usize, usize),
    filter: &TokenFilter,
    progress: &mut dyn FnMut(usize),
) -> Result<Reconstruction> {
    let (mut tokens, mut active, mut err2, mut sum2) = (0usize, 0f64, 0f64, 0f64);
    let mut sum = vec![0f64; sae.d_out];
    let mut count = vec![0u64; sae.d_sae];
    for c in 0..source.chunks() {
        let mut chunk = source.chunk(c)?;
        if !filter.is_all() {
            let small = filter.norm_ok(&chunk[input])?;
            let keep: Vec<u32> = (0u32..)
                .zip(source.kept(c, filter)?.into_iter().zip(small))
                .filter_map(|(r, (k, s))| (k && s).then_some(r))
                .collect();
            let keep = Tensor::new(keep, chunk[input].device())?;
            for t in chunk.iter_mut() {
                *t = t.index_select(&keep, 0)?;
            }
        }
        let (x, y) = (&chunk[input], &chunk[target]); // [tokens, d_in], [tokens, d_out]
        if x.dim(1)? != sae.d_in || y.dim(1)? != sae.d_out {
            return Err(Error::ShapeMismatch {
                what: format!("the SAE's input (d_in) from {}", sae.path.display()),
                expected: vec![x.dim(0)?, sae.d_in, sae.d_out],
                got: vec![x.dim(0)?, x.dim(1)?, y.dim(1)?],
            });
        }
        let acts = sae.encode(x)?;
        let recon = match &sae.w_skip {
            Some(_) => sae.forward(x)?,
            None => sae.decode(&acts)?,
        };
        let on = acts.ne(0f32)?.to_dtype(DType::F32)?; // [tokens, d_sae]
        active += on.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        for (n, v) in count.iter_mut().zip(on.sum(0)?.to_vec1::<f32>()?) {
            *n += v as u64;
        }
        let total = |t: Tensor| -> Result<f64> {
            Ok(t.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
        };
        err2 += total((y - &recon)?.sqr()?)?;
        sum2 += total(y.sqr()?)?;
        for (s, v) in sum.iter_mut().zip(y.sum(0)?.to_vec1::<f32>()?) {
            *s += v as f64;
        }
        tokens += x.dim(0)?;
        progress(x.dim(0)?);
    }
    let n = tokens.max(1) as f64;
    // Σ‖y − ȳ‖² = Σ‖y‖² − N‖ȳ‖²
    let var = sum2 - sum.iter().map(|s| s * s).sum::<f64>() / n;
    let density: Vec<f32> = count.iter().map(|&c| (c as f64 / n) as f32).collect();
    Ok(Reconstruction {
        tokens,
        l0: (active / n) as f32,
        mse: (err2 / (n * sae.d_out as f64)) as f32,
        explained_variance: (1.0 - err2 / var.max(f64::MIN_POSITIVE)) as f32,
        dead: count.iter().filter(|&&c| c == 0).count(),
        dense: density.iter().filter(|&&d| d > DENSE).count(),
        density,
    })
}

/// Mean next-token loss (nats) of the clean model, with the SAE spliced in (its
/// reconstruction replacing the activation at its hook; a transcoder's output replacing its
/// output hook's), and with that activation zeroed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CeLoss {
    pub clean: f32,
    pub spliced: f32,
    pub zero_ablated: f32,
    /// (zero_ablated − spliced) / (zero_ablated − clean): 1 = the SAE loses nothing.
    pub recovered: f32,
}

/// [`CeLoss`] of `sae` on `model` over token ids [batch, pos] (contexts of a store, say).
/// The SAE stands in (and the zero ablation zeroes) only at the tokens `filter` keeps: elsewhere
/// the activation stays the clean one, as for an SAE trained without BOS, separators or first
/// positions.
pub fn ce_loss(
    model: &HookedTransformer,
    sae: &Sae,
    tokens: &Tensor,
    filter: &TokenFilter,
) -> Result<CeLoss> {
    sae.check_fits(model)?;
    let loss = |hooks: Hooks| -> Result<f32> {
        let logits = model.run_with_hooks(tokens, hooks)?;
        Ok(next_token_losses(&logits, tokens)?
            .mean_all()?
            .to_scalar::<f32>()?)
    };
    let clean = loss(Hooks::none())?;
    if filter.is_all() {
        let spliced = loss(Hooks::none().splice(Splice::new(sae))?)?;
        let zero_ablated = loss(Hooks::none().intervene(sae.writes(), Intervention::Zero))?;
        return Ok(CeLoss::of(clean, spliced, zero_ablated));
    }
    // At the tokens left out, the SAE's error is added back (so the output is the clean
    // activation there) and the zero ablation restores it. The SAE reads the clean activation
    // (nothing upstream changes), so its error is known before the run.
    let point = sae.writes();
    let run = model.run(
        tokens,
        Hooks::none().with_cache(NameFilter::Points(vec![point])),
    )?;
    let act = run.cache.get(point)?; // [batch, pos, ...]
    let input = match sae.hook == point {
        true => act.clone(),
        false => model
            .run(
                tokens,
                Hooks::none().with_cache(NameFilter::Points(vec![sae.hook])),
            )?
            .cache
            .get(sae.hook)?
            .clone(),
    };
    let (b, p) = tokens.dims2()?;
    let ids: Vec<u32> = tokens.flatten_all()?.to_vec1()?;
    let small = filter.norm_ok(&input.flatten_to(1)?)?; // [batch·pos]
    let left_out: Vec<f32> = (0..b * p)
        .map(|i| f32::from(!(filter.keeps(ids[i], (i % p) as u32) && small[i])))
        .collect();
    let shape: Vec<usize> = [b, p]
        .into_iter()
        .chain(std::iter::repeat_n(1, act.rank() - 2))
        .collect();
    let left_out = Tensor::from_vec(left_out, shape, act.device())?.to_dtype(act.dtype())?;
    let error = (act - sae.reconstruct(&input, act)?)?;
    let output = Splice::new(sae).point(SaeHook::Output)?;
    let spliced = Hooks::none()
        .splice(Splice::new(sae))?
        .intervene(output, Intervention::Add(error.broadcast_mul(&left_out)?));
    let spliced = loss(spliced)?;
    let kept_clean = act.broadcast_mul(&left_out)?;
    let zero_ablated = loss(Hooks::none().intervene(point, Intervention::Patch(kept_clean)))?;
    Ok(CeLoss::of(clean, spliced, zero_ablated))
}

impl CeLoss {
    fn of(clean: f32, spliced: f32, zero_ablated: f32) -> Self {
        Self {
            clean,
            spliced,
            zero_ablated,
            recovered: (zero_ablated - spliced) / (zero_ablated - clean),
        }
    }
}
