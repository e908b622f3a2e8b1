"""transformers side of hooklens's real-weights benchmark (SmolLM2 or Gemma 3): forward at
128/512 tokens and greedy generation tokens/s with and without the KV cache, on the same
dequantized GGUF weights and the same token ids (i * 7919 % 49152). Run by
benches/run_smollm2_bench.sh with the peers environment.

    python benches/hf_smollm2_bench.py GGUF OUT_JSON
"""
import json
import os
import sys

import torch
from bench_timing import median_time
from transformers import AutoModelForCausalLM

NEW_TOKENS = 32
PROMPT = 16


def ids(n):
    return torch.tensor([[(i * 7919) % 49152 for i in range(n)]])


def main():
    gguf, out_json = sys.argv[1], sys.argv[2]
    torch.set_num_threads(os.cpu_count())
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf), torch_dtype=torch.float32).eval()
    out = {"threads": torch.get_num_threads(), "forward": {}, "generate": {}}
    with torch.no_grad():
        for n in (128, 512):
            out["forward"][str(n)] = median_time(lambda: model(ids(n)))
        p = ids(PROMPT)
        for cache in (True, False):
            gen = lambda: model.generate(p, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=cache)
            out["generate"]["kv_cache" if cache else "no_cache"] = NEW_TOKENS / median_time(gen, 2)
    print(out, flush=True)
    with open(out_json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
