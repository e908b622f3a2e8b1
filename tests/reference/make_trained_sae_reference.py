"""SAELens 6 reading an SAE that hooklens trained and saved (`train_sae`), for tests/sae_train.rs:
the folder tests/fixtures/saes/trained-topk must load in SAELens as it is, and SAELens's encode
and decode on an input must equal hooklens's.

The folder was made on the embedded model's store of the committed tiny corpus:

    cargo run --release --bin capture -- --hooks blocks.1.hook_resid_post --run emb
    cargo run --release --bin train_sae -- --store outputs/capture/emb --expansion-factor 2 --k 8 \
        --batch 128 --normalize-activations --dead-steps 20 --run fixture
    cp -r outputs/train_sae/fixture/sae tests/fixtures/saes/trained-topk

then, in SAELens's venv (tests/reference/setup_saelens.sh):

    ~/.cache/hooklens-peers/saelens/bin/python tests/reference/make_trained_sae_reference.py

Writes tests/reference/trained_sae_ref.safetensors: `x` [32, 64] (rows of the store's first
shard), `acts` (SAELens's encode) and `recons` (its decode of them).
"""
from pathlib import Path

import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file
from sae_lens import SAE

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "tests/fixtures/saes/trained-topk"
STORE_SHARD = ROOT / "outputs/capture/emb/shards/000000.safetensors"

sae = SAE.load_from_disk(str(FOLDER), device="cpu")
print(type(sae).__name__, sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.metadata.hook_name)
x = torch.from_numpy(load_file(str(STORE_SHARD))["blocks.1.hook_resid_post"][1:33].copy()).float()
with torch.no_grad():
    acts = sae.encode(x)
    recons = sae.decode(acts)
ev = 1 - ((recons - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
print(f"L0 {(acts > 0).sum(-1).float().mean():.2f}, explained variance {ev:.3f} on 32 rows")
save_file({"x": x.contiguous(), "acts": acts.contiguous(), "recons": recons.contiguous()},
          str(ROOT / "tests/reference/trained_sae_ref.safetensors"))
