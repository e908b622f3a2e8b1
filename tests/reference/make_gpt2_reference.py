"""Reference values for hooklens's GPT-2 parity tests, from TransformerLens 4.3 and transformers.

Run with the peers environment (../shared/peers/setup.sh), from the repository root:
    ~/.cache/hooklens-peers/venv/bin/python tests/reference/make_gpt2_reference.py

Writes
- tests/fixtures/gpt2-random/{config.json,model.safetensors}: a random-weight GPT2LMHeadModel in
  Hugging Face's format (Conv1D weights [in, out]) with randomised LayerNorm weights and biases
  and non-zero biases everywhere, so that weight-processing bugs show;
- tests/reference/gpt2_random_ref.safetensors: tokens, log-probs and activations, unprocessed
  (TransformerBridge as booted) and processed (after enable_compatibility_mode());
- tests/reference/gpt2_tokenizer_ids.json: Hugging Face GPT2TokenizerFast ids on varied texts.
"""
import json
import os
import shutil
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
from transformer_lens.model_bridge import TransformerBridge

from texts import COMMON_TEXTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures", "gpt2-random")
REF = os.path.join(ROOT, "tests", "reference")
ASSETS = os.path.join(ROOT, "assets", "gpt2")

PROMPTS = [
    "The capital of France is Paris, and the capital of Italy is",
    "def add(a, b):\n    return a + b",
    "Numbers 12345 and 3.14159!",
]
TOKENIZER_TEXTS = COMMON_TEXTS + ["<|endoftext|>special token in the middle<|endoftext|>", ""]
# Hooks compared; all layers of each.
BLOCK_HOOKS = [
    "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
    "attn.hook_v", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
    "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out",
    "hook_resid_post",
]
TOP_HOOKS = ["hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized"]
N_LAYERS = 3


def make_checkpoint():
    torch.manual_seed(1234)
    cfg = GPT2Config(n_layer=N_LAYERS, n_embd=32, n_head=4, n_positions=64, vocab_size=50257,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif "wte" in name or "wpe" in name:
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.25 * torch.randn_like(p))
    os.makedirs(FIX, exist_ok=True)
    model.save_pretrained(FIX, safe_serialization=True)
    # Keep only what hooklens reads; drop generation_config.json noise.
    for f in os.listdir(FIX):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(FIX, f))
    return model


def tokenizer():
    d = tempfile.mkdtemp()
    tok = GPT2TokenizerFast(os.path.join(ASSETS, "vocab.json"), os.path.join(ASSETS, "merges.txt"))
    tok.save_pretrained(d)
    tok = GPT2TokenizerFast.from_pretrained(d)  # TransformerBridge needs name_or_path
    return tok, d


def main():
    model = make_checkpoint()
    tok, tokdir = tokenizer()
    ids = {t: tok(t)["input_ids"] for t in TOKENIZER_TEXTS}
    with open(os.path.join(REF, "gpt2_tokenizer_ids.json"), "w") as f:
        json.dump({"texts": TOKENIZER_TEXTS, "ids": [ids[t] for t in TOKENIZER_TEXTS]}, f, ensure_ascii=False, indent=1)

    # A fixed subset of the vocabulary at which full log-prob rows are compared (the whole
    # 50,257-wide rows would make the reference file large for no extra coverage).
    rng = np.random.default_rng(0)
    vocab_sel = torch.tensor(np.sort(rng.choice(50257, 256, replace=False)), dtype=torch.int64)
    out = {"vocab_sel": vocab_sel}

    shutil.copy(os.path.join(FIX, "config.json"), tokdir)
    bridge = TransformerBridge.boot_transformers(tokdir, hf_model=model, tokenizer=tok, device="cpu")
    for mode in ["unprocessed", "processed"]:
        if mode == "processed":
            bridge.enable_compatibility_mode()
        for i, prompt in enumerate(PROMPTS):
            toks = bridge.to_tokens(prompt)  # prepends BOS (<|endoftext|>) like TransformerLens
            with torch.no_grad():
                logits, cache = bridge.run_with_cache(toks)
            lp = torch.log_softmax(logits[0].double(), -1).float()
            key = f"{mode}.p{i}"
            out[f"p{i}.tokens"] = toks[0].to(torch.int64)
            out[f"{key}.logprobs_sel"] = lp[:, vocab_sel].contiguous()
            out[f"{key}.logprobs_next"] = lp[:-1].gather(-1, toks[0, 1:, None])[:, 0].contiguous()
            names = TOP_HOOKS + [f"blocks.{l}.{h}" for l in range(N_LAYERS) for h in BLOCK_HOOKS]
            for n in names:
                out[f"{key}.{n}"] = cache[n][0].float().clone()
            if mode == "unprocessed":
                with torch.no_grad():
                    hf_logits = model(toks).logits[0]
                hf_lp = torch.log_softmax(hf_logits.double(), -1).float()
                out[f"hf.p{i}.logprobs_sel"] = hf_lp[:, vocab_sel].contiguous()
    save_file(out, os.path.join(REF, "gpt2_random_ref.safetensors"))
    print("wrote", len(out), "reference tensors")


if __name__ == "__main__":
    main()
