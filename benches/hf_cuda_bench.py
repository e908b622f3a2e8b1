"""transformers side of hooklens's GPU benchmark (examples/bench_cuda.rs).

Writes a random GPT-2-small checkpoint (HF format, seeded as benches/tl_reference_bench.py does)
to MODEL_DIR if it is not there, then times transformers' GPT2LMHeadModel forward on the first
CUDA device, in f32 and bf16, on the token ids hooklens uses (ids i*7919 % 50257), and writes the
medians as JSON. Needs torch with CUDA and transformers (the GPU machine's image has both).

    python benches/hf_cuda_bench.py MODEL_DIR OUT_JSON [--shapes 1x128,1x512,1x1024,8x1024]
"""
import argparse
import json
import os

import torch
from bench_timing import median_time
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_model(d):
    if not os.path.exists(os.path.join(d, "model.safetensors")):
        torch.manual_seed(0)
        m = GPT2LMHeadModel(GPT2Config()).eval()  # GPT-2 small: 12 layers, d_model 768
        m.save_pretrained(d, safe_serialization=True)
        tok = GPT2TokenizerFast(os.path.join(ROOT, "assets/gpt2/vocab.json"), os.path.join(ROOT, "assets/gpt2/merges.txt"))
        tok.save_pretrained(d)
    return GPT2LMHeadModel.from_pretrained(d, attn_implementation="eager").eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out_json")
    ap.add_argument("--shapes", default="1x128,1x512,1x1024,8x1024")
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    os.makedirs(a.model_dir, exist_ok=True)
    model = ensure_model(a.model_dir).cuda()
    # TF32 off: hooklens multiplies in plain f32, so both sides do the same arithmetic.
    torch.backends.cuda.matmul.allow_tf32 = False
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": []}
    for dtype in [torch.float32, torch.bfloat16]:
        m = model.to(dtype)
        for shape in a.shapes.split(","):
            b, n = (int(x) for x in shape.split("x"))
            t = torch.tensor([[(i * 7919) % 50257 for i in range(n)]] * b, device="cuda")

            def fwd():
                with torch.no_grad():
                    m(t)
                torch.cuda.synchronize()

            s = median_time(fwd, a.repeats)
            out["runs"].append({"dtype": str(dtype).removeprefix("torch."), "batch": b, "tokens": n, "forward_s": s})
            print(out["runs"][-1], flush=True)
    with open(a.out_json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
