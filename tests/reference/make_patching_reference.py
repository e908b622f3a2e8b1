"""Reference values for hooklens's ablation and patching tests (tests/patching.rs), from
TransformerLens 4.3 (transformer_lens.patching) and hand-written torch.

Run with the peers environment (../shared/peers/setup.sh), from the repository root:
    ~/.cache/hooklens-peers/venv/bin/python tests/reference/make_patching_reference.py

On the IOI pair "When Mary and John went to the store, John gave a drink to" (clean) and
"... Mary gave a drink to" (corrupted), answer " Mary", wrong " John", metric the raw logit
difference at the last position, for the random GPT-2 fixture and SmolLM2, both after
enable_compatibility_mode() (hooklens's default processing), it writes
tests/reference/patching_ref.safetensors with:
- `{key}.ablate_heads` [L, H]: the clean run's metric with head (L, H) zero-ablated (hook_z);
- `{key}.resid_pre`, `.attn_out`, `.mlp_out` [L, pos]: get_act_patch_resid_pre / _attn_out /
  _mlp_out (clean activations patched into the corrupted run);
- `{key}.head_out_all_pos`, `.head_pattern_all_pos` [L, H]: get_act_patch_attn_head_out_all_pos /
  _attn_head_pattern_all_pos;
- `{key}.clean`, `.corrupted`: the metric of the two runs;
- `{key}.attr_resid_pre` [L, pos], `.attr_head_out` [L, H]: attribution patching, the sum of
  (clean - corrupted) * d metric / d activation at the corrupted run, by torch autograd (one
  forward, one backward), for resid_pre and each head's z (summed over positions and d_head).
"""
import os
import sys

import torch
from safetensors.torch import save_file
from transformer_lens import patching

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_resid_reference import gpt2_bridge, smollm2_bridge  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REF = os.path.join(ROOT, "tests", "reference")
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
ANSWER, WRONG = " Mary", " John"


def record(out, key, bridge, bos):
    clean = bridge.to_tokens(CLEAN, prepend_bos=bos)
    corrupted = bridge.to_tokens(CORRUPTED, prepend_bos=bos)
    assert clean.shape == corrupted.shape
    a, w = bridge.to_single_token(ANSWER), bridge.to_single_token(WRONG)

    def metric(logits):
        return logits[0, -1, a] - logits[0, -1, w]

    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    with torch.no_grad():
        clean_logits, clean_cache = bridge.run_with_cache(clean)
        out[f"{key}.clean"] = metric(clean_logits).reshape(1).float()
        out[f"{key}.corrupted"] = metric(bridge(corrupted)).reshape(1).float()
        out[f"{key}.tokens_clean"] = clean[0].to(torch.int64)
        out[f"{key}.tokens_corrupted"] = corrupted[0].to(torch.int64)

        ablate = torch.zeros(n_layers, n_heads)
        for layer in range(n_layers):
            for head in range(n_heads):
                def zero(z, hook, head=head):
                    z = z.clone()
                    z[:, :, head, :] = 0.0
                    return z
                logits = bridge.run_with_hooks(clean, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)])
                ablate[layer, head] = metric(logits)
        out[f"{key}.ablate_heads"] = ablate

        for name, fn in [
            ("resid_pre", patching.get_act_patch_resid_pre),
            ("attn_out", patching.get_act_patch_attn_out),
            ("mlp_out", patching.get_act_patch_mlp_out),
            ("head_out_all_pos", patching.get_act_patch_attn_head_out_all_pos),
            ("head_pattern_all_pos", patching.get_act_patch_attn_head_pattern_all_pos),
        ]:
            out[f"{key}.{name}"] = fn(bridge, corrupted, clean_cache, metric).float().contiguous()

    # Attribution patching by hand: add a zero tensor that requires grad at each hook point,
    # so its gradient is d metric / d activation with every path through the model intact.
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]
    names += [f"blocks.{l}.attn.hook_z" for l in range(n_layers)]
    acts, deltas = {}, {}

    def add_delta(x, hook, name):
        d = torch.zeros_like(x, requires_grad=True)
        deltas[name] = d
        acts[name] = x.detach()
        return x + d

    hooks = [(n, lambda x, hook, n=n: add_delta(x, hook, n)) for n in names]
    logits = bridge.run_with_hooks(corrupted, fwd_hooks=hooks)
    metric(logits).backward()
    resid = torch.zeros(n_layers, corrupted.shape[1])
    heads = torch.zeros(n_layers, n_heads)
    for l in range(n_layers):
        n = f"blocks.{l}.hook_resid_pre"
        resid[l] = ((clean_cache[n] - acts[n]) * deltas[n].grad)[0].sum(-1)
        n = f"blocks.{l}.attn.hook_z"
        heads[l] = ((clean_cache[n] - acts[n]) * deltas[n].grad)[0].sum((0, 2))
    out[f"{key}.attr_resid_pre"] = resid.detach().float()
    out[f"{key}.attr_head_out"] = heads.detach().float()


def main():
    out = {}
    bridge, bos = gpt2_bridge()
    bridge.enable_compatibility_mode()
    record(out, "gpt2", bridge, bos)
    bridge, bos = smollm2_bridge()
    bridge.enable_compatibility_mode()
    record(out, "smollm2", bridge, bos)
    save_file(out, os.path.join(REF, "patching_ref.safetensors"))
    print("wrote", len(out), "tensors", sum(t.numel() for t in out.values()), "numbers")
    for k, v in out.items():
        if v.numel() <= 2:
            print(k, v.tolist())


if __name__ == "__main__":
    main()
