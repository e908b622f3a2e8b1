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


def serve(forward, repeats):
    """The reference side of benches/interleave_forward.py, after loading: answers commands read
    from stdin, one a line, until its end: "forward N" with the median of `repeats` calls of
    forward(N) (after a warm-up), "matmul" with torch's matmul rate; each answer one line
    "@@ JSON" on stdout (library output on stdout is told apart by the prefix)."""
    import torch
    print("@@ " + json.dumps({"threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "forward":
            n = int(cmd[1])
            with torch.no_grad():
                out = {"tokens": n, "forward_s": median_time(lambda: forward(n), repeats)}
        elif cmd[0] == "matmul":
            out = {"gflops": torch_matmul_gflops()}
        else:
            sys.exit(f"unknown command {line!r}")
        print("@@ " + json.dumps(out), flush=True)
