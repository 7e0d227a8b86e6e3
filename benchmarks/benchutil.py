"""Helpers shared by the benchmark suites."""

import pytest

# The two networks of benchmarks/cpu_targets.py: (sizes, batch, cost, eta). float32.
NETS = {"A": ([784, 30, 10], 10, "quadratic", 3.0), "B": ([784, 1024, 1024, 10], 128, "cross_entropy", 0.5)}


def backend_params(*names):
    """pytest params for backends; cupy carries the gpu mark (skipped without a GPU)."""
    return [pytest.param(n, marks=pytest.mark.gpu) if n == "cupy" else n for n in names]


def timed(benchmark, be, fn, rounds=20, warmup=3):
    """Benchmark ``fn`` on backend ``be``: warm-up rounds outside the clock and a synchronize
    inside the timed function, so a GPU is timed to completion, not to the launch."""
    def run():
        fn()
        be.synchronize()

    benchmark.extra_info["device"] = be.device
    return benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup, iterations=1)


def device_data(net, X, y):
    """X and one-hot Y on the network's device, through its public API."""
    return net.to_device(X), net.one_hot(net.labels(y))
