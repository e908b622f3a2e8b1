"""Interleaved forward benchmark: a reference (TransformerLens, or transformers on a GGUF) and
hooklens side by side, measured alternately so that the machine's load falls on both alike.
Each round starts a fresh process of each side (loaded once, then idle between requests) and
asks them in turn for every length: R H at 128 tokens, R H at 512, ... (H first in odd rounds),
each answer the median of --repeats forwards; a pair's ratio compares two measurements seconds
apart. Prints, per length, each side's median forward time over the rounds with its spread
((max - min) / median), the median, min and max of the per-round ratios, both sides' matmul
rates from the same rounds, and the load average; then the Markdown table for
docs/benchmarks.md. Run by benches/run_bench.sh forward (TransformerLens on a random GPT-2 small)
and benches/run_smollm2_bench.sh (transformers on SmolLM2 or Gemma 3).

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
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Between one side's answer and the next request: torch's OpenMP threads spin for a moment
# after their work, and would take a core from the other side's first product.
SETTLE_S = 0.2


def load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def spread(xs):
    """(max - min) / median, the relative width of the rounds' values."""
    return (max(xs) - min(xs)) / statistics.median(xs)


class Side:
    """A benchmark process answering "forward N" and "matmul" with one "@@ JSON" line each."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.header = self.read()

    def read(self):
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        sys.exit(f"{self.proc.args[0]} ended without answering (exit {self.proc.wait()})")

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.read()
        time.sleep(SETTLE_S)
        return answer

    def close(self):
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            sys.exit(f"{self.proc.args[0]} failed (exit {self.proc.returncode})")


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
    ref_name = {"tl": "TL", "hf": "transformers"}[a.reference]
    script = {"tl": "tl_reference_bench.py", "hf": "hf_smollm2_bench.py"}[a.reference]
    commands = {
        "ref": [sys.executable, os.path.join(HERE, script), a.model, "--serve", "--repeats", str(a.repeats)],
        "hooklens": [a.hooklens_bin, "--model", a.model, "--serve", "--repeats", str(a.repeats)],
    }
    sides = {"ref": [], "hooklens": []}
    loads = [load()]
    for r in range(a.rounds):
        procs = {name: Side(cmd) for name, cmd in commands.items()}
        order = ["ref", "hooklens"] if r % 2 == 0 else ["hooklens", "ref"]
        rounds = {name: {"runs": [], **procs[name].header} for name in procs}
        for n in lengths:
            for name in order:
                rounds[name]["runs"].append(procs[name].ask(f"forward {n}"))
        for name in order:
            rounds[name]["matmul_gflops"] = procs[name].ask("matmul")["gflops"]
            procs[name].close()
            sides[name].append(rounds[name])
        loads.append(load())
        print(f"round {r + 1}/{a.rounds} done (load {loads[-1]:.2f})", file=sys.stderr, flush=True)

    def times(side, n):
        return [next(x["forward_s"] for x in rd["runs"] if x["tokens"] == n) for rd in sides[side]]

    torch_mm = [rd["matmul_gflops"] for rd in sides["ref"]]
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
    print(f"\n{summary['date']}: {a.rounds} rounds, {ref_name} and hooklens alternating at each length, "
          f"medians of {a.repeats} forwards each; {summary['threads']} threads, hooklens matmul {summary['backend']}")
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
