"""Interleaved forward benchmark: a reference (TransformerLens, or transformers on a GGUF) and
hooklens in alternating rounds (R H R H ..., each round a fresh process timing every length), so
that a change in the machine's load falls on both sides alike. Prints, per length, each side's
median forward time over the rounds with its spread, the ratio of each round's pair (median,
min, max), the matmul rates both sides measured in the same rounds, and the load average; then
the Markdown table for docs/benchmarks.md. Run by benches/run_bench.sh forward (TransformerLens
on a random GPT-2 small) and benches/run_smollm2_bench.sh (transformers on SmolLM2 or Gemma 3).

    python benches/interleave_forward.py MODEL HOOKLENS_BIN [--reference tl|hf] [--rounds 5]
        [--lengths 128,512,1024] [--repeats 3] [--out SUMMARY_JSON]

MODEL is the model directory (tl) or GGUF file (hf); both sides load the same one.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def spread(xs):
    """(max - min) / median, the relative width of the rounds' values."""
    return (max(xs) - min(xs)) / statistics.median(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("hooklens_bin")
    ap.add_argument("--reference", choices=["tl", "hf"], default="tl")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lengths", default="128,512,1024")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.rounds < 2:
        sys.exit("--rounds must be at least 2: a spread needs two rounds")
    lengths = [int(n) for n in a.lengths.split(",")]
    sides = {"ref": [], "hooklens": []}
    ref_name = {"tl": "TL", "hf": "transformers"}[a.reference]
    loads = [load()]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for side in ("ref", "hooklens"):
                out = os.path.join(tmp, f"{side}{r}.json")
                common = ["--lengths", a.lengths, "--repeats", str(a.repeats)]
                if side == "ref":
                    script = {"tl": "tl_reference_bench.py", "hf": "hf_smollm2_bench.py"}[a.reference]
                    cmd = [sys.executable, os.path.join(HERE, script), a.model, out, "--forward-only", *common]
                else:
                    cmd = [a.hooklens_bin, "--model", a.model, "--json", out, *common]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                with open(out) as f:
                    sides[side].append(json.load(f))
                loads.append(load())
            print(f"round {r + 1}/{a.rounds} done (load {loads[-1]:.2f})", file=sys.stderr, flush=True)

    def times(side, n):
        return [next(x["forward_s"] for x in rd["runs"] if x["tokens"] == n) for rd in sides[side]]

    torch_mm = [rd["torch_gflops"] for rd in sides["ref"]]
    ours_mm = [rd["matmul_gflops"] for rd in sides["hooklens"]]
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "reference": ref_name, "model": a.model,
        "rounds": a.rounds, "repeats": a.repeats, "backend": sides["hooklens"][0]["backend"],
        "threads": sides["hooklens"][0]["threads"], "load_max": max(loads), "load_start": loads[0],
        "matmul_gflops": {"torch": statistics.median(torch_mm), "hooklens": statistics.median(ours_mm),
                          "torch_spread": spread(torch_mm), "hooklens_spread": spread(ours_mm)},
        "lengths": [],
    }
    for n in lengths:
        ref, ours = times("ref", n), times("hooklens", n)
        ratios = [t / h for t, h in zip(ref, ours)]
        summary["lengths"].append({
            "tokens": n, "reference_s": statistics.median(ref), "reference_spread": spread(ref),
            "hooklens_s": statistics.median(ours), "hooklens_spread": spread(ours),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratio_spread": spread(ratios), "rounds_reference_s": ref, "rounds_hooklens_s": ours,
        })
    mm = summary["matmul_gflops"]
    print(f"\n{summary['date']}: {a.rounds} interleaved rounds ({ref_name}, hooklens, ...), medians of "
          f"{a.repeats} forwards each; {summary['threads']} threads, hooklens matmul {summary['backend']}")
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
