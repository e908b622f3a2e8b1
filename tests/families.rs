//! Parity of the model families (GPT-NeoX, Gemma 2, Gemma 3, Qwen2, Qwen3, Mistral) with
//! TransformerLens 4.3 and transformers at every hook point the reference exposes, unprocessed
//! and processed, on small random checkpoints (tests/reference/make_families_reference.py).

mod common;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use common::*;
use hooklens::{load_model, HookedTransformer, LoadOptions, NameFilter, Processing};

const TOL: f32 = 1e-4;

fn load(family: &str, processing: Processing) -> HookedTransformer {
    let dir = root().join("tests/fixtures").join(family);
    let opts = LoadOptions {
        processing,
        ..Default::default()
    };
    load_model(Some(dir.to_str().unwrap()), &opts).unwrap().0
}

/// The reference's activation in our layout. The bridge shows QK-norm activations as
/// [head, pos, ..] (after Hugging Face's transpose); hooklens keeps every per-head hook
/// [pos, head, ..] like hook_q. Masked attention scores are -inf here and the most negative
/// float there: both become -1e4.
fn ours_vs_reference(hook: &str, got: &Tensor, want: &Tensor) -> f32 {
    let qk_norm = [".q_norm.", ".k_norm.", "_normed"];
    let want = match qk_norm.iter().any(|s| hook.contains(s)) {
        true => want.transpose(0, 1).unwrap(),
        false => want.clone(),
    };
    let (got, want) = match hook.ends_with("hook_attn_scores") {
        true => (
            got.clamp(-1e4f32, f32::MAX).unwrap(),
            want.clamp(-1e4f32, f32::MAX).unwrap(),
        ),
        false => (got.clone(), want),
    };
    // Relative to the activation's scale: residual streams of random models grow large.
    max_abs_diff(&got, &want) / max_abs(&want).max(1.0)
}

