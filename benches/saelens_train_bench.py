"""SAELens side of hooklens's SAE training benchmark: a TopK SAE trained as SAELens 6's
SAETrainer trains it (TopKTrainingSAE.training_forward_pass, backward, gradient clipping at 1,
Adam), once with its default dense activations and once with `use_sparse_activations` (sparse
decode), on the same activations as hooklens: the first STEPS x BATCH rows of a hooklens store's
hook (read with safetensors.numpy, no hooklens code) in a seeded order, the next 8192 rows held
out. Run by benches/run_train_sae_bench.sh in SAELens's venv (tests/reference/setup_saelens.sh).

    python benches/saelens_train_bench.py STORE HOOK BATCH STEPS K D_SAE LR OUT_JSON
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
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
    held = torch.from_numpy(x[steps * batch:])
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
    res = {"tokens_per_s": (steps - 1) * batch / secs, "seconds": secs, "mse": mse,
           "explained_variance": ev, "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(f"SAELens ({'sparse' if sparse else 'dense'} activations): {res['tokens_per_s']:.0f} tokens/s over "
          f"{steps - 1} steps, held-out MSE {mse:.4f}, explained variance {ev:.4f}")
    return res


def main():
    store, hook = Path(sys.argv[1]), sys.argv[2]
    batch, steps, k, d_sae = (int(v) for v in sys.argv[3:7])
    lr, out_json = float(sys.argv[7]), sys.argv[8]
    torch.set_num_threads(os.cpu_count())
    x = rows(store, hook, steps * batch + HELD_OUT)
    res = {}
    for name, sparse in (("dense", False), ("sparse", True)):
        try:
            res[name] = train(x, batch, steps, k, d_sae, lr, sparse)
        except (NotImplementedError, RuntimeError) as e:  # sparse training is not supported on every backend
            res[name] = {"error": str(e).splitlines()[0][:200]}
            print(f"SAELens ({name} activations) fails: {res[name]['error']}")
    Path(out_json).write_text(json.dumps(res))


if __name__ == "__main__":
    main()
