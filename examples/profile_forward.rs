//! Where a forward pass spends its time, part by part, from timestamps taken at every hook point.
//!
//!     cargo run --example profile_forward -- --model DIR_OR_NAME [--tokens 512] [--repeats 5]
//!
//! A closure at each hook point records the time; the time since the previous hook point is
//! charged to the part that ends there (`hook_z` = q·kᵀ, scale, mask, softmax and pattern·V,
//! `hook_attn_out` = W_O, `mlp.hook_pre` = W_in, ...), summed over layers and repeats.
//! `attn.hook_result`, `attn.hook_attn_scores`, `attn.hook_pattern` and the norms' `hook_scale`
//! and `hook_normalized` get no closure: a hook on any of them changes the computation (per-head
//! outputs; attention in one piece instead of query blocks; the unfused softmax and norms), so
//! their time goes to the next hook point. The closures that remain change a little too: q, k
//! and v are copied out for theirs (a forward without hooks reads them in place from the one
//! product's output), and a gated MLP computes SiLU·up in two steps. "unembed" is the time from
//! the last hook point to the logits. Also prints a forward with no hooks against one whose cache filter matches nothing
//! (which should cost the same), a forward with the packed weights against one without them
//! (where weights are packed), the CPU time of candle's element-wise thread pool (which should
//! be zero), and an A/B of each product of layer 0 and the unembedding from packed weight
//! panels (what the forward does) against the general matmul, alternating.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use hooklens::{load_model, BlockHook, HookPoint, Hooks, LoadOptions, NameFilter};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;
mod common;

use common::{candle_pool_cpu_ms, median};

#[derive(Parser)]
#[command(about = "Time each part of a forward pass from timestamps at the hook points")]
struct Args {
    /// Model directory, GGUF file or name (as the hooklens CLI takes).
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 512)]
    tokens: usize,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

