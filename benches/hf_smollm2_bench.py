"""transformers side of hooklens's real-weights benchmark (SmolLM2 or Gemma 3): forward at
128/512 tokens and greedy generation tokens/s with and without the KV cache, on the same
dequantized GGUF weights and the same token ids (i * 7919 % the vocabulary). Run by
benches/run_smollm2_bench.sh with the peers environment.

    python benches/hf_smollm2_bench.py GGUF OUT_JSON
    python benches/hf_smollm2_bench.py GGUF --serve [--repeats 3]
        (the transformers side of benches/interleave_forward.py --reference hf)
"""
import argparse
import json
import os

import torch
from bench_timing import median_time, serve_forward
from transformers import AutoModelForCausalLM

NEW_TOKENS = 32
PROMPT = 16


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("out_json", nargs="?")
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(a.gguf), gguf_file=os.path.basename(a.gguf), torch_dtype=torch.float32).eval()
    vocab = model.config.vocab_size

    def ids(n):
        return torch.tensor([[(i * 7919) % vocab for i in range(n)]])

    if a.serve:
        return serve_forward(lambda n: model(ids(n)), a.repeats)
    out = {"threads": torch.get_num_threads(), "forward": {}, "generate": {}}
    with torch.no_grad():
        for n in (128, 512):
            out["forward"][str(n)] = median_time(lambda: model(ids(n)), a.repeats)
        p = ids(PROMPT)
        for cache in (True, False):
            gen = lambda: model.generate(p, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=cache)
            out["generate"]["kv_cache" if cache else "no_cache"] = NEW_TOKENS / median_time(gen, 2)
    print(out, flush=True)
    with open(a.out_json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
