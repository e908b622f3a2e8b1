"""Reference values for hooklens's Gemma 3 270M (GGUF, Q4_K_M) parity tests, from transformers
5.25 reading the same GGUF (dequantized to f32) and, where it wraps the model, TransformerLens
4.3's TransformerBridge.

    scripts/fetch_gemma3.sh   # caches the GGUF
    ~/.cache/hooklens-peers/venv/bin/python tests/reference/make_gemma3_reference.py

Writes tests/reference/gemma3_270m_ref.safetensors and tests/reference/gemma3_270m_tokenizer_ids.json.
"""
import json
import os
import subprocess

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from texts import COMMON_TEXTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REF = os.path.join(ROOT, "tests", "reference")
PROMPTS = [
    "Monday, Tuesday, Wednesday,",
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n",
    # Longer than the 512-token sliding window: local and global layers differ.
    " ".join(f"item {i}: {'odd' if i % 2 else 'even'};" for i in range(160)),
]
TOKENIZER_TEXTS = COMMON_TEXTS + [
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>two<eos> specials, <unused0> and <mask>",
    "\u2581already \u2581marked and \ufeffbom-like, tabs\t\t\t and\u3000ideographic space",
    "  ",
    "\n\n\n\n\n",
    "a" * 40,
]
LAYERS = [0, 5, 6, 17]  # local, global, local, global
LONG_LAYERS = [6, 17]  # the long prompt's residual stream, at its last LONG_TAIL positions
LONG_TAIL = 256
LONG_VOCAB = 64  # and its log-probs of the first LONG_VOCAB of the selected tokens
HOOKS = ["hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_pattern",
         "attn.hook_z", "hook_attn_out", "hook_resid_mid", "mlp.hook_pre", "mlp.hook_post",
         "hook_mlp_out", "hook_resid_post"]


def main():
    gguf = subprocess.check_output([os.path.join(ROOT, "scripts", "fetch_gemma3.sh")], text=True).strip()
    d, name = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in TOKENIZER_TEXTS]
    with open(os.path.join(REF, "gemma3_270m_tokenizer_ids.json"), "w") as f:
        json.dump({"texts": TOKENIZER_TEXTS, "ids": ids}, f, ensure_ascii=False, indent=1)

    rng = np.random.default_rng(0)
    vocab_sel = torch.tensor(np.sort(rng.choice(model.config.vocab_size, 256, replace=False)), dtype=torch.int64)
    out = {"vocab_sel": vocab_sel}
    toks = [torch.tensor([tok(p)["input_ids"]]) for p in PROMPTS]  # with <bos>, as Gemma expects
    print("prompt lengths", [t.shape[1] for t in toks])
    for i, t in enumerate(toks):
        out[f"p{i}.tokens"] = t[0].clone()
        with torch.no_grad():
            r = model(t, output_hidden_states=True)
            lp = torch.log_softmax(r.logits[0].double(), -1).float()
        long = t.shape[1] > 64
        sel = vocab_sel[:LONG_VOCAB] if long else vocab_sel
        out[f"hf.p{i}.logprobs_sel"] = lp[:, sel].contiguous()
        out[f"hf.p{i}.logprobs_next"] = lp[:-1].gather(-1, t[0, 1:, None])[:, 0].contiguous()
        for l in LONG_LAYERS if long else LAYERS:
            h = r.hidden_states[l][0]
            out[f"hf.p{i}.blocks.{l}.hook_resid_pre"] = (h[-LONG_TAIL:] if long else h).float().clone()
        if not long:
            with torch.no_grad():
                g = model.generate(t, max_new_tokens=16, do_sample=False)
            out[f"hf.p{i}.greedy"] = g[0, t.shape[1]:].clone()
            print(repr(PROMPTS[i]), "->", repr(tok.decode(g[0, t.shape[1]:])))

    # A config read from a GGUF names no architecture; the bridge picks its adapter by it.
    model.config.architectures = ["Gemma3ForCausalLM"]
    try:
        from transformer_lens.model_bridge import TransformerBridge
        bridge = TransformerBridge.boot_transformers(d, hf_model=model, tokenizer=tok, device="cpu")
    except Exception as e:  # the bridge may not know Gemma 3
        print("TransformerBridge does not wrap this model:", repr(e)[:300])
        bridge = None
    if bridge is not None:
        for mode in ["unprocessed", "processed"]:
            if mode == "processed":
                bridge.enable_compatibility_mode()
            # Processed activations of the first prompt only (the file stays small).
            for i, t in enumerate(toks[:3]):
                with torch.no_grad():
                    logits, cache = bridge.run_with_cache(t)
                lp = torch.log_softmax(logits[0].double(), -1).float()
                out[f"{mode}.p{i}.logprobs_sel"] = lp[:, vocab_sel].contiguous()
                for l in LAYERS if mode == "unprocessed" or i == 0 else []:
                    for h in HOOKS:
                        n = f"blocks.{l}.{h}"
                        if n in cache:
                            out[f"{mode}.p{i}.{n}"] = cache[n][0].float().clone()
        print(sorted(k for k in out if k.startswith("unprocessed.p0")))
    save_file(out, os.path.join(REF, "gemma3_270m_ref.safetensors"))
    print("wrote", len(out), "tensors")


if __name__ == "__main__":
    main()
