"""Spliced SAEs and transcoders in SAELens 6's HookedSAETransformer, for tests/sae_splice.rs.

The model is the random GPT-2 fixture (tests/fixtures/gpt2-random, 3 layers, d_model 32) loaded
into TransformerLens 3.9 without weight processing; random SAEs, written by SAELens itself,
splice at blocks.1.hook_resid_pre (standard, JumpReLU, TopK, gated) and at blocks.0.attn.hook_z
(standard, reshape_activations "hook_z"); the transcoders of make_sae_reference.py read
blocks.1.ln2.hook_normalized and write blocks.1.hook_mlp_out.

    tests/reference/setup_saelens.sh      # SAELens 6.54.12 in its own venv (TransformerLens < 4)
    ~/.cache/hooklens-peers/saelens/bin/python tests/reference/make_sae_reference.py
    ~/.cache/hooklens-peers/saelens/bin/python tests/reference/make_sae_splice_reference.py

Writes tests/fixtures/saes/gpt2-random/<name>/ and tests/reference/sae_splice_ref.safetensors:
- `tokens` [2, 12] (the corrupted prompts of the attribution check), `clean_tokens`, `logits`
  (the model without SAEs; checked against transformers' GPT2LMHeadModel here). Every logits
  tensor keeps the first 256 of the 50,257 vocabulary columns, to keep the file small;
- per SAE: `<name>.spliced` (logits, the SAE's output replacing the activation),
  `<name>.acts` (hook_sae_acts_post of that run), `<name>.error_term` (logits with the error
  term), `<name>.feature` (the feature with the largest mean activation) and `<name>.ablated`
  (logits with the error term and that feature zeroed at hook_sae_acts_post);
- `multi.spliced`: standard at blocks.1.hook_resid_pre, hook_z at blocks.0 and the transcoder at
  once;
- `standard.attribution` [d_sae]: attribution patching of each feature of the standard SAE
  (error term on) from `clean_tokens` into `tokens`, metric the mean logit difference of
  `answers` over `wrong` at the last position: sum over positions of (clean − corrupted)
  acts · ∂metric/∂acts.

SAELens's HookedSAETransformer runs a skip transcoder without its skip connection (it calls
encode and decode, not forward); for the two skip transcoders `.spliced` is instead computed with
plain hooks, the transcoder's forward (skip included) replacing hook_mlp_out, as hooklens splices
them. The error-term runs are SAELens's for every transcoder.
"""
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from sae_lens import (SAE, GatedSAE, GatedSAEConfig, HookedSAETransformer, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE,
                      StandardSAEConfig, TopKSAE, TopKSAEConfig)
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
from transformers import GPT2LMHeadModel

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "saes" / "gpt2-random"
RESID, Z = "blocks.1.hook_resid_pre", "blocks.0.attn.hook_z"
D, D_SAE = 32, 48
ANSWERS, WRONG = [11, 13], [17, 19]
VOCAB_KEPT = 256


def load_model():
    hf = GPT2LMHeadModel.from_pretrained(ROOT / "fixtures" / "gpt2-random").eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=4 * c.n_embd, n_ctx=c.n_positions, d_vocab=c.vocab_size, act_fn="gelu_new",
        normalization_type="LN", eps=c.layer_norm_epsilon, original_architecture="GPT2LMHeadModel")
    model = HookedSAETransformer(cfg)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)
    return model.eval(), hf


def randomise(sae, gen):
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if name.startswith("W") else 0.5))
            if name == "threshold":
                p.copy_(p.abs() * 0.5)
    return sae


def make_saes(gen):
    meta = lambda hook: SAEMetadata(hook_name=hook, model_name="gpt2-random")
    base = dict(d_in=D, d_sae=D_SAE)
    saes = {
        "standard": StandardSAE(StandardSAEConfig(**base, metadata=meta(RESID))),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(**base, metadata=meta(RESID))),
        "topk": TopKSAE(TopKSAEConfig(**base, k=6, metadata=meta(RESID))),
        "gated": GatedSAE(GatedSAEConfig(**base, metadata=meta(RESID))),
        "hook_z": StandardSAE(StandardSAEConfig(**base, reshape_activations="hook_z", metadata=meta(Z))),
    }
    shutil.rmtree(OUT, ignore_errors=True)
    for name, sae in saes.items():
        randomise(sae, gen)
        sae.save_model(OUT / name)
    return {name: SAE.load_from_disk(str(OUT / name)) for name in saes}


