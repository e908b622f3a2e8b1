"""An untrained SAE for a store's hook, written as a SAELens folder: the plumbing stand-in for the
committed SAE dashboards until a trained SAE (`train_sae`) replaces it. Not a result about the model.

Each feature's encoder direction is one token's centred activation, drawn at random from the
store's first shard and normalised; its bias sets the feature to fire on `--density` of those
tokens. The decoder is the ridge least-squares fit of the activations from the codes, so the
reconstruction (and the CE loss recovered) is what such a dictionary can do, not zero.

    python scripts/plumbing_sae.py --store outputs/capture/r6 --hook blocks.6.hook_resid_post \
        --d-sae 2048 --out outputs/saes/smollm2-l6-plumbing

Needs numpy and safetensors (notebooks/requirements.txt).
"""

import argparse
import json
import os
import pathlib

import numpy as np
from safetensors.numpy import load_file, save_file


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="a capture run folder")
    p.add_argument("--hook", required=True, help="the store's hook, e.g. blocks.6.hook_resid_post")
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--density", type=float, default=0.01, help="fraction of tokens each feature fires on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the SAELens folder to write (must not exist)")
    a = p.parse_args()

    out = pathlib.Path(a.out)
    if out.exists():
        raise SystemExit(f"{out} exists: choose another --out or remove it")
    store = pathlib.Path(a.store)
    spec = json.loads((store / "store.json").read_text())
    shard = load_file(str(store / "shards" / "000000.safetensors"))
    if a.hook not in shard:
        raise SystemExit(f"{a.hook} is not in the store; it holds {sorted(k for k in shard if k.startswith('blocks'))}")
    x = shard[a.hook].astype(np.float32)  # [tokens, d_in]
    keep = shard["position"] > 0  # the first position's residual is an outlier (attention sink)
    x = x[keep]
    rng = np.random.default_rng(a.seed)
    b_dec = x.mean(0)
    xc = x - b_dec

    rows = rng.choice(len(xc), size=a.d_sae, replace=False)
    w = xc[rows] / np.linalg.norm(xc[rows], axis=1, keepdims=True)  # [d_sae, d_in]
    proj = xc @ w.T  # [tokens, d_sae]
    b_enc = -np.quantile(proj, 1 - a.density, axis=0).astype(np.float32)
    acts = np.maximum(proj + b_enc, 0)  # [tokens, d_sae]
    ridge = 1e-3 * np.trace(acts.T @ acts) / a.d_sae
    w_dec = np.linalg.solve(acts.T @ acts + ridge * np.eye(a.d_sae, dtype=np.float32), acts.T @ xc)

    cfg = {
        "architecture": "standard",
        "d_in": int(x.shape[1]),
        "d_sae": a.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "hook_name": a.hook,
            "model_name": spec["provenance"]["model"],
            "hooklens_note": "untrained plumbing SAE (scripts/plumbing_sae.py): data-sampled encoder, least-squares decoder",
        },
    }
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True)
    save_file(
        {
            "W_enc": np.ascontiguousarray(w.T, dtype=np.float32),
            "b_enc": b_enc,
            "W_dec": np.ascontiguousarray(w_dec, dtype=np.float32),
            "b_dec": b_dec.astype(np.float32),
        },
        str(tmp / "sae_weights.safetensors"),
    )
    (tmp / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    os.rename(tmp, out)
    ev = 1 - ((xc - acts @ w_dec) ** 2).sum() / (xc**2).sum()
    print(f"{out}: d_sae {a.d_sae}, L0 {(acts > 0).sum(1).mean():.1f}, explained variance {ev:.3f} on the shard it was fitted to")


if __name__ == "__main__":
    main()
