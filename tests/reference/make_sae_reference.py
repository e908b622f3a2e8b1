"""Random SAEs of every architecture hooklens loads, written by SAELens 6 itself, and their
encode / decode / forward on a random input, for tests/sae.rs. Transcoders (plain, skip,
JumpReLU, JumpReLU skip) read the random GPT-2's blocks.1.ln2.hook_normalized and stand in for
its blocks.1.hook_mlp_out.

    tests/reference/setup_saelens.sh      # SAELens 6.54.12 in its own venv (TransformerLens < 4)
    ~/.cache/hooklens-peers/saelens/bin/python tests/reference/make_sae_reference.py

Writes tests/fixtures/saes/<name>/{cfg.json, sae_weights.safetensors} (SAELens's own save_model /
save_inference_model), the `jumprelu_gemma` weights again as Gemma Scope 1 (`params.npz`) and
Gemma Scope 2 (`params.safetensors` + `config.json`) lay them out, and tests/reference/sae_ref.safetensors: per SAE `<name>.x` [10, 64] (the
input), `<name>.acts` (encode), `<name>.recons` (decode of those), `<name>.out` (forward). d_in 64
is the embedded model's d_model; every parameter is randomised (thresholds positive) so that
biases, thresholds and gates all matter.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file as save_np
from safetensors.torch import save_file
from sae_lens import (GatedSAE, GatedSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig,
                      TopKSAE, TopKSAEConfig)
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.transcoder import (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig, JumpReLUTranscoder,
                                      JumpReLUTranscoderConfig, SkipTranscoder, SkipTranscoderConfig, Transcoder,
                                      TranscoderConfig)

ROOT = Path(__file__).resolve().parent.parent
D_IN, D_SAE, HOOK = 64, 96, "blocks.0.hook_resid_post"
# Transcoders stand in for an MLP: the random GPT-2 fixture's layer 1 (d_model 32).
TC_D, TC_SAE, TC_IN, TC_OUT = 32, 48, "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


def meta():
    return SAEMetadata(hook_name=HOOK, model_name="embedded-induction-2l")


def randomise(sae, gen):
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if name.startswith("W") else 0.5))
            if name == "threshold":
                p.copy_(p.abs() * 0.5)
    return sae


def main():
    gen = torch.Generator().manual_seed(0)
    saes = {
        "standard": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta())),
        "standard_no_b_dec_in": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False, metadata=meta())),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta())),
        "topk": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=8, metadata=meta())),
        "topk_rescaled": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=8, rescale_acts_by_decoder_norm=True, metadata=meta())),
        "gated": GatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta())),
    }
    tc_meta = lambda: SAEMetadata(hook_name=TC_IN, hook_name_out=TC_OUT, model_name="gpt2-random")
    tc = dict(d_in=TC_D, d_sae=TC_SAE, d_out=TC_D, apply_b_dec_to_input=False)
    saes.update({
        "transcoder": Transcoder(TranscoderConfig(**tc, metadata=tc_meta())),
        "skip_transcoder": SkipTranscoder(SkipTranscoderConfig(**tc, metadata=tc_meta())),
        "jumprelu_transcoder": JumpReLUTranscoder(JumpReLUTranscoderConfig(**tc, metadata=tc_meta())),
        "jumprelu_skip_transcoder": JumpReLUSkipTranscoder(JumpReLUSkipTranscoderConfig(**tc, metadata=tc_meta())),
    })
    # Gemma Scope's SAEs are JumpReLU without b_dec subtracted from the input; the same
    # weights are also written in Gemma Scope 1 (params.npz) and 2 (params.safetensors) layouts.
    saes["jumprelu_gemma"] = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False, metadata=meta()))
    ref = {}
    out_root = ROOT / "fixtures" / "saes"
    for name, sae in saes.items():
        randomise(sae, gen)
        d = out_root / name
        shutil.rmtree(d, ignore_errors=True)
        sae.save_model(d)
    gemma = {k.lower(): v.detach().numpy() for k, v in saes["jumprelu_gemma"].state_dict().items()}
    gs1 = out_root / "gemma-scope-2b-pt-res" / "layer_0" / "width_16k" / "average_l0_50"
    shutil.rmtree(out_root / "gemma-scope-2b-pt-res", ignore_errors=True)
    gs1.mkdir(parents=True)
    np.savez(gs1 / "params.npz", **gemma)
    gs2 = out_root / "gemma-scope-2-270m-pt" / "resid_post" / "layer_0_width_16k_l0_medium"
    shutil.rmtree(out_root / "gemma-scope-2-270m-pt", ignore_errors=True)
    gs2.mkdir(parents=True)
    save_np(gemma, str(gs2 / "params.safetensors"))
    (gs2 / "config.json").write_text(json.dumps({"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt", "hf_hook_point_in": "model.layers.0.output"}))
    # BatchTopK trains with a batch-level top-k and is saved for inference with a threshold,
    # as SAELens runs it after training.
    bt = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=8, metadata=meta()))
    randomise(bt, gen)
    with torch.no_grad():
        bt.topk_threshold.fill_(0.7)
    d = out_root / "batchtopk"
    shutil.rmtree(d, ignore_errors=True)
    bt.save_inference_model(d)
    from sae_lens import SAE
    for name in list(saes) + ["batchtopk"]:
        sae = SAE.load_from_disk(str(out_root / name))
        x = torch.randn(10, sae.cfg.d_in, generator=gen) * 2
        with torch.no_grad():
            acts = sae.encode(x)
            ref[f"{name}.x"] = x
            ref[f"{name}.acts"] = acts
            ref[f"{name}.recons"] = sae.decode(acts)
            ref[f"{name}.out"] = sae(x)
        print(name, sae.cfg.architecture(), "active per row", (acts != 0).sum(-1).float().mean().item())
    save_file({k: v.contiguous() for k, v in ref.items()}, str(ROOT / "reference" / "sae_ref.safetensors"))


if __name__ == "__main__":
    main()
