"""SAELens side of hooklens's SAE training benchmark: a TopK SAE trained as SAELens 6's
SAETrainer trains it (TopKTrainingSAE.training_forward_pass, backward, gradient clipping at 1,
Adam), once with its default dense activations and once with `use_sparse_activations` (sparse
decode), on the same activations as hooklens: the first STEPS x BATCH rows of a hooklens store's
hook (read with safetensors.numpy, no hooklens code) in a seeded order, the next 8192 rows held
out. The SAELens side of benches/run_train_sae_bench.sh (benches/interleave.py, in SAELens's
venv, tests/reference/setup_saelens.sh): once loaded it answers "train" on stdin with one
seeded training run from a fresh SAE (bench_timing.serve); its header says whether training
with `use_sparse_activations` works on this backend (one step tried), and --sparse times that.

    python benches/saelens_train_bench.py STORE HOOK BATCH STEPS K D_SAE LR [--sparse]
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_timing import serve
from safetensors.numpy import load_file
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

HELD_OUT = 8192


def rows(store: Path, hook: str, n: int) -> np.ndarray:
    spec = json.loads((store / "store.json").read_text())
    out, have = [], 0
    for i in range(spec["shards"]):
        x = load_file(str(store / "shards" / f"{i:06d}.safetensors"))[hook]
        out.append(x.reshape(x.shape[0], -1).astype(np.float32))
        have += x.shape[0]
        if have >= n:
            break
    x = np.concatenate(out)
    if len(x) < n:
        sys.exit(f"the store holds {len(x)} rows of {hook}, the benchmark needs {n}")
    return x[:n]


def train(x, batch, steps, k, d_sae, lr, sparse):
    torch.manual_seed(0)
    train = torch.from_numpy(x[: steps * batch][np.random.default_rng(0).permutation(steps * batch)])
    held = torch.from_numpy(x[-HELD_OUT:])
    cfg = TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=d_sae, k=k, dtype="float32", device="cpu",
                                apply_b_dec_to_input=True, aux_loss_coefficient=1.0,
                                use_sparse_activations=sparse)
    sae = TopKTrainingSAE(cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    since_fired = torch.zeros(d_sae)

    def step(i):
        sae_in = train[i * batch:(i + 1) * batch]
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=sae_in, coefficients={}, dead_neuron_mask=(since_fired > 1000).bool(),
            n_training_steps=i, is_logging_step=False))
        with torch.no_grad():
            fired = out.feature_acts.bool().sum(-2).bool()
            since_fired.add_(1)
            since_fired[fired] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    step(0)  # warm-up (allocations, thread pool), counted as a training step
    t = time.perf_counter()
    for i in range(1, steps):
        step(i)
    secs = time.perf_counter() - t
    with torch.no_grad():
        recons = sae(held)
        mse = ((recons - held) ** 2).sum(-1).mean().item()
        ev = 1 - ((recons - held) ** 2).sum().item() / ((held - held.mean(0)) ** 2).sum().item()
    return {"tokens_per_s": (steps - 1) * batch / secs, "seconds": secs, "mse": mse, "explained_variance": ev}


def main():
    store, hook = Path(sys.argv[1]), sys.argv[2]
    batch, steps, k, d_sae = (int(v) for v in sys.argv[3:7])
    lr, sparse = float(sys.argv[7]), "--sparse" in sys.argv[8:]
    torch.set_num_threads(os.cpu_count())
    x = rows(store, hook, steps * batch + HELD_OUT)
    try:
        train(x, batch, 2, k, d_sae, lr, True)
        sparse_works = "works"
    except (NotImplementedError, RuntimeError) as e:  # sparse training is not supported on every backend
        sparse_works = "fails: " + str(e).splitlines()[0][:200]
    if sparse and sparse_works != "works":
        sys.exit(f"SAELens training with use_sparse_activations {sparse_works}")
    train(x, batch, 2, k, d_sae, lr, sparse)  # warm-up
    serve({"train": lambda: train(x, batch, steps, k, d_sae, lr, sparse)},
          {"activations": "sparse" if sparse else "dense", "use_sparse_activations": sparse_works})


if __name__ == "__main__":
    main()
