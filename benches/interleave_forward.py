"""Interleaved forward benchmark (interleave.py's rounds): a reference (TransformerLens, or
transformers on a GGUF) and hooklens side by side, measured alternately so that the machine's
load falls on both alike. Each round starts a fresh process of each side (loaded once, then idle
between requests) and asks them in turn, --pairs times at every length: R H R H ... at 128
tokens, then at 512, ... (each pair's order swapped from the one before), each answer one
forward (or the median of --repeats); a round's ratio is the median of its pairs' ratios, each
comparing two forwards a moment apart, which the host's other tenants, who slow a machine for
seconds at a time, disturb least. Prints, per length, each side's median forward time over the
rounds with its spread ((max - min) / median), the median, min and max of the per-round ratios,
both sides' matmul rates from the same rounds, and the load average; then the Markdown table
for docs/benchmarks.md. Run by benches/run_bench.sh forward (TransformerLens on a random GPT-2 small)
and benches/run_smollm2_bench.sh (transformers on SmolLM2 or Gemma 3).

    python benches/interleave_forward.py MODEL HOOKLENS_BIN [--reference tl|hf] [--rounds 5]
        [--pairs 5] [--lengths 128,512,1024] [--repeats 1] [--out SUMMARY_JSON]

MODEL is the model directory (tl) or GGUF file (hf); both sides load the same one.
"""
import argparse
import datetime
import json
import os
import statistics
import sys

from interleave import pair_ratios, run_rounds, spread

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("hooklens_bin")
    ap.add_argument("--reference", choices=["tl", "hf"], default="tl")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lengths", default="128,512,1024")
    ap.add_argument("--pairs", type=int, default=5, help="forwards of each side, in turn, at each length in a round")
    ap.add_argument("--repeats", type=int, default=1, help="forwards an answer is the median of")
    ap.add_argument("--out")
    a = ap.parse_args()
    lengths = [int(n) for n in a.lengths.split(",")]
    ref_name = {"tl": "TL", "hf": "transformers"}[a.reference]
    script = {"tl": "tl_reference_bench.py", "hf": "hf_smollm2_bench.py"}[a.reference]
    commands = {
        "ref": [sys.executable, os.path.join(HERE, script), a.model, "--serve", "--repeats", str(a.repeats)],
        "hooklens": [a.hooklens_bin, "--model", a.model, "--serve", "--repeats", str(a.repeats)],
    }
    sides, loads = run_rounds(commands, [f"forward {n}" for n in lengths] + ["matmul"], a.rounds, a.pairs)

    def per_round(side, ask, field):
        """Each round's median of the side's answers."""
        return [statistics.median(x[field] for x in rd[ask]) for rd in sides[side]]

    def times(side, n):
        return per_round(side, f"forward {n}", "forward_s")

    torch_mm = per_round("ref", "matmul", "gflops")
    ours_mm = per_round("hooklens", "matmul", "gflops")
    header = sides["hooklens"][0]["header"]
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "reference": ref_name, "model": a.model,
        "rounds": a.rounds, "pairs": a.pairs, "repeats": a.repeats, "backend": header["backend"],
        "threads": header["threads"], "load_max": max(loads), "load_start": loads[0],
        "matmul_gflops": {"torch": statistics.median(torch_mm), "hooklens": statistics.median(ours_mm),
                          "torch_spread": spread(torch_mm), "hooklens_spread": spread(ours_mm)},
        "lengths": [],
    }
    for n in lengths:
        ref, ours = times("ref", n), times("hooklens", n)
        ratios = [pair_ratios(r[f"forward {n}"], h[f"forward {n}"], "forward_s")
                  for r, h in zip(sides["ref"], sides["hooklens"])]
        summary["lengths"].append({
            "tokens": n, "reference_s": statistics.median(ref), "reference_spread": spread(ref),
            "hooklens_s": statistics.median(ours), "hooklens_spread": spread(ours),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratio_spread": spread(ratios), "rounds_reference_s": ref, "rounds_hooklens_s": ours,
        })
    mm = summary["matmul_gflops"]
    print(f"\n{summary['date']}: {a.rounds} rounds of {a.pairs} pairs, {ref_name} and hooklens alternating at each "
          f"length, an answer the median of {a.repeats} forward(s); {summary['threads']} threads, "
          f"hooklens matmul {summary['backend']}")
    print(f"load average {summary['load_start']:.2f} at the start, at most {summary['load_max']:.2f}")
    print(f"f32 matmul 1024x768x3072: torch {mm['torch']:.1f} GFLOP/s (spread {100 * mm['torch_spread']:.0f} %), "
          f"hooklens {mm['hooklens']:.1f} (spread {100 * mm['hooklens_spread']:.0f} %), "
          f"ratio {mm['hooklens'] / mm['torch']:.2f}\n")
    print(f"| tokens | {ref_name} fwd (spread) | hooklens fwd (spread) | ratio, median | ratio, min–max |")
    print("|---|---|---|---|---|")
    for x in summary["lengths"]:
        print(f"| {x['tokens']} | {x['reference_s']:.3f} s ({100 * x['reference_spread']:.0f} %) | "
              f"{x['hooklens_s']:.3f} s ({100 * x['hooklens_spread']:.0f} %) | **{x['ratio']:.2f}×** | "
              f"{x['ratio_min']:.2f}–{x['ratio_max']:.2f}× |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
