"""Reference values for hooklens's residual-stream tests (tests/resid.rs), from TransformerLens 4.3.

Run with the peers environment (../shared/peers/setup.sh), from the repository root:
    ~/.cache/hooklens-peers/venv/bin/python tests/reference/make_resid_reference.py

On the IOI prompt "When Mary and John went to the store, John gave a drink to" (answer " Mary",
wrong " John"), for the random GPT-2 fixture and SmolLM2 (the GGUF that scripts/fetch_smollm2.sh
caches), unprocessed and after enable_compatibility_mode(), it writes
tests/reference/resid_ref.safetensors with, at the last position:
- accumulated_resid(apply_ln=True), decompose_resid(apply_ln=True), stack_head_results();
- logit_attrs of the raw accumulated, decomposed, head and full-decomposition stacks;
- get_full_resid_decomposition() (GPT-2: neurons expanded; SmolLM2: MLP layers, to keep the file
  small) and the logit_attrs of the neuron-expanded one;
- the logit lens at every position: top-5 ids and log-probs, entropy, rank and log-prob of " Mary";
and tests/reference/resid_labels.json with the labels of each stack.
"""
import json
import os
import subprocess

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, GPT2TokenizerFast
from transformer_lens.model_bridge import TransformerBridge
import shutil
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REF = os.path.join(ROOT, "tests", "reference")
FIX = os.path.join(ROOT, "tests", "fixtures", "gpt2-random")
ASSETS = os.path.join(ROOT, "assets", "gpt2")
PROMPT = "When Mary and John went to the store, John gave a drink to"
ANSWER, WRONG = " Mary", " John"


def gpt2_bridge():
    model = GPT2LMHeadModel.from_pretrained(FIX).eval()
    d = tempfile.mkdtemp()
    tok = GPT2TokenizerFast(os.path.join(ASSETS, "vocab.json"), os.path.join(ASSETS, "merges.txt"))
    tok.save_pretrained(d)
    tok = GPT2TokenizerFast.from_pretrained(d)
    shutil.copy(os.path.join(FIX, "config.json"), d)
    return TransformerBridge.boot_transformers(d, hf_model=model, tokenizer=tok, device="cpu"), True


def smollm2_bridge():
    gguf = subprocess.check_output([os.path.join(ROOT, "scripts", "fetch_smollm2.sh")], text=True).strip()
    d, name = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32).eval()
    return TransformerBridge.boot_transformers(d, hf_model=model, tokenizer=tok, device="cpu"), False


def record(out, labels, key, bridge, bos, expand_neurons):
    toks = bridge.to_tokens(PROMPT, prepend_bos=bos)
    a, w = bridge.to_single_token(ANSWER), bridge.to_single_token(WRONG)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(toks)
        out[f"{key}.tokens"] = toks[0].to(torch.int64)
        out[f"{key}.answers"] = torch.tensor([a, w], dtype=torch.int64)
        lp = torch.log_softmax(logits[0, -1].double(), -1)
        out[f"{key}.logit_diff"] = (logits[0, -1, a] - logits[0, -1, w]).reshape(1).float()
        stacks = {
            "accumulated": cache.accumulated_resid(pos_slice=-1, return_labels=True),
            "decomposed": cache.decompose_resid(pos_slice=-1, return_labels=True),
            "heads": cache.stack_head_results(pos_slice=-1, return_labels=True),
            "full": cache.get_full_resid_decomposition(pos_slice=-1, expand_neurons=expand_neurons, return_labels=True),
            "full_neurons": cache.get_full_resid_decomposition(pos_slice=-1, expand_neurons=True, return_labels=True),
        }
        for name, (stack, lab) in stacks.items():
            labels[f"{key}.{name}"] = lab
            out[f"{key}.{name}.attrs"] = cache.logit_attrs(stack, a, w, pos_slice=-1).float().contiguous()
            if name != "full_neurons":
                out[f"{key}.{name}"] = stack.float().contiguous()
        out[f"{key}.accumulated_ln"] = cache.accumulated_resid(pos_slice=-1, apply_ln=True).float().contiguous()
        out[f"{key}.decomposed_ln"] = cache.decompose_resid(pos_slice=-1, apply_ln=True).float().contiguous()
        top = cache.logit_lens(positions=None, top_k=5, return_type="log_probs")
        labels[f"{key}.lens"] = top.labels
        out[f"{key}.lens.top_ids"] = top.readout.top_ids.to(torch.int64).contiguous()
        out[f"{key}.lens.top_logprobs"] = top.readout.values.float().contiguous()
        out[f"{key}.lens.entropy"] = top.readout.entropy.float().contiguous()
        tgt = cache.logit_lens(positions=None, targets=ANSWER, return_type="log_probs")
        out[f"{key}.lens.target_rank"] = tgt.readout.target_ranks.to(torch.int64).contiguous()
        out[f"{key}.lens.target_logprob"] = tgt.readout.values.float().contiguous()
        out[f"{key}.final_logprobs_top"] = lp.topk(5).values.float()


def main():
    out, labels = {}, {}
    for model_name, make, expand in [("gpt2", gpt2_bridge, True), ("smollm2", smollm2_bridge, False)]:
        bridge, bos = make()
        for mode in ["unprocessed", "processed"]:
            if mode == "processed":
                bridge.enable_compatibility_mode()
            record(out, labels, f"{model_name}.{mode}", bridge, bos, expand)
            print(model_name, mode, "done")
    save_file(out, os.path.join(REF, "resid_ref.safetensors"))
    with open(os.path.join(REF, "resid_labels.json"), "w") as f:
        json.dump(labels, f, indent=0)
    print("wrote", len(out), "tensors", sum(t.numel() for t in out.values()), "numbers")


if __name__ == "__main__":
    main()
