"""Helpers shared by the benchmark suites."""

import numpy as np
import pytest


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


def device_data(be, X, y, n_out, dtype=np.float32):
    Xd = be.to_device(X, dtype)
    Y = be.empty((len(y), n_out), dtype)
    be.one_hot(be.to_device(y, np.int64), Y)
    return Xd, Y
