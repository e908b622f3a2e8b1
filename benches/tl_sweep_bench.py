"""TransformerLens side of hooklens's sweep benchmark: on the random GPT-2-small checkpoint of
benches/tl_reference_bench.py (written to MODEL_DIR if missing) and 64 tokens, times
- zero-ablation of each of the 144 heads (hook_z) with the mean next-token loss,
- the same with the last-position logit difference,
- get_act_patch_resid_pre (layer x position) with the logit difference,
each as TransformerLens users run them (a loop of run_with_hooks; transformer_lens.patching),
once (they take minutes). Writes the times, the token ids and the values as JSON, so that
hooklens runs the same sweeps on the same input and checks it gets the same numbers.

    python benches/tl_sweep_bench.py MODEL_DIR OUT_JSON
"""
import argparse
import json
import os
import time

import torch
from tl_reference_bench import ensure_model
from transformers import GPT2TokenizerFast
from transformer_lens import patching
from transformer_lens.model_bridge import TransformerBridge

N_POS = 64


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out_json")
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    model = ensure_model(a.model_dir)
    tok = GPT2TokenizerFast.from_pretrained(a.model_dir)
    bridge = TransformerBridge.boot_transformers(a.model_dir, hf_model=model, tokenizer=tok, device="cpu")
    bridge.enable_compatibility_mode()
    clean = torch.tensor([[(i * 7919) % 50257 for i in range(N_POS)]])
    corrupted = clean.clone()
    corrupted[0, 10] = 1234  # one corrupted token, as in a name swap
    answer, wrong = 2000, 3000
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads

    def logit_diff(logits):
        return logits[0, -1, answer] - logits[0, -1, wrong]

    def ablate(metric):
        out = torch.zeros(n_layers, n_heads)
        for layer in range(n_layers):
            for head in range(n_heads):
                def zero(z, hook, head=head):
                    z[:, :, head, :] = 0.0
                    return z
                hooks = [(f"blocks.{layer}.attn.hook_z", zero)]
                out[layer, head] = metric(hooks)
        return out

    out = {"tokens_clean": clean[0].tolist(), "tokens_corrupted": corrupted[0].tolist(),
           "answer": answer, "wrong": wrong}
    with torch.no_grad():
        t = time.perf_counter()
        loss = ablate(lambda hooks: bridge.run_with_hooks(clean, return_type="loss", fwd_hooks=hooks))
        out["ablate_loss_s"] = time.perf_counter() - t
        out["ablate_loss"] = loss.flatten().tolist()
        t = time.perf_counter()
        ld = ablate(lambda hooks: logit_diff(bridge.run_with_hooks(clean, fwd_hooks=hooks)))
        out["ablate_logit_diff_s"] = time.perf_counter() - t
        out["ablate_logit_diff"] = ld.flatten().tolist()
        _, clean_cache = bridge.run_with_cache(clean)
        t = time.perf_counter()
        grid = patching.get_act_patch_resid_pre(bridge, corrupted, clean_cache, logit_diff)
        out["patch_resid_pre_s"] = time.perf_counter() - t
        out["patch_resid_pre"] = grid.flatten().tolist()
    with open(a.out_json, "w") as f:
        json.dump(out, f)
    print({k: v for k, v in out.items() if k.endswith("_s")})


if __name__ == "__main__":
    main()
