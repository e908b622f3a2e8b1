"""GGUF copies of the tiny family checkpoints (tests/fixtures/{family}), written with llama.cpp's
gguf package in llama.cpp's layout (its convert_hf_to_gguf.py conventions: tensor and metadata
names, Gemma's norms stored as 1 + w, llama's Q/K rows permuted for its rotary kernel), F32, with
the checkpoint's byte-level BPE tokenizer. tests/gguf_families.rs loads each next to its
safetensors copy: one model (and for qwen3, one tokenizer; qwen2's file names Qwen2's word split,
and its ids are held to transformers reading the file).

    ~/.cache/hooklens-peers/venv/bin/python tests/reference/make_gguf_fixtures.py

Writes tests/fixtures/gguf/{family}.gguf and tests/reference/gguf_qwen2_tokenizer_ids.json.
"""
import json
import os

import gguf
import numpy as np
from safetensors.numpy import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures")
# family fixture -> llama.cpp architecture. llama.cpp writes Mistral as `llama` without its
# sliding window, scales Gemma's queries by 1/sqrt(head_dim) (the file has no
# query_pre_attn_scalar), and fixes Gemma 3's layer pattern (every sixth layer global) and local
# rotary base (10,000): the test compares those with copies of their checkpoints so changed.
ARCH = {"qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2", "gemma3": "gemma3",
        "mistral": "llama", "neox": "gptneox"}
# The word split each file names (tokenizer.ggml.pre): Qwen2's regex for qwen2, whose ids are
# then checked against transformers reading the same file.
PRE = {"qwen2": "qwen2", "qwen3": "default", "gemma2": "default", "gemma3": "default",
       "mistral": "default", "neox": "gpt-2"}
# GPT-NeoX's names (llama.cpp's GPTNeoXModel)
NEOX = {"input_layernorm": "attn_norm", "attention.query_key_value": "attn_qkv",
        "attention.dense": "attn_output", "post_attention_layernorm": "ffn_norm",
        "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down"}
NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "post_feedforward_layernorm": "post_ffw_norm",
}


def permute(w, heads):
    """llama.cpp's LlamaModel.permute: rotate-half rows -> interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def neox_name(name):
    fixed = {"gpt_neox.embed_in.weight": "token_embd.weight", "embed_out.weight": "output.weight",
             "gpt_neox.final_layer_norm.weight": "output_norm.weight",
             "gpt_neox.final_layer_norm.bias": "output_norm.bias"}
    if name in fixed:
        return fixed[name]
    layer, rest = name.removeprefix("gpt_neox.layers.").split(".", 1)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{NEOX[module]}.{kind}"


def neox_tensor(name, t, heads):
    """llama.cpp's GPTNeoXModel: the fused Q/K/V rows from per-head [q k v] to [q.. k.. v..]."""
    if "query_key_value" in name:
        t = t.reshape(heads, 3, -1, *t.shape[1:]).swapaxes(0, 1).reshape(t.shape)
    return np.ascontiguousarray(t)


def write(family):
    src = os.path.join(FIX, family)
    cfg = json.load(open(os.path.join(src, "config.json")))
    arch = ARCH[family]
    gemma = arch.startswith("gemma")
    w = gguf.GGUFWriter(os.path.join(FIX, "gguf", f"{family}.gguf"), arch)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    neox = arch == "gptneox"
    if neox:
        w.add_layer_norm_eps(cfg["layer_norm_eps"])
        w.add_parallel_residual(cfg["use_parallel_residual"])
        d_head = cfg["hidden_size"] // cfg["num_attention_heads"]
        w.add_rope_dimension_count(int(d_head * cfg["rope_parameters"]["partial_rotary_factor"]))
    else:
        w.add_head_count_kv(cfg["num_key_value_heads"])
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    rope = cfg.get("rope_parameters", {})
    rope = rope.get("full_attention", rope)
    w.add_rope_freq_base(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    if "head_dim" in cfg:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    if cfg.get("sliding_window") and arch != "llama":
        w.add_sliding_window(cfg["sliding_window"])
    if cfg.get("attn_logit_softcapping"):
        w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
    if cfg.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    tok = json.load(open(os.path.join(src, "tokenizer.json")))
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    special = {a["id"] for a in tok["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE[family])
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if i in special else 1 for _, i in vocab])
    merges = tok["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_add_bos_token(True)

    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    for name, t in sorted(load_file(os.path.join(src, "model.safetensors")).items()):
        t = t.astype(np.float32)
        if neox:
            w.add_tensor(neox_name(name), neox_tensor(name, t, heads))
            continue
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            out = "output.weight"
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            module, kind = rest.rsplit(".", 1)
            if module == "post_attention_layernorm":
                module = "post_attention_norm" if gemma else "ffn_norm"
            elif module == "pre_feedforward_layernorm":
                module = "ffn_norm"
            else:
                module = NAMES[module]
            out = f"blk.{layer}.{module}.{kind}"
            if arch == "llama" and module in ("attn_q", "attn_k"):
                t = permute(t, heads if module == "attn_q" else kv)
        if gemma and out.endswith("norm.weight"):
            t = t + 1.0
        w.add_tensor(out, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(family, os.path.getsize(os.path.join(FIX, "gguf", f"{family}.gguf")), "bytes")


def main():
    os.makedirs(os.path.join(FIX, "gguf"), exist_ok=True)
    for family in ARCH:
        write(family)
    from transformers import AutoTokenizer
    from texts import COMMON_TEXTS
    tok = AutoTokenizer.from_pretrained(os.path.join(FIX, "gguf"), gguf_file="qwen2.gguf")
    texts = COMMON_TEXTS + ["digits 1234567 and\r\nCRLF  , punctuation!!\n\n"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    with open(os.path.join(ROOT, "tests", "reference", "gguf_qwen2_tokenizer_ids.json"), "w") as f:
        json.dump({"texts": texts, "ids": ids}, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
