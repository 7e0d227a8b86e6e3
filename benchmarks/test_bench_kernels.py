"""Each fused kernel against the plain ``xp`` expression it replaces, per backend."""

import numpy as np
import pytest
from benchutil import backend_params, timed

from gpubp.backends import get_backend

M, N = 128, 1024  # one hidden layer of network B


@pytest.fixture
def arrays(backend):
    be = get_backend(backend)
    rng = np.random.default_rng(0)
    mk = lambda *shape: be.to_device(rng.standard_normal(shape), np.float32)
    return be, {"Z": mk(M, N), "b": mk(N), "A": be.to_device(rng.random((M, N)), np.float32),
                "Y": be.to_device(np.eye(N)[rng.integers(0, N, M)], np.float32), "D": mk(M, N),
                "p": mk(1_863_690), "g": mk(1_863_690)}


@pytest.mark.parametrize("backend", backend_params("numpy", "emulated", "cupy"))
@pytest.mark.parametrize("variant", ["fused", "plain"])
def test_bias_sigmoid(benchmark, arrays, backend, variant):
    be, a = arrays
    xp = be.xp
    if variant == "fused":
        k = be.kernel("bias_sigmoid", np.float32)
        timed(benchmark, be, lambda: k(M * N, a["Z"], a["b"], M, N))
    else:
        timed(benchmark, be, lambda: 1 / (1 + xp.exp(-(a["Z"] + a["b"]))))


@pytest.mark.parametrize("backend", backend_params("numpy", "emulated", "cupy"))
@pytest.mark.parametrize("variant", ["fused", "plain"])
def test_output_delta_quadratic(benchmark, arrays, backend, variant):
    be, a = arrays
    if variant == "fused":
        k = be.kernel("quadratic_delta", np.float32)
        timed(benchmark, be, lambda: k(M * N, a["D"], a["A"], a["Y"], M * N, 1 / M))
    else:
        timed(benchmark, be, lambda: (a["A"] - a["Y"]) * a["A"] * (1 - a["A"]) / M)


@pytest.mark.parametrize("backend", backend_params("numpy", "emulated", "cupy"))
@pytest.mark.parametrize("variant", ["fused", "plain"])
def test_sigmoid_delta(benchmark, arrays, backend, variant):
    be, a = arrays
    if variant == "fused":
        k = be.kernel("sigmoid_delta", np.float32)
        timed(benchmark, be, lambda: k(M * N, a["D"], a["A"], M * N))
    else:
        timed(benchmark, be, lambda: a["D"] * (a["A"] * (1 - a["A"])))


@pytest.mark.parametrize("backend", backend_params("numpy", "emulated", "cupy"))
@pytest.mark.parametrize("variant", ["fused", "plain"])
def test_sgd_update(benchmark, arrays, backend, variant):
    """Every parameter of network B: one pass against the two-expression update it replaces."""
    be, a = arrays
    nw = a["p"].size - 2058
    if variant == "fused":
        k, n = be.kernel("sgd_update", np.float32), a["p"].size
        timed(benchmark, be, lambda: k(n, a["p"], a["g"], n, nw, 0.9999, 1.0))
    else:
        def plain():
            a["p"][:nw] *= 0.9999
            a["p"][...] = a["p"] - a["g"]
        timed(benchmark, be, plain)
