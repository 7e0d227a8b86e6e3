"""The own route's layer kernels (kernels/layer.cuh): each tiled product with its epilogue against a
float64 formula and the NumPy reference, at sizes that are multiples of no tile, with +-1000 in
the inputs and poisoned outputs; then whole training runs on the own route against the blas
route and NumPy, the counters of an own-route step, and a planted missing barrier.
"""

import functools

import numpy as np
import pytest
from helpers import ACT64, DELTA64, OUTPUT64, PRIME64, assert_close, assert_differs, backends, edged

from gpubp import Network
from gpubp.activations import ACTIVATIONS
from gpubp.backends import get_backend
from gpubp.backends import kernel as K
from gpubp.costs import COSTS
from gpubp.errors import GpubpError
from gpubp.optimizers import make_optimizer

# native: the same sources as host code (native_layer.h's products), compiled for this CPU
BACKENDS = backends(lambda b: b.compiles_kernels)  # the backends that run our layer kernels
DTYPES = [np.float32, np.float64]
# (m, n_in, n_out): every size of 1, 7, 33, 257, 1000 appears in every role, no product is huge
SHAPES = [(1, 1, 1), (7, 33, 257), (33, 257, 7), (257, 7, 33), (1000, 33, 7), (7, 1000, 33)]
TOL_FILE = {"sigmoid": "sigmoid.cu", "tanh": "tanh.cu", "relu": "relu.cu"}


def poisoned(shape):
    return np.full(shape, np.nan)


def cast(a, dtype):
    return np.asarray(a, dtype=dtype).astype(np.float64)


def launch(be, stem, dtype, M, N, tile, *args):
    """Run layer kernel ``stem`` on ``be`` with host ``args`` (arrays go up as ``dtype``), and its NumPy
    reference on copies of the same inputs; returns (device args, reference args) for the outputs."""
    ref = [np.array(a, dtype=dtype) if isinstance(a, np.ndarray) else a for a in args]  # copies, made first
    dev = [be.to_device(np.array(a, dtype=dtype)) if isinstance(a, np.ndarray) else a for a in args]
    grid, block = K.layer_launch(M, N, tile)
    be.layer_launcher(stem + K.suffix(dtype), grid, block)(*dev)
    get_backend("numpy").kernel(stem, dtype)(0, *ref)
    return dev, ref


