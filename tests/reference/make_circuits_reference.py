"""Reference values for hooklens's circuit tests (tests/circuits.rs), from TransformerLens 4.3.

Run with the peers environment (../shared/peers/setup.sh), from the repository root:
    ~/.cache/hooklens-peers/venv/bin/python tests/reference/make_circuits_reference.py

For the random GPT-2 fixture (unprocessed and after enable_compatibility_mode()) and SmolLM2
(grouped-query attention; processed), writes tests/reference/circuits_ref.safetensors with:
- all_composition_scores('Q' | 'K' | 'V') [L, H, L, H];
- the singular values of every head's QK and OV [L, H, d_head];
- the eigenvalues (real, imaginary) of every head's full OV circuit W_E·OV·W_U, and the copying
  scores Re(sum) / sum |.| computed from them;
- the singular values of layer 0's full QK (W_E·QK·W_Eᵀ) and full OV circuits, and for GPT-2 the
  positional QK circuit W_pos·QK·W_posᵀ.
"""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_resid_reference import gpt2_bridge, smollm2_bridge  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REF = os.path.join(ROOT, "tests", "reference")


def record(out, key, bridge, positional):
    with torch.no_grad():
        for mode in "QKV":
            out[f"{key}.comp_{mode}"] = bridge.all_composition_scores(mode).scores.float().contiguous()
        out[f"{key}.qk_s"] = bridge.QK.S.float().contiguous()
        out[f"{key}.ov_s"] = bridge.OV.S.float().contiguous()
        full_ov = bridge.W_E @ bridge.OV @ bridge.W_U
        ev = full_ov.eigenvalues
        out[f"{key}.ov_eig_re"] = ev.real.float().contiguous()
        out[f"{key}.ov_eig_im"] = ev.imag.float().contiguous()
        out[f"{key}.copying"] = (ev.real.sum(-1) / ev.abs().sum(-1)).float().contiguous()
        out[f"{key}.full_qk0_s"] = (bridge.W_E @ bridge.QK[0] @ bridge.W_E.T).S.float().contiguous()
        out[f"{key}.full_ov0_s"] = (bridge.W_E @ bridge.OV[0] @ bridge.W_U).S.float().contiguous()
        if positional:
            out[f"{key}.pos_qk0_s"] = (bridge.W_pos @ bridge.QK[0] @ bridge.W_pos.T).S.float().contiguous()


def main():
    out = {}
    bridge, _ = gpt2_bridge()
    record(out, "gpt2.unprocessed", bridge, True)
    bridge.enable_compatibility_mode()
    record(out, "gpt2.processed", bridge, True)
    bridge, _ = smollm2_bridge()
    bridge.enable_compatibility_mode()
    record(out, "smollm2.processed", bridge, False)
    save_file(out, os.path.join(REF, "circuits_ref.safetensors"))
    print("wrote", len(out), "tensors", sum(t.numel() for t in out.values()), "numbers")


if __name__ == "__main__":
    main()
