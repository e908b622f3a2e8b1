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