def writes(sae):
    return sae.cfg.metadata.hook_name_out or sae.cfg.metadata.hook_name


def run(model, tokens, saes, error_term, hooks=()):
    model.reset_saes()
    for sae in saes:
        model.add_sae(sae, use_error_term=error_term)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        if hooks:
            logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))
    model.reset_saes()
    return logits, cache


def with_forward(model, tokens, tc):
    """The transcoder's forward (skip included) replacing its output hook, by plain hooks."""
    seen = {}
    hooks = [(tc.cfg.metadata.hook_name, lambda x, hook: seen.__setitem__("x", x)),
             (writes(tc), lambda y, hook: tc(seen["x"]))]
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=hooks)


def main():
    gen = torch.Generator().manual_seed(7)
    model, hf = load_model()
    tokens = torch.randint(0, 50257, (2, 12), generator=gen)
    clean_tokens = torch.randint(0, 50257, (2, 12), generator=gen)
    with torch.no_grad():
        logits = model(tokens)
        diff = (logits - hf(tokens).logits).abs().max().item()
    assert diff < 1e-4, f"TransformerLens and transformers disagree by {diff}"
    ref = {"tokens": tokens, "clean_tokens": clean_tokens, "logits": logits}
    saes = make_saes(gen)
    for name in ["transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"]:
        saes[name] = SAE.load_from_disk(str(ROOT / "fixtures" / "saes" / name))
    for name, sae in saes.items():
        acts_name = f"{writes(sae)}.hook_sae_acts_post"
        spliced, cache = run(model, tokens, [sae], False)
        acts = cache[acts_name]
        if "skip" in name:
            spliced = with_forward(model, tokens, sae)
        feature = int(acts.flatten(0, 1).mean(0).argmax())

        def zero(a, hook):
            a[..., feature] = 0.0
            return a

        error_term, _ = run(model, tokens, [sae], True)
        ablated, _ = run(model, tokens, [sae], True, hooks=[(acts_name, zero)])
        ref.update({f"{name}.spliced": spliced, f"{name}.acts": acts, f"{name}.error_term": error_term,
                    f"{name}.feature": torch.tensor([feature]), f"{name}.ablated": ablated})
        print(name, "spliced vs clean", (spliced - logits).abs().max().item(), "error term vs clean",
              (error_term - logits).abs().max().item(), "ablated", (ablated - logits).abs().max().item())
    ref["multi.spliced"], _ = run(model, tokens, [saes["standard"], saes["hook_z"], saes["transcoder"]], False)

    # Attribution patching of the standard SAE's features, error term on.
    sae = saes["standard"]
    acts_name = f"{RESID}.hook_sae_acts_post"
    model.reset_saes()
    model.add_sae(sae, use_error_term=True)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens)
    grabbed = {}

    def keep(a, hook):
        a.retain_grad()
        grabbed["acts"] = a
        return a

    logits = model.run_with_hooks(tokens, fwd_hooks=[(acts_name, keep)])
    last = logits[:, -1, :]
    rows = torch.arange(2)
    metric = (last[rows, ANSWERS] - last[rows, WRONG]).mean()
    metric.backward()
    acts = grabbed["acts"]
    ref["standard.attribution"] = ((clean_cache[acts_name] - acts.detach()) * acts.grad).sum((0, 1))
    model.reset_saes()
    small = lambda v: v[..., :VOCAB_KEPT] if v.shape[-1] == 50257 else v
    save_file({k: small(v.detach()).contiguous().float() if v.is_floating_point() else v.contiguous()
               for k, v in ref.items()}, str(ROOT / "reference" / "sae_splice_ref.safetensors"))


if __name__ == "__main__":
    main()
