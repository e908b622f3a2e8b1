"""Reference values for hooklens's SmolLM2 (llama, GGUF) parity tests, from transformers and
TransformerLens 4.3 on the same dequantized weights.

    scripts/fetch_smollm2.sh   # caches the GGUF
    ~/.cache/hooklens-peers/venv/bin/python tests/reference/make_smollm2_reference.py

Writes tests/reference/smollm2_ref.safetensors and tests/reference/smollm2_tokenizer_ids.json.
"""
import json
import os
import subprocess

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformer_lens.model_bridge import TransformerBridge

from texts import COMMON_TEXTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REF = os.path.join(ROOT, "tests", "reference")
PROMPTS = [
    "The capital of France is",
    "One, two, three, four,",
    "def fibonacci(n):\n    if n < 2:\n        return n",
]
TOKENIZER_TEXTS = COMMON_TEXTS + ["<|im_start|>user\nHi<|im_end|>"]
LAYERS = [0, 7, 15, 29]
HOOKS = ["attn.hook_pattern", "attn.hook_z", "mlp.hook_post", "hook_resid_post", "attn.hook_q", "attn.hook_k", "attn.hook_v"]


def main():
    gguf = subprocess.check_output([os.path.join(ROOT, "scripts", "fetch_smollm2.sh")], text=True).strip()
    d, name = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32).eval()
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in TOKENIZER_TEXTS]
    with open(os.path.join(REF, "smollm2_tokenizer_ids.json"), "w") as f:
        json.dump({"texts": TOKENIZER_TEXTS, "ids": ids}, f, ensure_ascii=False, indent=1)

    rng = np.random.default_rng(0)
    vocab_sel = torch.tensor(np.sort(rng.choice(model.config.vocab_size, 256, replace=False)), dtype=torch.int64)
    out = {"vocab_sel": vocab_sel}
    toks = [torch.tensor([tok(p, add_special_tokens=False)["input_ids"]]) for p in PROMPTS]
    for i, t in enumerate(toks):
        out[f"p{i}.tokens"] = t[0].clone()
        with torch.no_grad():
            lp = torch.log_softmax(model(t).logits[0].double(), -1).float()
        out[f"hf.p{i}.logprobs_sel"] = lp[:, vocab_sel].contiguous()
        out[f"hf.p{i}.logprobs_next"] = lp[:-1].gather(-1, t[0, 1:, None])[:, 0].contiguous()
        with torch.no_grad():
            g = model.generate(t, max_new_tokens=8, do_sample=False)
        out[f"hf.p{i}.greedy"] = g[0, t.shape[1]:].clone()

    tl_dir = d  # TransformerBridge reads the config from the model object
    bridge = TransformerBridge.boot_transformers(tl_dir, hf_model=model, tokenizer=tok, device="cpu")
    for mode in ["unprocessed", "processed"]:
        if mode == "processed":
            bridge.enable_compatibility_mode()
        for i, t in enumerate(toks):
            with torch.no_grad():
                logits, cache = bridge.run_with_cache(t)
            lp = torch.log_softmax(logits[0].double(), -1).float()
            out[f"{mode}.p{i}.logprobs_sel"] = lp[:, vocab_sel].contiguous()
            for l in LAYERS:
                for h in HOOKS:
                    n = f"blocks.{l}.{h}"
                    if n in cache:
                        out[f"{mode}.p{i}.{n}"] = cache[n][0].float().clone()
    print(sorted(k for k in out if k.startswith("unprocessed.p0")))
    save_file(out, os.path.join(REF, "smollm2_ref.safetensors"))
    print("wrote", len(out), "tensors")


if __name__ == "__main__":
    main()
