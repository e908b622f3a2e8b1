"""Timing helpers shared by the Python sides of hooklens's benchmarks."""
import json
import statistics
import sys
import time


def median_time(f, repeats=3):
    """Median wall time of `repeats` calls of f, after one warm-up call."""
    f()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def torch_matmul_gflops():
    """torch's f32 matmul rate on this machine (1024 x 768 x 3072, median of 10), GFLOP/s."""
    import torch
    x, w = torch.randn(1024, 768), torch.randn(768, 3072)
    return 2 * 1024 * 768 * 3072 / median_time(lambda: x @ w, 10) / 1e9


def serve(commands, header=None):
    """The reference side of an interleaved benchmark (benches/interleave.py), after loading:
    answers commands read from stdin, one a line, until its end. `commands` maps a command's first
    word to a function of its other words that returns the answer (a dict); "matmul" (torch's
    matmul rate) is always answered. Each answer is one line "@@ JSON" on stdout (library output
    on stdout is told apart by the prefix); the first such line, before any command, is the
    header: torch's version and threads, and `header`."""
    import torch
    print("@@ " + json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, **(header or {})}), flush=True)
    for line in sys.stdin:
        word, *args = line.split()
        if word == "matmul":
            out = {"gflops": torch_matmul_gflops()}
        elif word in commands:
            out = commands[word](*args)
        else:
            sys.exit(f"unknown command {line!r}: expected one of {sorted(commands) + ['matmul']}")
        print("@@ " + json.dumps(out), flush=True)


def serve_forward(forward, repeats):
    """serve() for benches/interleave_forward.py: "forward N" answers the median of `repeats`
    calls of forward(N) (after a warm-up), without autograd."""
    import torch

    def answer(n):
        n = int(n)
        with torch.no_grad():
            return {"tokens": n, "forward_s": median_time(lambda: forward(n), repeats)}

    serve({"forward": answer})
