"""Test helpers: float64 re-derivations written independently of gpubp, assert_close, and the CLI run
in-process."""

import sys
import threading
from contextlib import contextmanager

import numpy as np
import pytest

from gpubp.cli import main


def run_cli(capsys, *argv):
    """``gpubp *argv`` in this process: (exit code, stdout, stderr). capsys may be None (in a fixture wider
    than one test, which has none): the output is then left to pytest's capture and None returned for it."""
    with pytest.raises(SystemExit) as e:
        sys.exit(main(list(argv)))
    out, err = capsys.readouterr() if capsys is not None else (None, None)
    return e.value.code, out, err


def one_line_error(code, err, *needles):
    """The CLI refused with exit code 2 and one line of stderr naming each of ``needles``."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def sigmoid64(z):
    """1/(1+exp(-z)) in float64, written the stable way (not SciPy's expit, which the library uses)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_prime64(z):
    s = sigmoid64(z)
    return s * (1.0 - s)


def softmax64(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# The float64 formulas every test compares against, written once (independently of gpubp.reference):
# each activation f(z), its derivative from the output a = f(z), each cost's output activation and its
# output error delta^L(a, y) before the 1/m scale (BP1).
ACT64 = {"sigmoid": sigmoid64, "tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0)}
# tanh' as a product: 1 - a*a cancels near |a| = 1 even in float64
PRIME64 = {"sigmoid": lambda a: a * (1 - a), "tanh": lambda a: (1 - a) * (1 + a), "relu": lambda a: (a > 0) * 1.0}
OUTPUT64 = {"quadratic": sigmoid64, "cross_entropy": sigmoid64, "log_likelihood": softmax64}
DELTA64 = {"quadratic": lambda a, y: (a - y) * a * (1 - a), "cross_entropy": lambda a, y: a - y,
           "log_likelihood": lambda a, y: a - y}


def backends(where=None):
    """One pytest parameter per registered backend (gpubp.backends.REGISTRY, so a new backend joins
    every test that parametrizes with this) whose class passes the capability filter ``where`` (e.g.
    ``lambda b: b.compiles_kernels``); the backend that needs a GPU (the one gpubp.backends.cupy_status
    probes) carries the gpu mark, so it skips with the reason here and runs under --require-gpu."""
    import importlib

    from gpubp import backends as B

    params = []
    for name, module in B.REGISTRY.items():
        cls = importlib.import_module(f"gpubp.backends.{module}").BACKEND
        if where is None or where(cls):
            params.append(pytest.param(name, marks=pytest.mark.gpu) if module == "cupy" else name)
    return params


def forward64(weights, biases, X, cost="quadratic", activation="sigmoid"):
    """The network's output for X in float64: hidden layers by ``activation``, the output by the cost's."""
    A = np.asarray(X, dtype=np.float64)
    for l, (w, b) in enumerate(zip(weights, biases)):
        z = A @ np.asarray(w, np.float64).T + b
        A = OUTPUT64[cost](z) if l == len(weights) - 1 else ACT64[activation](z)
    return A


# Each cost's term per output, activations clipped to [1e-12, 1 - 1e-12] where a log needs it (a saturated
# wrong answer costs -ln(1e-12) = 27.6, not inf), as the kernels are documented to do.
COST64 = {"quadratic": lambda a, y: 0.5 * (a - y) ** 2,
          "cross_entropy": lambda a, y: -(y * np.log(np.clip(a, 1e-12, 1 - 1e-12))
                                          + (1 - y) * np.log(1 - np.clip(a, 1e-12, 1 - 1e-12))),
          "log_likelihood": lambda a, y: -y * np.log(np.clip(a, 1e-12, 1))}


def cost64(weights, biases, X, Y, cost, lmbda=0.0, n=None, activation="sigmoid"):
    """Mean cost over the rows of X (float64), plus network2's 0.5*(lmbda/n)*sum ||w||^2."""
    c = np.sum(COST64[cost](forward64(weights, biases, X, cost, activation), Y)) / len(X)
    if lmbda:
        c += 0.5 * (lmbda / n) * sum(np.sum(np.asarray(w, np.float64) ** 2) for w in weights)
    return c


def edged(rng, shape, scale=1.0):
    """Seeded normals times scale, with +-1000 at a few places."""
    a = rng.standard_normal(shape) * scale
    flat = a.reshape(-1)
    for v in (1000.0, -1000.0):
        flat[rng.integers(0, flat.size, max(1, flat.size // 97))] = v
    return a


@contextmanager
def another_thread_capturing(be, prepare=None):
    """While the block runs, another thread holds ``be.capture()`` open (after ``prepare()``, in that
    thread, if given); yields the list that receives that thread's graph once the block is done."""
    inside, done, graphs = threading.Event(), threading.Event(), []

    def capture():
        if prepare is not None:
            prepare()
        with be.capture() as graph:
            inside.set()
            done.wait(30)
        graphs.append(graph)

    t = threading.Thread(target=capture)
    t.start()
    assert inside.wait(30)
    try:
        yield graphs
    finally:
        done.set()
        t.join()


def one_hot(y, k):
    Y = np.zeros((len(y), k))
    Y[np.arange(len(y)), y] = 1.0
    return Y


def assert_close(actual, expected, atol=0.0, rtol=0.0, scale=None, what="array"):
    """|actual - expected| <= atol + rtol*scale elementwise (scale defaults to |expected|; a scalar expected
    stands for every element).

    On failure, names the worst element: its index, both values, the error and the allowance.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if expected.ndim == 0:  # one value for every element
        expected = np.broadcast_to(expected, actual.shape)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    scale = np.abs(expected) if scale is None else np.asarray(scale, dtype=np.float64)
    allowed = atol + rtol * scale
    err = np.abs(actual - expected)
    bad = ~(err <= allowed)  # NaN counts as bad
    both_nan = np.isnan(actual) & np.isnan(expected)
    bad &= ~both_nan
    if bad.any():
        excess = np.where(bad, np.nan_to_num(err - allowed, nan=np.inf), -np.inf)
        i = np.unravel_index(np.argmax(excess), excess.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements out of tolerance; worst at index {tuple(map(int, i))}: "
            f"got {actual[i]!r}, expected {expected[i]!r}, error {err[i]:.3e} > allowed {allowed[i]:.3e} "
            f"(atol={atol:g}, rtol={rtol:g})")


def idx_file(path, arr) -> None:
    """Write ``arr`` (uint8) as an uncompressed IDX file, as MNIST's are."""
    import struct

    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(head + arr.tobytes())


def write_mnist_like(directory, n_train=12_000, n_test=200, shape=(2, 5), test_shape=None, seed=0):
    """An MNIST-format data set small enough for CLI tests (load it with --no-verify): images of
    ``shape`` (10 pixels by default) in which pixel ``label`` is bright and the rest are noise, so a
    tiny network learns it in one epoch. n_train - 10 000 rows are left for training."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n, shp in (("train", n_train, shape), ("t10k", n_test, test_shape or shape)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, shp[0] * shp[1]))
        images[np.arange(n), labels % images.shape[1]] = 255
        idx_file(directory / f"{prefix}-images-idx3-ubyte", images.reshape(n, *shp))
        idx_file(directory / f"{prefix}-labels-idx1-ubyte", labels)
    return directory


def assert_equal(actual, expected, what="array"):
    """actual == expected bit for bit (NaN where both have NaN); on failure, names the worst element."""
    assert_close(actual, expected, what=what)


def assert_differs(actual, other, atol=0.0, rtol=0.0, what="array"):
    """Some element of actual differs from other by more than atol + rtol*|other| (e.g. training moved the
    parameters; np.allclose's atol=1e-8, rtol=1e-5 for "not allclose"). On failure, says by how little
    the two differ at most."""
    actual, other = np.asarray(actual, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if actual.shape != other.shape:
        return
    err = np.abs(actual - other)
    apart = (err > atol + rtol * np.abs(other)) | (np.isnan(actual) != np.isnan(other))
    assert apart.any(), (f"{what}: all {apart.size} elements agree (at most {np.nanmax(err, initial=0):.3e} apart, "
                         f"atol={atol:g}, rtol={rtol:g}), where some should differ")
