"""SAELens 6 reading the SAEs and transcoder that hooklens trained and saved (`train_sae`), for
tests/sae_train.rs: each folder under tests/fixtures/saes/trained-* must load in SAELens as it
is, and SAELens's encode and output on an input must equal hooklens's.

The folders were made on the embedded model's stores of the committed tiny corpus:

    cargo run --release --bin capture -- --hooks blocks.1.hook_resid_post --run emb
    cargo run --release --bin capture -- --hooks blocks.1.hook_resid_pre,blocks.1.hook_attn_out --run emb2
    T="cargo run --release --bin train_sae -- --expansion-factor 2 --batch 128 --normalize-activations"
    $T --store outputs/capture/emb --k 8 --dead-steps 20 --run fixture                   # trained-topk
    $T --store outputs/capture/emb --architecture batchtopk --k 8 --dead-steps 20 --run fx-batchtopk
    $T --store outputs/capture/emb --architecture relu --l1-coefficient 0.5 --dead-steps 20 --run fx-relu
    $T --store outputs/capture/emb2 --hook blocks.1.hook_resid_pre --hook-out blocks.1.hook_attn_out \
       --architecture jumprelu --l0-coefficient 0.1 --skip --run fx-jumprelu-tc   # trained-jumprelu-skip-transcoder

each run's `sae/` copied to its folder; then, in SAELens's venv (tests/reference/setup_saelens.sh):

    ~/.cache/hooklens-peers/saelens/bin/python tests/reference/make_trained_sae_reference.py

Writes tests/reference/trained_sae_ref.safetensors: for each folder F, `F.x` [32, 64] (rows of
its store's first shard at its input hook), `F.acts` (SAELens's encode) and `F.out` (its output:
the decode of those acts, plus the skip for a skip transcoder).
"""
from pathlib import Path

import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file
from sae_lens import SAE

ROOT = Path(__file__).resolve().parents[2]
SHARD = "shards/000000.safetensors"
FOLDERS = {
    "trained-topk": "emb",
    "trained-batchtopk": "emb",
    "trained-relu": "emb",
    "trained-jumprelu-skip-transcoder": "emb2",
}

out = {}
for folder, store in FOLDERS.items():
    sae = SAE.load_from_disk(str(ROOT / "tests/fixtures/saes" / folder), device="cpu")
    hook = sae.cfg.metadata.hook_name
    print(folder, type(sae).__name__, sae.cfg.d_in, sae.cfg.d_sae, hook)
    rows = load_file(str(ROOT / "outputs/capture" / store / SHARD))[hook][1:33]
    x = torch.from_numpy(rows.copy()).float()
    with torch.no_grad():
        acts = sae.encode(x)
        y = sae(x)
    print(f"  L0 {(acts > 0).sum(-1).float().mean():.2f} on 32 rows")
    out |= {f"{folder}.x": x.contiguous(), f"{folder}.acts": acts.contiguous(),
            f"{folder}.out": y.contiguous()}
save_file(out, str(ROOT / "tests/reference/trained_sae_ref.safetensors"))