def check(be, out, ref_out, expected, scale, file, stem, dtype, what):
    """The kernel within the file's tolerance of the float64 formula, and of the NumPy reference."""
    atol, rtol = K.tolerance(file, dtype, stem)
    got = be.to_host(out)
    assert_close(got, expected, atol=atol, rtol=rtol, scale=scale, what=what)
    assert_close(got, ref_out, atol=2 * atol, rtol=2 * rtol, scale=scale, what=what + " vs the NumPy reference")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("tile", ["s", "l"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("m,n_in,n_out", SHAPES)
def test_layer_forward_and_delta(backend, dtype, tile, act, m, n_in, n_out):
    be = get_backend(backend)
    rng = np.random.default_rng(m * 7919 + n_in * 31 + n_out)
    A_in, W, b = edged(rng, (m, n_in), 0.5), rng.standard_normal((n_out, n_in)) / np.sqrt(n_in), rng.standard_normal(n_out)
    a, w, b64 = cast(A_in, dtype), cast(W, dtype), cast(b, dtype)
    scale = np.abs(a) @ np.abs(w).T + np.abs(b64)
    stem = f"layer_forward_{act}_{tile}"
    dev, ref = launch(be, stem, dtype, m, n_out, K.LAYER_TILES[tile], poisoned((m, n_out)), A_in, W, b, m, n_in, n_out,
                      0)
    check(be, dev[0], ref[0], ACT64[act](a @ w.T + b64), scale, TOL_FILE[act], stem, dtype,
          f"{stem} {m}x{n_in}->{n_out}")

    # BP2 through the same layer: D_prev (m, n_in) = (D (m, n_out) W) * f'(A_prev)
    D = edged(rng, (m, n_out), 0.1)
    A_prev = rng.random((m, n_in)) if act == "sigmoid" else rng.uniform(-1, 1, (m, n_in))
    if act == "relu":
        A_prev = np.maximum(A_prev, 0)
    d, ap = cast(D, dtype), cast(A_prev, dtype)
    stem = f"layer_delta_{act}_{tile}"
    dev, ref = launch(be, stem, dtype, m, n_in, K.LAYER_TILES[tile], poisoned((m, n_in)), D, W, A_prev, m, n_out, n_in,
                      0)
    check(be, dev[0], ref[0], (d @ w) * PRIME64[act](ap), np.abs(d) @ np.abs(w), TOL_FILE[act], stem, dtype,
          f"{stem} {m}x{n_out}->{n_in}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("tile", ["s", "l"])
@pytest.mark.parametrize("mode", ["sgd", "gradient"])
@pytest.mark.parametrize("m,n_in,n_out", SHAPES)
def test_layer_update(backend, dtype, tile, mode, m, n_in, n_out):
    """BP3 + BP4 with the update (alpha = -eta, beta = decay, beta_b = 1), or into a poisoned
    gradient buffer (alpha = 1, beta = beta_b = 0: the NaN must not be read)."""
    be = get_backend(backend)
    rng = np.random.default_rng(m * 31 + n_in * 7 + n_out)
    D, A_in = edged(rng, (m, n_out), 0.1), edged(rng, (m, n_in), 0.5)
    W0, b0 = rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out)
    alpha, beta, beta_b = (-0.3, 0.9999, 1.0) if mode == "sgd" else (1.0, 0.0, 0.0)
    d, ai = cast(D, dtype), cast(A_in, dtype)
    al, be_, bb = (float(np.asarray(x, dtype)) for x in (alpha, beta, beta_b))
    w0 = cast(W0, dtype) if beta else 0.0
    c0 = cast(b0, dtype) if beta_b else 0.0
    W = W0 if beta else poisoned((n_out, n_in))
    b = b0 if beta_b else poisoned((n_out,))
    stem = f"layer_update_{tile}"
    dev, ref = launch(be, stem, dtype, n_out, n_in, K.LAYER_TILES[tile], W, b, D, A_in, m, n_out, n_in,
                      alpha, beta, beta_b, 0)
    check(be, dev[0], ref[0], be_ * w0 + al * (d.T @ ai), np.abs(be_ * w0) + abs(al) * (np.abs(d).T @ np.abs(ai)),
          "layer_update.cu", stem, dtype, f"{stem} W {mode}")
    check(be, dev[1], ref[1], bb * c0 + al * d.sum(axis=0), np.abs(bb * c0) + abs(al) * np.abs(d).sum(axis=0),
          "layer_update.cu", stem, dtype, f"{stem} b {mode}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cost", list(COSTS))
@pytest.mark.parametrize("m,n_in,n_out", [(1, 1, 1), (7, 33, 10), (257, 7, 10), (1000, 33, 7), (33, 1000, 32)])
def test_layer_output(backend, dtype, cost, m, n_in, n_out):
    """The output layer's forward and BP1 in one launch; softmax rows of +-1000 stay finite."""
    be = get_backend(backend)
    rng = np.random.default_rng(m + 13 * n_in + n_out)
    A_in, W, b = edged(rng, (m, n_in), 0.5), rng.standard_normal((n_out, n_in)) / np.sqrt(n_in), rng.standard_normal(n_out)
    Y = np.eye(n_out)[rng.integers(0, n_out, m)]
    a, w, b64 = cast(A_in, dtype), cast(W, dtype), cast(b, dtype)
    f, delta = OUTPUT64[cost], DELTA64[cost]
    A_ref = f(a @ w.T + b64)
    s = 1.0 / m
    S = np.abs(a) @ np.abs(w).T + np.abs(b64)
    stem = f"layer_output_{cost}"
    dev, ref = launch(be, stem, dtype, m, n_out, "TileOutput", poisoned((m, n_out)), poisoned((m, n_out)), A_in, W, b,
                      Y, m, n_in, n_out, s, 0)
    file = f"{cost}.cu"
    assert np.isfinite(be.to_host(dev[0])).all()
    check(be, dev[0], ref[0], A_ref, S, file, stem, dtype, f"{stem} A")
    check(be, dev[1], ref[1], s * delta(A_ref, Y), s * S, file, stem, dtype, f"{stem} D")


# ---------------------------------------------------------------------------------------------
# Whole training on the own route
# ---------------------------------------------------------------------------------------------

OPT_ETA = {"sgd": 0.5, "momentum": 0.1, "adam": 0.01}
TOL = {"float64": 1e-10, "float32": 1e-4}


def rel(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


@functools.cache
def trained(backend, gemm, dtype, activation, cost, optimizer):
    """The parameters of [20, 9, 7, 5] after two epochs (kept: numpy's are every backend's reference)."""
    rng = np.random.default_rng(41)
    X, y = rng.random((45, 20)), rng.integers(0, 5, 45)
    net = Network([20, 9, 7, 5], cost=cost, activation=activation, backend=backend, dtype=dtype, seed=6, gemm=gemm)
    net.sgd((X, y), epochs=2, mini_batch_size=8, eta=OPT_ETA[optimizer], lmbda=1.5, optimizer=optimizer,
            momentum=0.8, monitor_training_cost=False)
    return net.get_params()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation,cost,optimizer",
                         [(a, c, o) for a in ACTIVATIONS for c in COSTS for o in OPT_ETA])
def test_own_route_trains_as_the_blas_route_and_numpy(backend, dtype, activation, cost, optimizer):
    out = {(b, gemm): trained(b, gemm, dtype, activation, cost, optimizer)
           for b, gemm in (("numpy", "blas"), (backend, "blas"), (backend, "own"))}
    ref = out["numpy", "blas"]
    start = Network([20, 9, 7, 5], cost=cost, activation=activation, dtype=dtype, seed=6).get_params()
    assert_differs(ref, start, atol=1e-8, rtol=1e-5, what="it trained")
    for key in ((backend, "own"), (backend, "blas")):
        assert rel(out[key], ref) <= TOL[dtype], f"{key} vs numpy: {rel(out[key], ref):.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sizes", [[784, 30, 10], [784, 100, 50, 10]], ids=["L2", "L3"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_own_route_step_counters(backend, sizes, optimizer):
    """After the first step: at most 3L launches, no GEMM from a library, no copy, sync or allocation."""
    be = get_backend(backend)
    L = len(sizes) - 1
    net = Network(sizes, backend=be, seed=1, gemm="own")
    rng = np.random.default_rng(0)
    X = be.to_device(rng.random((10, 784)), np.float32)
    Y = be.to_device(np.eye(10)[rng.integers(0, 10, 10)], np.float32)
    opt = make_optimizer(optimizer, eta=0.1, lmbda=5.0, n=50_000)
    net.step(X, Y, opt)
    with be.counters() as c:
        net.step(X, Y, opt)
    assert c.launches == (3 * L - 1 if optimizer == "sgd" else 3 * L) and c.launches <= 3 * L
    assert (c.gemms, c.h2d, c.d2h, c.syncs, c.allocs) == (0, 0, 0, 0, 0)


def test_own_route_needs_a_kernel_backend():
    with pytest.raises(GpubpError, match="gemm='own' runs our layer kernels.*cupy, emulated or native"):
        Network([4, 3], backend="numpy", gemm="own")
    with pytest.raises(GpubpError, match="unknown gemm route 'cublas'"):
        Network([4, 3], gemm="cublas")
    with pytest.raises(GpubpError, match="up to 32 outputs"):
        Network([4, 40], cost="log_likelihood", backend="emulated", gemm="own")


@pytest.mark.slow
def test_own_route_on_mnist_matches_numpy(mnist):
    X, y = mnist["train"][0][:1000], mnist["train"][1][:1000]
    out = {}
    for b, gemm in (("numpy", "blas"), ("emulated", "own")):
        net = Network([784, 30, 10], backend=b, dtype="float32", seed=2, gemm=gemm)
        net.sgd((X, y), epochs=1, mini_batch_size=10, eta=3.0, lmbda=1.0, seed=3, monitor_training_cost=False)
        out[b] = net.get_params()
    assert rel(out["emulated"], out["numpy"]) <= 1e-4


@pytest.mark.parametrize("barrier", ["the slice is whole before anyone reads it",
                                     "everyone is done with the slice before the next one overwrites it"])
def test_the_emulator_catches_a_missing_barrier_in_our_layer_kernel(barrier):
    """layer_update.cu with one of the tiled product's two __syncthreads planted out gives wrong
    numbers on the emulator (threads run in a shuffled order between barriers); the real source
    gives the right ones through the same build path."""
    from gpubp.backends import emulated

    source = K.source("layer_update.cu")
    planted = source.replace(f"__syncthreads();  // {barrier}", "", 1)
    assert planted != source
    be = get_backend("emulated")
    rng = np.random.default_rng(5)
    m, n_out, n_in = 37, 70, 90
    D, A = rng.standard_normal((m, n_out)), rng.standard_normal((m, n_in))
    expected = D.T @ A
    results = {}
    for label, code in (("real", source), ("planted", planted)):
        kernel = emulated.Kernel(emulated.build_code(code, be.compiler, f"layer_update_{label}"), "layer_update_l_f64")
        W, b = np.full((n_out, n_in), np.nan), np.full(n_out, np.nan)
        grid, block = K.layer_launch(n_out, n_in, "TileLarge")
        kernel(grid, block, (W, b, D, A, np.int64(m), np.int64(n_out), np.int64(n_in), np.float64(1.0),
                             np.float64(0.0), np.float64(0.0), np.int32(0)), seed=11)
        results[label] = W
    assert_close(results["real"], expected, rtol=1e-12, atol=1e-12, what="the real kernel")
    assert_differs(results["planted"], expected, atol=1e-8, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# TF32: the kernels' rounding of their operands, and the network's
# ---------------------------------------------------------------------------------------------

def test_tf32_rounding_is_to_nearest_even_on_ten_mantissa_bits():
    from gpubp.reference import round_tf32

    one = np.float32(1)
    ulp = np.float32(2.0 ** -10)  # TF32's spacing at 1
    x = np.array([1, 1 + ulp / 2, 1 + ulp, 1 + 1.5 * ulp, 1 + 0.75 * ulp, np.inf, -3.0e38], np.float32)
    got = round_tf32(x)
    assert list(got[:5]) == [one, one, one + ulp, one + 2 * ulp, one + ulp]  # ties go to the even one
    assert got[5] == np.inf and np.isfinite(got[6]) and (got.view(np.uint32) & 0x1FFF == 0).all()
    assert round_tf32(np.array([1 + 2.0 ** -20])).item() == 1 + 2.0 ** -20  # float64 is not TF32's business


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tile", ["s", "l"])
def test_layer_forward_under_tf32_reads_rounded_operands(backend, tile):
    """tf32 = 1: the product of the TF32-rounded inputs, summed in float32; visibly not the plain one."""
    from gpubp.reference import round_tf32

    be = get_backend(backend)
    rng = np.random.default_rng(9)
    m, n_in, n_out = 33, 257, 7
    A_in, W, b = rng.standard_normal((m, n_in)), rng.standard_normal((n_out, n_in)) / 16, rng.standard_normal(n_out)
    a, w = round_tf32(np.float32(A_in)).astype(np.float64), round_tf32(np.float32(W)).astype(np.float64)
    expected = np.tanh(a @ w.T + np.float32(b))
    stem = f"layer_forward_tanh_{tile}"
    dev, ref = launch(be, stem, np.float32, m, n_out, K.LAYER_TILES[tile], poisoned((m, n_out)), A_in, W, b, m,
                      n_in, n_out, 1)
    check(be, dev[0], ref[0], expected, np.abs(a) @ np.abs(w).T + np.abs(b), "tanh.cu", stem, np.float32, stem)
    plain = np.tanh(np.float32(A_in).astype(np.float64) @ np.float32(W).astype(np.float64).T + np.float32(b))
    assert np.abs(be.to_host(dev[0]) - plain).max() > 1e-4  # TF32's 10 bits show


@pytest.mark.parametrize("backend", BACKENDS)
def test_tf32_training_agrees_across_backends_and_routes(backend):
    """Two epochs under tf32 on numpy (rounded copies), and on the kernel backend's both routes; and
    TF32 changed the weights, so it really ran."""
    rng = np.random.default_rng(12)
    X, y = rng.random((45, 20)), rng.integers(0, 5, 45)
    out = {}
    for b, gemm, tf32 in (("numpy", "blas", True), (backend, "blas", True), (backend, "own", True),
                          ("numpy", "blas", False)):
        net = Network([20, 9, 5], cost="cross_entropy", backend=b, seed=3, gemm=gemm, tf32=tf32)
        net.sgd((X, y), epochs=2, mini_batch_size=8, eta=0.5, monitor_training_cost=False)
        out[b, gemm, tf32] = net.get_params()
    ref = out["numpy", "blas", True]
    for key in ((backend, "blas", True), (backend, "own", True)):  # TF32 runs agree to float32's sums
        assert rel(out[key], ref) <= 1e-6, (key, rel(out[key], ref))
    assert rel(out["numpy", "blas", False], ref) > 1e-5  # and TF32's inputs made a difference 10x larger


def test_tf32_is_for_float32_only():
    with pytest.raises(GpubpError, match="tf32 is a float32 format"):
        Network([4, 3], dtype="float64", tf32=True)
