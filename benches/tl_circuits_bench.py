"""TransformerLens side of hooklens's circuits benchmark: on the random GPT-2-small checkpoint of
benches/tl_reference_bench.py (written to MODEL_DIR if missing), times all_composition_scores('Q')
(and the peak memory it adds), the full SVD of one head's full QK circuit W_E·QK·W_Eᵀ, and the
copying scores of every head from the eigenvalues of W_E·OV·W_U; writes the medians as JSON.

    python benches/tl_circuits_bench.py MODEL_DIR OUT_JSON [--repeats 3]
"""
import argparse
import json
import os
import resource
import shutil
import tempfile

import torch
from bench_timing import median_time
from tl_reference_bench import ensure_model
from transformers import GPT2TokenizerFast
from transformer_lens.model_bridge import TransformerBridge


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out_json")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    model = ensure_model(a.model_dir)
    tok = GPT2TokenizerFast.from_pretrained(a.model_dir)
    bridge = TransformerBridge.boot_transformers(a.model_dir, hf_model=model, tokenizer=tok, device="cpu")
    bridge.enable_compatibility_mode()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    out = {}
    with torch.no_grad():
        before = peak_mb()
        out["composition_q_s"] = median_time(lambda: bridge.all_composition_scores("Q"), a.repeats)
        out["composition_q_peak_mb"] = peak_mb() - before
        out["full_qk_svd_s"] = median_time(lambda: (bridge.W_E @ bridge.QK[0][0] @ bridge.W_E.T).svd(), a.repeats)

        def copying():
            ev = (bridge.W_E @ bridge.OV @ bridge.W_U).eigenvalues
            return ev.real.sum(-1) / ev.abs().sum(-1)
        out["copying_s"] = median_time(copying, a.repeats)
    with open(a.out_json, "w") as f:
        json.dump(out, f, indent=1)
    print(out)


if __name__ == "__main__":
    main()
