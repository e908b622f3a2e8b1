"""TransformerLens side of hooklens's capture benchmark: run_with_cache in a loop over the same
contexts as a hooklens store (read from its shards with safetensors.numpy, no hooklens code),
the same hooks (names_filter) and depth (stop_at_layer), saving each batch's activations to
disk as .npy, as a TransformerLens user captures a dataset; and the bridge's bare forward of the
same depth. The TransformerLens side of benches/run_capture_bench.sh (benches/interleave.py, with
the peers environment): once loaded it answers "capture" and "forward" on stdin, one timed pass
over the contexts each (bench_timing.serve).

    python benches/tl_capture_bench.py GGUF STORE_DIR
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_timing import serve
from safetensors.numpy import load_file
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    gguf, store = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(os.cpu_count())
    spec = json.loads((store / "store.json").read_text())
    hooks = [h["name"] for h in spec["hooks"]]
    ids = np.concatenate([load_file(str(store / "shards" / f"{i:06d}.safetensors"))["token_id"] for i in range(spec["shards"])])
    contexts = torch.tensor(ids.astype(np.int64)).reshape(-1, spec["context_len"])
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32).eval()
    bridge = TransformerBridge.boot_transformers(str(gguf.parent), hf_model=hf, tokenizer=tok, device="cpu")
    bridge.enable_compatibility_mode()
    batch, stop = spec["contexts_per_batch"], spec["stop_at_layer"]
    out_dir = Path(tempfile.mkdtemp())

    def capture(n_contexts=len(contexts)):
        for b, start in enumerate(range(0, n_contexts, batch)):
            _, cache = bridge.run_with_cache(contexts[start:start + batch], names_filter=hooks, stop_at_layer=stop)
            for h in hooks:
                x = cache[h]
                np.save(out_dir / f"{h}.{b:06d}.npy", x.reshape(-1, *x.shape[2:]).numpy())

    def forward():
        for start in range(0, len(contexts), batch):
            bridge(contexts[start:start + batch], stop_at_layer=stop)

    def timed(f):
        def answer():
            with torch.no_grad():
                t0 = time.perf_counter()
                f()
                seconds = time.perf_counter() - t0
            return {"seconds": seconds, "tokens_per_s": contexts.numel() / seconds}
        return answer

    with torch.no_grad():
        capture(batch)  # warm-up (one batch), and the check that it runs
    serve({"capture": timed(capture), "forward": timed(forward)},
          {"tokens": int(contexts.numel()), "batch": batch, "stop_at_layer": stop, "hooks": hooks})


if __name__ == "__main__":
    main()
