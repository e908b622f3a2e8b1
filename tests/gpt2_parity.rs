//! GPT-2 parity with TransformerLens 4.3 and Hugging Face transformers on a random-weight
//! checkpoint (reference values from tests/reference/make_gpt2_reference.py).

mod common;

use candle_core::{DType, IndexOp, D};
use common::*;
use hooklens::{NameFilter, Processing};

const TOL: f32 = 1e-4;
const PROMPTS: usize = 3;

fn check_mode(processing: Processing, mode: &str) {
    let dir = gpt2_dir();
    let (model, _) = load_gpt2(dir.path(), processing);
    let r = reference();
    let sel = r["vocab_sel"].to_dtype(DType::U32).unwrap();
    let mut worst_lp = 0f32;
    let mut worst_act = (0f32, String::new());
    for i in 0..PROMPTS {
        let tokens = r[&format!("p{i}.tokens")]
            .to_dtype(DType::U32)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let (logits, cache) = model.run_with_cache(&tokens, NameFilter::All).unwrap();
        let lp = candle_nn::ops::log_softmax(&logits.i(0).unwrap(), D::Minus1).unwrap();
        let lp_sel = lp.index_select(&sel, 1).unwrap();
        let key = format!("{mode}.p{i}");
        worst_lp = worst_lp.max(max_abs_diff(&lp_sel, &r[&format!("{key}.logprobs_sel")]));
        if mode == "unprocessed" {
            worst_lp = worst_lp.max(max_abs_diff(&lp_sel, &r[&format!("hf.p{i}.logprobs_sel")]));
        }
        let next = tokens.i((0, 1..)).unwrap();
        let lp_next = lp
            .i(..lp.dim(0).unwrap() - 1)
            .unwrap()
            .gather(&next.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        worst_lp = worst_lp.max(max_abs_diff(&lp_next, &r[&format!("{key}.logprobs_next")]));
        let mut compared = 0;
        for (name, want) in r
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{key}.")) && !k.contains("logprobs"))
        {
            let hook = &name[key.len() + 1..];
            let got = cache.get_by_name(hook).unwrap().i(0).unwrap();
            let d = max_abs_diff(&got, want);
            if d > worst_act.0 {
                worst_act = (d, hook.to_string());
            }
            compared += 1;
        }
        assert!(compared >= 50, "only {compared} hooks compared");
    }
    eprintln!(
        "{mode}: worst log-prob diff {worst_lp:.2e}, worst activation diff {:.2e} at {}",
        worst_act.0, worst_act.1
    );
    assert!(worst_lp < TOL, "{mode}: log-probs differ by {worst_lp}");
    assert!(
        worst_act.0 < TOL,
        "{mode}: {} differs by {}",
        worst_act.1,
        worst_act.0
    );
}

#[test]
fn unprocessed_matches_transformerlens_and_hf() {
    check_mode(Processing::none(), "unprocessed");
}

#[test]
fn processed_matches_transformerlens_compatibility_mode() {
    check_mode(Processing::default(), "processed");
}

#[test]
fn processing_preserves_log_probs() {
    let dir = gpt2_dir();
    let (a, tok) = load_gpt2(dir.path(), Processing::none());
    let (b, _) = load_gpt2(dir.path(), Processing::default());
    let t = tok
        .to_tokens(
            &["Processing must not change what the model predicts."],
            true,
            a.device(),
        )
        .unwrap();
    let lp = |m: &hooklens::HookedTransformer| {
        candle_nn::ops::log_softmax(
            &m.forward(&t, &mut hooklens::Hooks::none()).unwrap(),
            D::Minus1,
        )
        .unwrap()
    };
    assert!(max_abs_diff(&lp(&a), &lp(&b)) < TOL);
}

#[test]
fn padded_batch_equals_each_prompt_alone() {
    let dir = gpt2_dir();
    let (model, tok) = load_gpt2(dir.path(), Processing::default());
    let texts = [
        "A short one",
        "A considerably longer prompt, with more tokens in it than the first",
    ];
    let batch = tok.to_tokens(&texts, true, model.device()).unwrap();
    let lens = tok.lengths(&texts, true).unwrap();
    let (logits, cache) = model
        .run_with_cache(&batch, NameFilter::regex("hook_pattern").unwrap())
        .unwrap();
    for (i, text) in texts.iter().enumerate() {
        let alone = tok.to_tokens(&[text], true, model.device()).unwrap();
        let (l1, c1) = model
            .run_with_cache(&alone, NameFilter::regex("hook_pattern").unwrap())
            .unwrap();
        let n = lens[i];
        assert_eq!(l1.dim(1).unwrap(), n);
        assert!(max_abs_diff(&logits.i((i, ..n)).unwrap(), &l1.i(0).unwrap()) < 1e-5);
        let p = cache
            .get_by_name("blocks.2.attn.hook_pattern")
            .unwrap()
            .i((i, .., ..n, ..n))
            .unwrap();
        assert!(
            max_abs_diff(
                &p,
                &c1.get_by_name("blocks.2.attn.hook_pattern")
                    .unwrap()
                    .i(0)
                    .unwrap()
            ) < 1e-6
        );
    }
}

#[test]
fn hook_result_sums_to_attn_out_and_is_opt_in() {
    let dir = gpt2_dir();
    let (model, tok) = load_gpt2(dir.path(), Processing::default());
    let t = tok
        .to_tokens(&["Per-head outputs add up"], true, model.device())
        .unwrap();
    let (_, all) = model.run_with_cache(&t, NameFilter::All).unwrap();
    assert!(
        all.get_by_name("blocks.1.attn.hook_result").is_err(),
        "All leaves out the optional hook_result"
    );
    let (_, cache) = model
        .run_with_cache(
            &t,
            NameFilter::regex("blocks\\.1\\.(attn\\.hook_result|hook_attn_out)").unwrap(),
        )
        .unwrap();
    let result = cache.get_by_name("blocks.1.attn.hook_result").unwrap(); // [b, p, H, d_model]
    assert_eq!(result.dims()[2], model.cfg.n_heads);
    let b_o = model.blocks[1].attn.b_o.as_ref().unwrap();
    let summed = result.sum(2).unwrap().broadcast_add(b_o).unwrap();
    assert!(
        max_abs_diff(
            &summed,
            cache.get_by_name("blocks.1.hook_attn_out").unwrap()
        ) < 1e-5
    );
    assert!(
        max_abs_diff(
            cache.get_by_name("blocks.1.hook_attn_out").unwrap(),
            all.get_by_name("blocks.1.hook_attn_out").unwrap()
        ) < 1e-5
    );
}

#[test]
fn sharded_checkpoint_loads_like_the_single_file() {
    let dir = gpt2_dir();
    let (single, tok) = load_gpt2(dir.path(), Processing::none());
    // Split the weights over two shards with an index, as large Hub checkpoints come.
    let file = dir.path().join("model.safetensors");
    let all = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let shard = format!("model-{:05}-of-00002.safetensors", i + 1);
        let part: std::collections::HashMap<_, _> =
            chunk.iter().map(|&n| (n.clone(), all[n].clone())).collect();
        candle_core::safetensors::save(&part, dir.path().join(&shard)).unwrap();
        for &n in chunk {
            weight_map.insert(n.clone(), shard.clone().into());
        }
    }
    std::fs::remove_file(&file).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let (sharded, _) = load_gpt2(dir.path(), Processing::none());
    let tokens = tok
        .to_tokens(
            &["Sharded checkpoints load the same."],
            true,
            single.device(),
        )
        .unwrap();
    let a = single
        .forward(&tokens, &mut hooklens::Hooks::none())
        .unwrap();
    let b = sharded
        .forward(&tokens, &mut hooklens::Hooks::none())
        .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}