fn check(family: &str) {
    let r = candle_core::safetensors::load(
        root().join(format!("tests/reference/{family}_ref.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    for (mode, processing) in [
        ("unprocessed", Processing::none()),
        ("processed", Processing::default()),
    ] {
        let model = load(family, processing);
        let mut worst_lp = 0f32;
        let mut worst = (0f32, String::new());
        let mut compared = 0;
        for i in 0.. {
            let Some(tokens) = r.get(&format!("p{i}.tokens")) else {
                break;
            };
            let tokens = tokens.to_dtype(DType::U32).unwrap().unsqueeze(0).unwrap();
            let (logits, cache) = model.run_with_cache(&tokens, NameFilter::All).unwrap();
            let lp = candle_nn::ops::log_softmax(&logits.i(0).unwrap(), D::Minus1).unwrap();
            worst_lp = worst_lp.max(max_abs_diff(&lp, &r[&format!("{mode}.p{i}.logprobs")]));
            if mode == "unprocessed" {
                worst_lp = worst_lp.max(max_abs_diff(&lp, &r[&format!("hf.p{i}.logprobs")]));
            }
            let key = format!("{mode}.p{i}.");
            for (name, want) in r
                .iter()
                .filter(|(k, _)| k.starts_with(&key) && !k.ends_with("logprobs"))
            {
                let hook = &name[key.len()..];
                let got = cache
                    .get_by_name(hook)
                    .unwrap_or_else(|e| panic!("{family}: no {hook} in our cache: {e}"))
                    .i(0)
                    .unwrap();
                let d = ours_vs_reference(hook, &got, want);
                if d > worst.0 || worst.1.is_empty() {
                    worst = (d.max(worst.0), hook.to_string());
                }
                compared += 1;
            }
        }
        eprintln!(
            "{family} {mode}: {compared} activations compared, worst log-prob diff {worst_lp:.2e}, \
             worst relative activation diff {:.2e} at {}",
            worst.0, worst.1
        );
        assert!(
            compared >= 100,
            "{family}: only {compared} activations compared"
        );
        assert!(
            worst_lp < TOL,
            "{family} {mode}: log-probs differ by {worst_lp}"
        );
        assert!(
            worst.0 < TOL,
            "{family} {mode}: {} differs by {}",
            worst.1,
            worst.0
        );
    }
}

#[test]
fn gpt_neox_matches_transformerlens() {
    check("neox");
}

#[test]
fn gemma2_matches_transformerlens() {
    check("gemma2");
}

/// Local and global layers with their own rotary bases (50 and 1000), linear rope scaling on
/// the global one, QK-norm with (1 + w), multi-query attention.
#[test]
fn gemma3_matches_transformerlens() {
    check("gemma3");
}

#[test]
fn qwen2_matches_transformerlens() {
    check("qwen2");
}

#[test]
fn qwen3_matches_transformerlens() {
    check("qwen3");
}

#[test]
fn mistral_matches_transformerlens() {
    check("mistral");
}

/// The sinusoidal table against the formula as the PyTorch tutorial writes it (frequencies
/// through exp and log rather than a power): sin on even dimensions, cos on odd, base 10000.
#[test]
fn sinusoidal_table_matches_the_formula() {
    let (n, d) = (50, 16);
    let table = hooklens::model::sinusoidal_table(n, d, &Device::Cpu).unwrap();
    let got: Vec<Vec<f32>> = table.to_vec2().unwrap();
    for (p, row) in got.iter().enumerate() {
        for (i, &x) in row.iter().enumerate() {
            let freq = (-((i - i % 2) as f64) * 10000f64.ln() / d as f64).exp();
            let want = match i % 2 {
                0 => (p as f64 * freq).sin(),
                _ => (p as f64 * freq).cos(),
            };
            assert!((x as f64 - want).abs() < 1e-6, "({p}, {i}): {x} vs {want}");
        }
    }
}

/// A one-layer, two-head attention-only model with sinusoidal positions and no norms, run
/// against the same forward written out in f64 loops.
#[test]
fn sinusoidal_forward_matches_a_hand_computed_one() {
    use hooklens::config::{ModelConfig, Normalization, Positional};
    let (d, h, dh, v, n_ctx) = (6, 2, 3, 5, 8);
    let cfg = ModelConfig {
        n_layers: 1,
        d_model: d,
        n_heads: h,
        d_head: dh,
        n_key_value_heads: h,
        d_vocab: v,
        n_ctx,
        normalization_type: Normalization::None,
        positional_embedding_type: Positional::Sinusoidal,
        attn_only: true,
        original_architecture: "HookedTransformer".into(),
        ..ModelConfig::plain()
    };
    // Deterministic pseudo-random weights in [-1, 1).
    let mut seed = 7u64;
    let mut rand = |len: usize| -> Vec<f64> {
        (0..len)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    };
    let (w_e, w_q, w_k, w_v, w_o, w_u) = (
        rand(v * d),
        rand(h * d * dh),
        rand(h * d * dh),
        rand(h * d * dh),
        rand(h * dh * d),
        rand(d * v),
    );
    let t = |x: &[f64], shape: &[usize]| {
        Tensor::from_vec(
            x.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            shape,
            &Device::Cpu,
        )
        .unwrap()
    };
    let mut w = hooklens::Weights::default();
    w.insert("embed.W_E", t(&w_e, &[v, d]));
    w.insert("blocks.0.attn.W_Q", t(&w_q, &[h, d, dh]));
    w.insert("blocks.0.attn.W_K", t(&w_k, &[h, d, dh]));
    w.insert("blocks.0.attn.W_V", t(&w_v, &[h, d, dh]));
    w.insert("blocks.0.attn.W_O", t(&w_o, &[h, dh, d]));
    w.insert("unembed.W_U", t(&w_u, &[d, v]));
    let model = HookedTransformer::new(cfg, &w).unwrap();
    let tokens = [3u32, 1, 4, 1, 0, 2, 2];
    let p = tokens.len();
    let input = Tensor::new(&tokens[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let (logits, cache) = model.run_with_cache(&input, NameFilter::All).unwrap();

    // By hand: x = W_E[t] + PE; per head softmax(q k^T / sqrt(d_head)) causal; out = z W_O.
    let pe = |pos: usize, i: usize| {
        let angle = pos as f64 / 10000f64.powf((i - i % 2) as f64 / d as f64);
        if i.is_multiple_of(2) {
            angle.sin()
        } else {
            angle.cos()
        }
    };
    let x: Vec<Vec<f64>> = (0..p)
        .map(|pos| {
            (0..d)
                .map(|i| w_e[tokens[pos] as usize * d + i] + pe(pos, i))
                .collect()
        })
        .collect();
    let proj = |w: &[f64], hd: usize, row: &[f64]| -> Vec<f64> {
        (0..dh)
            .map(|j| (0..d).map(|i| row[i] * w[(hd * d + i) * dh + j]).sum())
            .collect()
    };
    let mut resid = x.clone();
    for hd in 0..h {
        let q: Vec<_> = x.iter().map(|r| proj(&w_q, hd, r)).collect();
        let k: Vec<_> = x.iter().map(|r| proj(&w_k, hd, r)).collect();
        let vv: Vec<_> = x.iter().map(|r| proj(&w_v, hd, r)).collect();
        for i in 0..p {
            let s: Vec<f64> = (0..=i)
                .map(|j| (0..dh).map(|c| q[i][c] * k[j][c]).sum::<f64>() / (dh as f64).sqrt())
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|s| (s - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            let z: Vec<f64> = (0..dh)
                .map(|c| (0..=i).map(|j| e[j] / sum * vv[j][c]).sum())
                .collect();
            for o in 0..d {
                resid[i][o] += (0..dh)
                    .map(|c| z[c] * w_o[(hd * dh + c) * d + o])
                    .sum::<f64>();
            }
        }
    }
    let w_u = &w_u;
    let want: Vec<f64> = resid
        .iter()
        .flat_map(|r| (0..v).map(move |o| (0..d).map(|i| r[i] * w_u[i * v + o]).sum::<f64>()))
        .collect();
    let pos_embed = cache.get_by_name("hook_pos_embed").unwrap().i(0).unwrap();
    let pe_want: Vec<f64> = (0..p)
        .flat_map(|pos| (0..d).map(move |i| pe(pos, i)))
        .collect();
    assert!(max_abs_diff(&pos_embed, &t(&pe_want, &[p, d])) < 1e-6);
    let d_logits = max_abs_diff(&logits.i(0).unwrap(), &t(&want, &[p, v]));
    assert!(d_logits < 1e-4, "logits differ by {d_logits}");
}

/// Generation with a KV cache (a prompt, then one token at a time) gives the logits of the full
/// forward at every position: sliding windows and soft-caps across the cache boundary.
#[test]
fn kv_cache_steps_equal_the_full_forward_in_every_family() {
    use hooklens::model::LayerKv;
    for family in ["neox", "gemma2", "gemma3", "qwen2", "qwen3", "mistral"] {
        let model = load(family, Processing::default());
        let r = candle_core::safetensors::load(
            root().join(format!("tests/reference/{family}_ref.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let tokens = r["p1.tokens"]
            .to_dtype(DType::U32)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let n = tokens.dim(1).unwrap();
        let full = model
            .forward(&tokens, &mut hooklens::Hooks::none())
            .unwrap();
        let mut kv = vec![LayerKv::default(); model.cfg.n_layers];
        let mut steps = vec![model
            .forward_with_kv(
                &tokens.narrow(1, 0, 7).unwrap(),
                &mut kv,
                &mut hooklens::Hooks::none(),
            )
            .unwrap()];
        for pos in 7..n {
            let t = tokens.narrow(1, pos, 1).unwrap();
            steps.push(
                model
                    .forward_with_kv(&t, &mut kv, &mut hooklens::Hooks::none())
                    .unwrap(),
            );
        }
        let stepped = Tensor::cat(&steps, 1).unwrap();
        let d = max_abs_diff(&stepped, &full);
        assert!(d < 1e-4, "{family}: cached logits differ by {d}");
    }
}

/// Config fields as the Hub has them: which layers slide, scaled rotary refused.
#[test]
fn hub_config_fields_map_to_the_axes() {
    use hooklens::config::AttnType::{Global, Local};
    let base = |extra: serde_json::Value| {
        let mut v = serde_json::json!({
            "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 4,
            "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64,
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        hooklens::ModelConfig::from_hf_json(&v.to_string())
    };
    let gemma = base(serde_json::json!({"architectures": ["Gemma2ForCausalLM"],
        "sliding_window": 4096, "query_pre_attn_scalar": 64}))
    .unwrap();
    assert_eq!(gemma.attn_types, [Local, Global, Local, Global]);
    assert_eq!((gemma.window(0), gemma.window(1)), (Some(4096), None));
    assert_eq!(gemma.attn_scale, Some(8.0));
    assert!(gemma.tie_word_embeddings && gemma.use_normalization_before_and_after);
    let qwen = base(serde_json::json!({"architectures": ["Qwen2ForCausalLM"],
        "sliding_window": 32768, "use_sliding_window": false, "max_window_layers": 2}))
    .unwrap();
    assert_eq!((qwen.window_size, qwen.attn_types.len()), (None, 0));
    let qwen = base(serde_json::json!({"architectures": ["Qwen2ForCausalLM"],
        "sliding_window": 16, "use_sliding_window": true, "max_window_layers": 2}))
    .unwrap();
    assert_eq!(qwen.attn_types, [Global, Global, Local, Local]);
    let mistral = base(serde_json::json!({"architectures": ["MistralForCausalLM"],
        "sliding_window": null}))
    .unwrap();
    assert_eq!(mistral.window(0), None);
    let pythia = base(serde_json::json!({"architectures": ["GPTNeoXForCausalLM"],
        "rotary_pct": 0.25, "rotary_emb_base": 10000}))
    .unwrap();
    assert_eq!(
        (pythia.rotary_dim, pythia.parallel_attn_mlp),
        (Some(2), true)
    );
    // Gemma 3 in both spellings: transformers 5's per-layer-type rope_parameters and layer_types,
    // and the original fields (every sliding_window_pattern-th layer global).
    let new = base(serde_json::json!({"architectures": ["Gemma3ForCausalLM"], "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}))
    .unwrap();
    let old = base(
        serde_json::json!({"architectures": ["Gemma3ForCausalLM"], "sliding_window": 8,
        "sliding_window_pattern": 2, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0}}),
    )
    .unwrap();
    for g in [&new, &old] {
        assert_eq!(g.attn_types, [Local, Global, Local, Global]);
        assert_eq!((g.rope(0), g.rope(1)), ((1e4, 1.0), (1e6, 8.0)));
        assert!(g.use_qk_norm && g.use_normalization_before_and_after);
        assert_eq!(
            (g.attn_scores_soft_cap, g.output_logits_soft_cap),
            (None, None)
        );
    }
    let e = base(
        serde_json::json!({"architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": {}}),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("text-only Gemma3ForCausalLM"), "{e}");
    for scaling in [
        serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}),
        serde_json::json!({"rope_scaling": {"type": "yarn", "factor": 4.0}}),
    ] {
        let mut extra = scaling;
        extra["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        let e = base(extra).unwrap_err().to_string();
        assert!(
            e.contains("rope type") && e.contains("LlamaForCausalLM"),
            "{e}"
        );
    }
}

/// Without a hook on the scores or the pattern, attention over more than 128 queries runs in
/// blocks of queries that skip the masked keys; it must equal the whole pattern's result, from
/// the start and after cached positions (the sweeps' suffixes), with sliding windows (Mistral),
/// QK-norm (Qwen3) and partial rotary (NeoX), on a batch of two prompts.
#[test]
fn attention_in_query_blocks_equals_the_whole_pattern() {
    use hooklens::model::LayerKv;
    use hooklens::{BlockHook, HookPoint, Hooks};
    for family in ["mistral", "qwen3", "neox"] {
        // The fixture with a context long enough for several blocks.
        let dir = tempfile::tempdir().unwrap();
        let src = root().join("tests/fixtures").join(family);
        for f in std::fs::read_dir(&src).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
        let config = dir.path().join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        cfg["max_position_embeddings"] = 512.into();
        std::fs::write(&config, cfg.to_string()).unwrap();
        let model = load_model(Some(dir.path().to_str().unwrap()), &LoadOptions::default())
            .unwrap()
            .0;
        // Two prompts: the blocks narrow positions only, each prompt keeps its own rows.
        let ids: Vec<u32> = (0..600u32).map(|i| (i * 37 + i / 300 * 11) % 320).collect();
        let tokens = Tensor::from_vec(ids, (2, 300), &Device::Cpu).unwrap();
        let whole_pattern = || {
            (0..model.cfg.n_layers).fold(Hooks::none(), |h, l| {
                h.add(HookPoint::Block(l, BlockHook::Pattern), |_, _| Ok(None))
            })
        };
        let whole = model.forward(&tokens, &mut whole_pattern()).unwrap();
        let blocked = model.forward(&tokens, &mut Hooks::none()).unwrap();
        let d = max_abs_diff(&blocked, &whole);
        assert!(d < 1e-4, "{family}: blocked attention differs by {d}");
        // 40 positions cached, then 260 at once: blocks start at offset 40.
        let mut kv = vec![LayerKv::default(); model.cfg.n_layers];
        let head = model
            .forward_with_kv(
                &tokens.narrow(1, 0, 40).unwrap(),
                &mut kv,
                &mut Hooks::none(),
            )
            .unwrap();
        let rest = model
            .forward_with_kv(
                &tokens.narrow(1, 40, 260).unwrap(),
                &mut kv,
                &mut Hooks::none(),
            )
            .unwrap();
        let d = max_abs_diff(&Tensor::cat(&[head, rest], 1).unwrap(), &whole);
        assert!(
            d < 1e-4,
            "{family}: blocked attention after a cache differs by {d}"
        );
    }
}

/// A gated MLP computes W_gate and W_in as one product and, with no hook on either half, the
/// activation straight from it; hooks on the halves (a no-op and a replacement that changes
/// nothing) must give the same logits, and the halves must be x·W_gate and x·W_in.
#[test]
fn gated_mlp_halves_equal_the_fused_path() {
    use hooklens::{BlockHook, HookPoint, Hooks};
    for family in ["qwen2", "gemma3"] {
        let model = load(family, Processing::default());
        let tokens = Tensor::new(&[[3u32, 17, 5, 99, 42, 8]], &Device::Cpu).unwrap();
        let fused = model.forward(&tokens, &mut Hooks::none()).unwrap();
        let mut hooks = Hooks::none();
        for l in 0..model.cfg.n_layers {
            hooks = hooks
                .add(HookPoint::Block(l, BlockHook::MlpPre), |_, _| Ok(None))
                .add(HookPoint::Block(l, BlockHook::MlpPreLinear), |x, _| {
                    Ok(Some((x * 1.0)?))
                });
        }
        let halves = model.forward(&tokens, &mut hooks).unwrap();
        let d = max_abs_diff(&fused, &halves);
        assert!(d < 1e-5, "{family}: {d}");
        let (_, cache) = model.run_with_cache(&tokens, NameFilter::All).unwrap();
        let mlp = model.blocks[1].mlp.as_ref().unwrap();
        let x = cache.get_by_name("blocks.1.ln2.hook_normalized").unwrap();
        for (hook, w) in [
            ("mlp.hook_pre", mlp.w_gate.as_ref().unwrap()),
            ("mlp.hook_pre_linear", &mlp.w_in),
        ] {
            let want = x.broadcast_matmul(w).unwrap();
            let got = cache.get_by_name(&format!("blocks.1.{hook}")).unwrap();
            let d = max_abs_diff(got, &want);
            assert!(d < 1e-4, "{family} {hook}: {d}");
        }
    }
}
