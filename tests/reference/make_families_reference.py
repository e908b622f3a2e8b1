"""Reference values for hooklens's model-family parity tests (tests/families.rs), from
TransformerLens 4.3 (TransformerBridge) and transformers on small random checkpoints.

Run with the peers environment (../shared/peers/setup.sh), from the repository root:
    ~/.cache/hooklens-peers/venv/bin/python tests/reference/make_families_reference.py [FAMILY...]

For each family (GPT-NeoX, Gemma 2, Gemma 3, Qwen2, Qwen3, Mistral; or those named) it writes
- tests/fixtures/{family}/{config.json, model.safetensors, tokenizer.json}: a 3-layer random
  checkpoint built offline by transformers from a config, saved in the Hub's layout, with a tiny
  byte-level BPE tokenizer. Norm weights and biases are randomised (the defaults 1 and 0 hide
  folding bugs), queries and keys are scaled up so attention is far from uniform, and the config
  values that matter (soft-caps, sliding windows, partial rotary, query_pre_attn_scalar) are set
  where they change the numbers on these prompts;
- tests/reference/{family}_ref.safetensors: the prompts' tokens; Hugging Face's log-probs; and,
  unprocessed (the bridge as booted) and processed (after enable_compatibility_mode()), the
  log-probs and every hook point the bridge exposes under a TransformerLens name.
"""
import os
import re
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
import sys

from transformers import (AutoModelForCausalLM, GPTNeoXConfig, Gemma2Config, Gemma3TextConfig,
                          MistralConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen3Config)
from transformer_lens.model_bridge import TransformerBridge

from texts import COMMON_TEXTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures")
REF = os.path.join(ROOT, "tests", "reference")
VOCAB = 320
PROMPTS = [
    "The capital of France is Paris, and of Italy",
    "def add(a, b):\n    return a + b  # sum",
]
# The bridge's hook names that TransformerLens's HookedTransformer also has (the bridge adds
# hook_in/hook_out aliases of each module, which are not compared).
TL_NAME = re.compile(
    r"^(hook_embed|hook_pos_embed|ln_final\.hook_(scale|normalized)|blocks\.\d+\.("
    r"hook_resid_(pre|mid|post)|hook_attn_out|hook_mlp_out|ln[12](_post)?\.hook_(scale|normalized)|"
    r"attn\.hook_(q|k|v|rot_q|rot_k|attn_scores|pattern|z|q_normed|k_normed)|"
    r"attn\.[qk]_norm\.hook_(scale|normalized)|mlp\.hook_(pre|pre_linear|post)))$")

COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, intermediate_size=64,
              max_position_embeddings=128, attention_dropout=0.0)
FAMILIES = {
    "neox": GPTNeoXConfig(**COMMON, num_attention_heads=2, rotary_pct=0.25, rotary_emb_base=500.0,
                          use_parallel_residual=True, tie_word_embeddings=False, hidden_act="gelu",
                          layer_norm_eps=1e-5, hidden_dropout=0.0,
                          architectures=["GPTNeoXForCausalLM"]),
    "gemma2": Gemma2Config(**COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           query_pre_attn_scalar=24, sliding_window=5, attn_logit_softcapping=5.0,
                           final_logit_softcapping=5.0, rope_theta=1000.0,
                           architectures=["Gemma2ForCausalLM"]),
    # Local and global layers with their own rotary bases, linear scaling on the global one.
    "gemma3": Gemma3TextConfig(**COMMON, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                               query_pre_attn_scalar=24, sliding_window=5,
                               layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                               rope_parameters={
                                   "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}},
                               architectures=["Gemma3ForCausalLM"]),
    "qwen2": Qwen2Config(**COMMON, num_attention_heads=4, num_key_value_heads=2, rope_theta=1000.0,
                         tie_word_embeddings=False, architectures=["Qwen2ForCausalLM"]),
    "qwen3": Qwen3Config(**COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         rope_theta=1000.0, tie_word_embeddings=True,
                         architectures=["Qwen3ForCausalLM"]),
    "mistral": MistralConfig(**COMMON, num_attention_heads=4, num_key_value_heads=2,
                             sliding_window=5, rope_theta=1000.0, tie_word_embeddings=False,
                             architectures=["MistralForCausalLM"]),
}


def train_tokenizer(path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(COMMON_TEXTS + PROMPTS, trainer)
    tok.save(path)


def randomise(model, family):
    torch.manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                # Gemma's RMSNorm multiplies by (1 + w): its weights are offsets from 1.
                base = 0.0 if family.startswith("gemma") else 1.0
                p.copy_(base + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif any(s in name for s in ("q_proj", "k_proj", "query_key_value")):
                p.copy_(0.5 * torch.randn_like(p))
            elif "embed" in name:
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.25 * torch.randn_like(p))


def make(family, cfg):
    fix = os.path.join(FIX, family)
    shutil.rmtree(fix, ignore_errors=True)
    os.makedirs(fix)
    train_tokenizer(os.path.join(fix, "tokenizer.json"))
    cfg.bos_token_id = cfg.eos_token_id = 0
    cfg.pad_token_id = None
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    randomise(model, family)
    model.save_pretrained(fix, safe_serialization=True)
    for f in os.listdir(fix):
        if f not in ("config.json", "model.safetensors", "tokenizer.json"):
            os.remove(os.path.join(fix, f))
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(fix, "tokenizer.json"),
                                  bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tokdir = os.path.join(fix, "..", f".{family}-tok")
    tok.save_pretrained(tokdir)
    tok = PreTrainedTokenizerFast.from_pretrained(tokdir)
    shutil.copy(os.path.join(fix, "config.json"), tokdir)

    out = {}
    toks = [torch.tensor([[0] + tok(p, add_special_tokens=False)["input_ids"]]) for p in PROMPTS]
    for i, t in enumerate(toks):
        out[f"p{i}.tokens"] = t[0].to(torch.int64).clone()
        with torch.no_grad():
            lp = torch.log_softmax(model(t).logits[0].double(), -1).float()
        out[f"hf.p{i}.logprobs"] = lp.contiguous()
    bridge = TransformerBridge.boot_transformers(tokdir, hf_model=model, tokenizer=tok, device="cpu")
    for mode in ["unprocessed", "processed"]:
        if mode == "processed":
            bridge.enable_compatibility_mode()
        for i, t in enumerate(toks):
            with torch.no_grad():
                logits, cache = bridge.run_with_cache(t)
            out[f"{mode}.p{i}.logprobs"] = torch.log_softmax(logits[0].double(), -1).float()
            for n, v in cache.items():
                if TL_NAME.match(n):
                    out[f"{mode}.p{i}.{n}"] = v[0].float().contiguous().clone()
    shutil.rmtree(tokdir)
    save_file(out, os.path.join(REF, f"{family}_ref.safetensors"))
    names = sorted({k.split(".", 2)[2] for k in out if k.startswith("unprocessed.p0.")})
    print(family, len(out), "tensors;", "tokens", [t.shape[1] for t in toks])
    print("  ", [n for n in names if not n.startswith("blocks.") or n.startswith("blocks.0.")])


def main():
    for family in sys.argv[1:] or FAMILIES:
        make(family, FAMILIES[family])


if __name__ == "__main__":
    main()
