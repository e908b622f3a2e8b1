"""TransformerLens side of hooklens's forward benchmark.

Writes a random GPT-2-small checkpoint (HF format, seeded) to MODEL_DIR if it is not there,
then times TransformerLens 4.3 (TransformerBridge, compatibility mode) forward and
run_with_cache on the same token ids hooklens uses (ids i*7919 % 50257, batch 1), and writes
the medians as JSON. Run by benches/run_bench.sh forward with the peers environment.

    python benches/tl_reference_bench.py MODEL_DIR OUT_JSON [--lengths 128,512,1024] [--repeats 3]
    python benches/tl_reference_bench.py MODEL_DIR --serve [--repeats 3]
        (the TransformerLens side of benches/interleave_forward.py: forwards on request)
"""
import argparse
import json
import os

import torch
from bench_timing import median_time, serve_forward, torch_matmul_gflops
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
from transformer_lens.model_bridge import TransformerBridge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_model(d):
    if os.path.exists(os.path.join(d, "model.safetensors")):
        return GPT2LMHeadModel.from_pretrained(d).eval()
    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config()).eval()  # GPT-2 small: 12 layers, d_model 768, 12 heads
    m.save_pretrained(d, safe_serialization=True)
    tok = GPT2TokenizerFast(os.path.join(ROOT, "assets/gpt2/vocab.json"), os.path.join(ROOT, "assets/gpt2/merges.txt"))
    tok.save_pretrained(d)
    return m


def tokens(n):
    return torch.tensor([[(i * 7919) % 50257 for i in range(n)]])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out_json", nargs="?")
    ap.add_argument("--lengths", default="128,512,1024")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--serve", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    model = ensure_model(a.model_dir)
    tok = GPT2TokenizerFast.from_pretrained(a.model_dir)
    bridge = TransformerBridge.boot_transformers(a.model_dir, hf_model=model, tokenizer=tok, device="cpu")
    bridge.enable_compatibility_mode()
    if a.serve:
        return serve_forward(lambda n: bridge(tokens(n)), a.repeats)
    # f32 matmul rate of torch on this machine, for the roofline.
    out = {"torch_gflops": torch_matmul_gflops(), "threads": torch.get_num_threads(), "runs": []}
    for n in [int(s) for s in a.lengths.split(",")]:
        t = tokens(n)
        with torch.no_grad():
            fwd = median_time(lambda: bridge(t), a.repeats)
            cache_t = median_time(lambda: bridge.run_with_cache(t), a.repeats)
            _, cache = bridge.run_with_cache(t)
        # The classic TransformerLens hook names only (the bridge also records its own aliases).
        classic = [k for k in cache.keys() if not k.endswith((".hook_in", ".hook_out")) and "hook_hidden_states" not in k]
        nbytes = sum(cache[k].numel() * cache[k].element_size() for k in classic)
        out["runs"].append({"tokens": n, "forward_s": fwd, "run_with_cache_s": cache_t, "cache_bytes": nbytes, "cache_entries": len(classic)})
        print(out["runs"][-1], flush=True)
    with open(a.out_json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