/// The part of the forward a hook point closes: its name without the layer.
fn part(p: &HookPoint) -> String {
    match p {
        HookPoint::Block(_, h) => format!("blocks.*.{}", h.name()),
        other => other.to_string(),
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    let (model, _, _) =
        load_model(Some(&a.model), &LoadOptions::default()).context("loading the model")?;
    let vocab = model.cfg.d_vocab as u64;
    let ids: Vec<u32> = (0..a.tokens)
        .map(|i| (i as u64 * 7919 % vocab) as u32)
        .collect();
    let tokens = Tensor::from_vec(ids, (1, a.tokens), &Device::Cpu)?;

    // The two forwards alternate, so that the machine's drift does not land on one of them.
    let pool_before = candle_pool_cpu_ms();
    let (mut plain, mut filtered) = (vec![], vec![]);
    for i in 0..=a.repeats {
        let t = Instant::now();
        model.forward(&tokens, &mut Hooks::none())?;
        let s = t.elapsed().as_secs_f64();
        let mut hooks = Hooks::none().with_cache(NameFilter::Points(vec![]));
        let t = Instant::now();
        model.forward(&tokens, &mut hooks)?;
        let f = t.elapsed().as_secs_f64();
        if i > 0 {
            plain.push(s);
            filtered.push(f);
        }
    }
    let pool_ms = candle_pool_cpu_ms() - pool_before;
    let (plain, filtered) = (median(plain), median(filtered));

    // The whole forward with the packed weights and without them, where weights are packed.
    let mut packed_ab_forward = None;
    if hooklens::model::Packed::available() {
        let mut general = model.clone();
        general.drop_packed_weights();
        let (mut with, mut without) = (vec![], vec![]);
        // Two forwards untimed: the first packs the panels, and both warm the caches.
        for i in 0..a.repeats + 2 {
            for (m, times) in [(&model, &mut with), (&general, &mut without)] {
                let t = Instant::now();
                m.forward(&tokens, &mut Hooks::none())?;
                if i > 1 {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        packed_ab_forward = Some((median(with), median(without)));
    }

    let stamps: RefCell<Vec<(Instant, String)>> = RefCell::new(vec![]);
    let mut totals: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut order: Vec<String> = vec![];
    let mut whole = 0.0;
    for _ in 0..=a.repeats {
        stamps.borrow_mut().clear();
        let mut hooks = Hooks::none();
        for p in model.hook_points() {
            let name = p.to_string();
            if matches!(
                p,
                HookPoint::Block(
                    _,
                    BlockHook::Result | BlockHook::AttnScores | BlockHook::Pattern
                )
            ) || name.ends_with("hook_scale")
                || name.ends_with("hook_normalized")
            {
                continue;
            }
            hooks = hooks.add(p, |_, p| {
                stamps.borrow_mut().push((Instant::now(), part(&p)));
                Ok(None)
            });
        }
        let start = Instant::now();
        model.forward(&tokens, &mut hooks)?;
        let end = Instant::now();
        whole += (end - start).as_secs_f64();
        let s = stamps.borrow();
        let mut prev = start;
        let ends = s.iter().cloned().chain([(end, "unembed".to_string())]);
        for (t, name) in ends {
            if !order.contains(&name) {
                order.push(name.clone());
            }
            let e = totals.entry(name).or_default();
            e.0 += (t - prev).as_secs_f64();
            e.1 += 1;
            prev = t;
        }
    }
    let products = packed_ab(&model, a.tokens, a.repeats)?;
    let runs = (a.repeats + 1) as f64;
    println!(
        "{} x {} tokens, threads {}: forward {plain:.3} s with no hooks, {filtered:.3} s with a cache filter matching nothing ({:+.1} %)\n",
        a.model,
        a.tokens,
        candle_core::utils::get_num_threads(),
        100.0 * (filtered / plain - 1.0)
    );
    match packed_ab_forward {
        Some((with, without)) => println!(
            "forward with the packed weights {with:.3} s, without them {without:.3} s ({:.2}x), alternating\n",
            without / with
        ),
        None => println!("no weights packed on this CPU (they are with AVX-512 or AVX2)\n"),
    }
    println!(
        "candle's element-wise thread pool: {pool_ms:.0} ms of CPU in those {} forwards (should be 0)\n",
        2 * (a.repeats + 1)
    );
    println!(
        "layer 0's products and the unembedding on {} tokens:",
        a.tokens
    );
    println!(
        "{:<10} {:>12} {:>15} {:>8}",
        "product", "packed ms", "general ms", "ratio"
    );
    for (name, packed, general) in products {
        let (p, g) = (1e3 * packed, 1e3 * general);
        println!("{name:<10} {p:>12.2} {g:>15.2} {:>7.2}x", g / p);
    }
    println!();
    println!(
        "{:<34} {:>9} {:>7}",
        "part (ends at hook point)", "ms", "share"
    );
    for name in &order {
        let (secs, _) = totals[name];
        println!(
            "{name:<34} {:>9.1} {:>6.1}%",
            1e3 * secs / runs,
            100.0 * secs / whole
        );
    }
    println!(
        "{:<34} {:>9.1}",
        "total (with timestamp hooks)",
        1e3 * whole / runs
    );
    Ok(())
}

/// Each product of layer 0 (Q/K/V, W_O, W_in, W_out) and the unembedding on `tokens` rows:
/// median seconds from packed panels (the forward's way) and through the general matmul,
/// alternating.
fn packed_ab(
    model: &hooklens::HookedTransformer,
    tokens: usize,
    repeats: usize,
) -> Result<Vec<(&'static str, f64, f64)>> {
    use hooklens::model::{linear, Packed};
    let block = model.block(0)?;
    let mut weights = vec![("Q, K, V", &block.attn.w_qkv), ("W_O", &block.attn.w_o)];
    if let Some(mlp) = &block.mlp {
        weights.extend([("W_in", &mlp.w_in), ("W_out", &mlp.w_out)]);
    }
    weights.push(("unembed", &model.w_u));
    let mut rows = vec![];
    for (name, w) in weights {
        let Some(packed) = Packed::new(w)? else {
            continue; // neither AVX-512 nor AVX2, or not f32 on the CPU
        };
        let x = Tensor::randn(0f32, 1.0, (tokens, w.dim(0)?), &Device::Cpu)?;
        linear(&x, w, Some(&packed), None)?; // the first time, the general matmul; then packed
        let (mut from_panels, mut general) = (vec![], vec![]);
        for i in 0..=repeats.max(5) {
            let t = Instant::now();
            linear(&x, w, Some(&packed), None)?;
            let a = t.elapsed().as_secs_f64();
            let t = Instant::now();
            linear(&x, w, None, None)?;
            let b = t.elapsed().as_secs_f64();
            if i > 0 {
                from_panels.push(a);
                general.push(b);
            }
        }
        rows.push((name, median(from_panels), median(general)));
    }
    Ok(rows)
}
