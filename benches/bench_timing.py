"""Timing helper shared by the Python sides of hooklens's benchmarks."""
import statistics
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
