"""Dropout (Network(dropout=p, input_dropout=q)): the _drop kernels against float64 formulas and the
NumPy reference (awkward sizes, +-1000, poisoned outputs), the masks' statistics, a finite-difference
gradient check with the masks held fixed, the same training on numpy, emulated and native on both
routes, a graph epoch equal to an eager one, p = 0 equal to no dropout bit for bit, evaluation
without masks, save/load/resume, and the CuPy path (GPU-marked, and through the stand-in here).
"""

import numpy as np
import pytest
from helpers import ACT64, OUTPUT64, PRIME64, assert_close, edged, one_hot

from gpubp import Network, reference
from gpubp.activations import ACTIVATIONS
from gpubp.backends import get_backend
from gpubp.backends import kernel as K
from gpubp.errors import GpubpError, ModelFileError
from gpubp.optimizers import SGD

KERNEL_BACKENDS = ["emulated", "native", pytest.param("cupy", marks=pytest.mark.gpu)]
DTYPES = [np.float32, np.float64]
SEED, EPOCH, STEP, P = 2**40 + 12345, 7, 3, 0.35  # a seed above 2^32: both key words matter


def factors64(layer, shape, dtype, p=P, seed=SEED, epoch=EPOCH, step=STEP):
    """The dropout factors of a (rows, cols) layer as float64 (the keep test made in dtype, as the kernels do)."""
    n = int(np.prod(shape))
    r = reference.dropout_factor(seed, epoch, step, layer, np.arange(n, dtype=np.uint64), p, dtype)
    return r.astype(np.float64).reshape(shape)


def key_on(be, seed=SEED, epoch=EPOCH):
    return be.to_device(np.array([seed, epoch], np.uint64))


def check(be, got, expected, ref, file, stem, dtype, scale, what):
    atol, rtol = K.tolerance(file, dtype, stem)
    got = be.to_host(got)
    assert_close(got, expected, atol=atol, rtol=rtol, scale=scale, what=what)
    assert_close(got, np.asarray(ref, np.float64), atol=2 * atol, rtol=2 * rtol, scale=scale, what=what + " vs numpy")


# ---------------------------------------------------------------------------------------------
# The kernels
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 33), (257, 13)])
def test_blas_route_drop_kernels(backend, dtype, act, rows, cols):
    """bias_<act>_drop: f(z + b) r; <act>_delta_drop: g f'(z) r from the dropped output; both against
    float64 formulas with the factors of reference.dropout_factor, and against the NumPy reference."""
    be, npb = get_backend(backend), get_backend("numpy")
    rng = np.random.default_rng(rows * 31 + cols)
    Z, b, G = edged(rng, (rows, cols), 3.0), rng.standard_normal(cols), edged(rng, (rows, cols))
    z64, b64, g64 = (np.asarray(x, dtype).astype(np.float64) for x in (Z, b, G))
    r = factors64(2, (rows, cols), dtype)
    a_undropped = ACT64[act](z64 + b64)
    stem = f"bias_{act}_drop"
    out = be.to_device(np.array(Z, dtype))
    be.kernel(stem, dtype)(out.size, out, be.to_device(b, dtype), rows, cols, key_on(be), STEP, 2, P)
    ref = np.array(Z, dtype)
    npb.kernel(stem, dtype)(ref.size, ref, np.asarray(b, dtype), rows, cols, key_on(npb), STEP, 2, P)
    # bias_<act>'s tolerance, its atol times r, and one more rounding (the product by r)
    atol, rtol = K.tolerance(f"{act}.cu", dtype, f"bias_{act}")
    expected = a_undropped * r
    allowed = atol * r + (rtol + np.finfo(dtype).eps) * np.abs(expected)
    for what, got in ((backend, be.to_host(out)), ("numpy", ref)):
        assert_close(got, expected, atol=0, rtol=1, scale=allowed, what=f"{stem} {rows}x{cols} on {what}")

    A = np.asarray(a_undropped * r, dtype)  # the stored, dropped output
    stem = f"{act}_delta_drop"
    out = be.to_device(np.array(G, dtype))
    be.kernel(stem, dtype)(out.size, out, be.to_device(A, dtype), out.size, key_on(be), STEP, 2, P)
    ref = np.array(G, dtype)
    npb.kernel(stem, dtype)(ref.size, ref, A, ref.size, key_on(npb), STEP, 2, P)
    undropped = A.astype(np.float64) / np.where(r == 0, 1.0, r)  # what the kernel recovers from the stored output
    expected = g64 * PRIME64[act](undropped) * r
    # f' is recomputed from a rounded a / r: its error is up to |df'/da| = |1 - 2a| (sigmoid), 2|a| (tanh) ulps of a
    scale = np.abs(expected) + 2 * np.abs(g64) * r * np.abs(undropped)
    atol, rtol = K.tolerance(f"{act}.cu", dtype, f"{act}_delta")
    allowed = atol * r + rtol * scale + 2 * np.finfo(dtype).eps * np.abs(expected)  # and the products by r
    for what, got in ((backend, be.to_host(out)), ("numpy", ref)):
        assert_close(got, expected, atol=0, rtol=1, scale=allowed, what=f"{stem} {rows}x{cols} on {what}")
    assert np.all(be.to_host(out)[r == 0] == 0)  # a dropped unit passes no error back, even from +-1000


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("n", [1, 257, 10_007])
def test_input_dropout_kernel(backend, dtype, n):
    """dropout: out = X r, exactly (a product by 0 or 1/(1-p) rounded once), into a poisoned buffer; X untouched."""
    be = get_backend(backend)
    X = edged(np.random.default_rng(n), (n,))
    Xd = be.to_device(X, dtype)
    out = be.to_device(np.full(n, np.nan), dtype)
    be.kernel("dropout", dtype)(n, out, Xd, n, key_on(be), STEP, 0, P)
    x64 = np.asarray(X, dtype).astype(np.float64)
    ref = np.full(n, np.nan, dtype)
    reference.dropout(ref, np.asarray(X, dtype), n, np.array([SEED, EPOCH], np.uint64), STEP, 0, P)
    r = factors64(0, (n,), dtype)
    check(be, out, x64 * r, ref, "dropout.cu", "dropout", dtype, None, f"dropout n={n} on {backend}")
    assert np.array_equal(be.to_host(Xd), np.asarray(X, dtype))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("tile", ["s", "l"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("m,n_in,n_out", [(1, 1, 1), (7, 33, 257), (257, 7, 33), (70, 100, 65)])
def test_layer_drop_kernels(backend, dtype, tile, act, m, n_in, n_out):
    """layer_forward_<act>_drop and layer_delta_<act>_drop (the own route) against float64 and the
    NumPy reference, at sizes that are multiples of no tile, into poisoned outputs."""
    be, npb = get_backend(backend), get_backend("numpy")
    rng = np.random.default_rng(m * 7919 + n_in * 31 + n_out)
    A_in, W = edged(rng, (m, n_in), 0.5), rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)
    b = rng.standard_normal(n_out)
    a, w, b64 = (np.asarray(x, dtype).astype(np.float64) for x in (A_in, W, b))
    r = factors64(1, (m, n_out), dtype)
    grid, block = K.layer_launch(m, n_out, K.LAYER_TILES[tile])
    stem = f"layer_forward_{act}_drop_{tile}"
    out = be.to_device(np.full((m, n_out), np.nan), dtype)
    be.layer_launcher(stem + K.suffix(dtype), grid, block)(out, be.to_device(A_in, dtype), be.to_device(W, dtype),
                                                           be.to_device(b, dtype), m, n_in, n_out, 0, key_on(be),
                                                           STEP, 1, P)
    ref = np.full((m, n_out), np.nan, dtype)
    npb.kernel(stem, dtype)(0, ref, np.asarray(A_in, dtype), np.asarray(W, dtype), np.asarray(b, dtype), m, n_in, n_out,
                            0, key_on(npb), STEP, 1, P)
    scale = (np.abs(a) @ np.abs(w).T + np.abs(b64)) * np.maximum(r, 1)
    check(be, out, ACT64[act](a @ w.T + b64) * r, ref, f"{act}.cu", stem, dtype, scale, f"{stem} {m}x{n_in}->{n_out}")

    # BP2 into the layer just computed: D (m, n_out2) W2 (n_out2, n_out), f' from the dropped output
    n2 = 9
    D, W2 = edged(rng, (m, n2)), rng.standard_normal((n2, n_out))
    d64, w2 = (np.asarray(x, dtype).astype(np.float64) for x in (D, W2))
    A_prev = np.asarray(ref, dtype)  # the dropped output, as stored
    undropped = np.where(r == 0, 0.0, A_prev.astype(np.float64) / np.where(r == 0, 1.0, r))
    grid, block = K.layer_launch(m, n_out, K.LAYER_TILES[tile])
    stem = f"layer_delta_{act}_drop_{tile}"
    out = be.to_device(np.full((m, n_out), np.nan), dtype)
    be.layer_launcher(stem + K.suffix(dtype), grid, block)(out, be.to_device(D, dtype), be.to_device(W2, dtype),
                                                           be.to_device(A_prev, dtype), m, n2, n_out, 0, key_on(be),
                                                           STEP, 1, P)
    refd = np.full((m, n_out), np.nan, dtype)
    npb.kernel(stem, dtype)(0, refd, np.asarray(D, dtype), np.asarray(W2, dtype), A_prev, m, n2, n_out, 0, key_on(npb),
                            STEP, 1, P)
    prime = PRIME64[act](undropped)
    scale = (np.abs(d64) @ np.abs(w2)) * (np.abs(prime) + 2 * np.abs(undropped)) * r
    check(be, out, (d64 @ w2) * prime * r, refd, f"{act}.cu", stem, dtype, scale, f"{stem} {m}x{n2}->{n_out}")


# ---------------------------------------------------------------------------------------------
# The masks
# ---------------------------------------------------------------------------------------------

def test_masks_keep_one_minus_p_and_differ_per_step_epoch_and_layer():
    n, p = 200_000, 0.3
    e = np.arange(n, dtype=np.uint64)
    masks = {k: reference.dropout_factor(SEED, *k, e, p, np.float64)
             for k in [(0, 0, 1), (0, 1, 1), (1, 0, 1), (0, 0, 2)]}  # (epoch, step, layer)
    for k, r in masks.items():
        assert set(np.unique(r)) == {0.0, 1 / (1 - p)}, k
        kept = np.mean(r > 0)
        assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n), (k, kept)  # 5 sigma
        assert abs(np.mean(r) - 1) < 5 * np.sqrt(p / (1 - p) / n)  # inverted dropout keeps the mean
    values = list(masks.values())
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            agree = np.mean((values[i] > 0) == (values[j] > 0))
            assert abs(agree - (p * p + (1 - p) ** 2)) < 0.01  # independent masks agree by chance only
    other_seed = reference.dropout_factor(SEED + 1, 0, 0, 1, e, p, np.float64)
    assert abs(np.mean((other_seed > 0) == (masks[0, 0, 1] > 0)) - (p * p + (1 - p) ** 2)) < 0.01


def test_the_kernels_draw_the_references_masks():
    """A kernel's mask is reference.dropout_factor's, element for element, in float32 and float64."""
    be = get_backend("emulated")
    for dtype in DTYPES:
        n = 4099
        out = be.to_device(np.zeros(n), dtype)
        be.kernel("dropout", dtype)(n, out, be.to_device(np.ones(n), dtype), n, key_on(be), STEP, 5, P)
        assert np.array_equal(be.to_host(out), factors64(5, (n,), dtype).astype(dtype))


# ---------------------------------------------------------------------------------------------
# Gradients and training
# ---------------------------------------------------------------------------------------------

def cost_with_masks(params, net, X, Y, epoch, step):
    """The mean cost (float64) of ``net``'s shape with ``params`` and the dropout masks of (epoch, step),
    written here from the masks alone: A[0] = X r^0, A[l] = f(z) r^l for the hidden layers."""
    ws, bs, k = [], [], 0
    for o, i in net.shapes:
        ws.append(params[k:k + o * i].reshape(o, i))
        k += o * i
    for o, _ in net.shapes:
        bs.append(params[k:k + o])
        k += o
    A = X * factors64(0, X.shape, np.float64, net.input_dropout, net.seed, epoch, step)
    for l in range(net.L):
        z = A @ ws[l].T + bs[l]
        if l == net.L - 1:
            A = OUTPUT64[net.cost.name](z)
        else:
            r = factors64(l + 1, z.shape, np.float64, net.dropout, net.seed, epoch, step)
            A = ACT64[net.activation.name](z) * r
    if net.cost.name == "quadratic":
        return 0.5 * np.sum((A - Y) ** 2) / len(X)
    if net.cost.name == "cross_entropy":
        return -np.sum(Y * np.log(A) + (1 - Y) * np.log(1 - A)) / len(X)
    return -np.sum(Y * np.log(A)) / len(X)


@pytest.mark.parametrize("activation,cost", [("sigmoid", "quadratic"), ("tanh", "cross_entropy"),
                                             ("relu", "log_likelihood")])
def test_gradient_with_the_masks_held_fixed_matches_finite_differences(activation, cost):
    rng = np.random.default_rng(3)
    # biases N(0, 1) (network2's init), so no z sits on relu's kink at 0 when a row's inputs are all dropped
    net = Network([6, 8, 7, 4], cost=cost, activation=activation, backend="numpy", dtype="float64", seed=5,
                  init="network2", dropout=0.4, input_dropout=0.25)
    X, y = rng.random((9, 6)), rng.integers(0, 4, 9)
    Y = one_hot(y, 4)
    net.begin_epoch(2)
    nb, nw = net.backprop(X, Y, step=1)
    grad = np.concatenate([np.ravel(g) for g in nw] + [np.ravel(g) for g in nb])
    params, h = net.get_params(), 1e-6
    fd = np.empty_like(params)
    for i in range(params.size):
        up, down = params.copy(), params.copy()
        up[i] += h
        down[i] -= h
        fd[i] = (cost_with_masks(up, net, X, Y, 2, 1) - cost_with_masks(down, net, X, Y, 2, 1)) / (2 * h)
    assert np.count_nonzero(grad) > grad.size // 3  # the check is not on zeros
    assert_close(grad, fd, atol=1e-8, rtol=1e-6, what=f"dropout gradient vs finite differences ({activation})")
    other = np.concatenate([np.ravel(g) for g in net.backprop(X, Y, step=2)[1]])
    assert not np.allclose(other, grad[:other.size])  # another step's masks give another gradient


def data(n=37, n_in=12, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, n_in)), rng.integers(0, classes, n)


def trained(backend, gemm, dtype, activation, cost="quadratic", epochs=2, graph=False, **kw):
    net = Network([12, 10, 8, 5], cost=cost, activation=activation, backend=backend, gemm=gemm, dtype=dtype, seed=7,
                  **{"dropout": 0.3, "input_dropout": 0.2, **kw})
    net.sgd(data(), epochs=epochs, mini_batch_size=8, eta=0.5, progress=False, graph=graph,
            monitor_training_cost=False)
    return net


ROUTES = [("emulated", "blas"), ("emulated", "own"), ("native", "blas"), ("native", "own")]


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-4)], ids=["f64", "f32"])
@pytest.mark.parametrize("activation,cost", [("sigmoid", "quadratic"), ("tanh", "cross_entropy"),
                                             ("relu", "log_likelihood")])
def test_every_backend_and_route_trains_the_same_weights(activation, cost, dtype, rtol):
    ref = trained("numpy", "blas", dtype, activation, cost)
    plain = trained("numpy", "blas", dtype, activation, cost, dropout=0.0, input_dropout=0.0)
    assert not np.allclose(ref.get_params(), plain.get_params(), rtol=1e-3)  # dropout changed the training
    for backend, gemm in ROUTES:
        net = trained(backend, gemm, dtype, activation, cost)
        assert_close(net.get_params(), ref.get_params(), rtol=rtol, atol=rtol * 1e-2,
                     what=f"{backend} {gemm} vs numpy, {activation} {dtype}")


@pytest.mark.parametrize("backend,gemm", [("emulated", "blas"), ("emulated", "own"), ("native", "own")])
def test_a_graph_epoch_equals_an_eager_epoch_with_dropout(backend, gemm):
    """The masks change every epoch of the replayed graph, as they do eagerly: (seed, epoch) come from the
    key uploaded per epoch, the step from the captured launch."""
    eager = trained(backend, gemm, "float64", "relu", epochs=3)
    graph = trained(backend, gemm, "float64", "relu", epochs=3, graph=True)
    assert np.array_equal(graph.get_params(), eager.get_params())
    reference_ = trained("numpy", "blas", "float64", "relu", epochs=3)
    assert_close(graph.get_params(), reference_.get_params(), rtol=1e-10, atol=1e-12, what=f"{backend} graph vs numpy")


@pytest.mark.parametrize("backend,gemm", [("numpy", "blas"), ("emulated", "blas"), ("emulated", "own"),
                                          ("native", "own")])
def test_p_zero_trains_bit_for_bit_as_no_dropout_with_the_same_launches(backend, gemm):
    kw = {"backend": backend, "gemm": gemm, "dtype": "float32", "seed": 2}
    zero = Network([12, 10, 8, 5], dropout=0.0, input_dropout=0.0, **kw)
    none = Network([12, 10, 8, 5], **kw)
    counts = []
    for net in (zero, none):
        net.sgd(data(), epochs=2, mini_batch_size=8, eta=0.5, progress=False, monitor_training_cost=False)
        X, Y = net.to_device(data()[0][:8]), net.one_hot(net.labels(data()[1][:8]))
        with net.be.counters() as c:
            net.step(X, Y, SGD(0.5))
        counts.append(c.as_dict())
    assert np.array_equal(zero.get_params(), none.get_params())
    assert counts[0] == counts[1]  # no extra kernels, copies or allocations
    assert zero.dropout_key is None


@pytest.mark.parametrize("backend,gemm", [("numpy", "blas"), ("native", "own")])
def test_evaluation_uses_no_masks(backend, gemm):
    dropped = trained(backend, gemm, "float64", "sigmoid", epochs=1)
    plain = Network([12, 10, 8, 5], backend=backend, gemm=gemm, dtype="float64", seed=7)
    plain.set_params(dropped.get_params())
    X, y = data(seed=4)
    out = dropped.be.to_host(dropped.feedforward(X))
    assert np.array_equal(out, plain.be.to_host(plain.feedforward(X)))
    dropped.begin_epoch(5)
    assert np.array_equal(out, dropped.be.to_host(dropped.feedforward(X)))
    assert dropped.measure(X, y) == plain.measure(X, y)
    assert dropped.evaluate(X, y) == plain.evaluate(X, y)


def test_steps_draw_new_masks_unless_told_the_same_step():
    X, y = data()
    grads = []
    net = Network([12, 10, 5], backend="numpy", dtype="float64", seed=1, dropout=0.5)
    for step in (None, None, 0):  # None: 0, then 1; then step 0 again
        grads.append(np.concatenate([np.ravel(g) for g in net.backprop(X, y, step=step)[1]]))
    assert not np.allclose(grads[0], grads[1]) and np.array_equal(grads[0], grads[2])
    net.begin_epoch(1)
    assert not np.allclose(np.concatenate([np.ravel(g) for g in net.backprop(X, y, step=0)[1]]), grads[0])


# ---------------------------------------------------------------------------------------------
# Model files and resume
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,gemm", [("numpy", "blas"), ("native", "own")])
def test_save_load_and_resume_are_exact_with_dropout(tmp_path, backend, gemm):
    straight = trained(backend, gemm, "float64", "tanh", epochs=4)
    first = trained(backend, gemm, "float64", "tanh", epochs=2)
    first.save(tmp_path / "m.npz")
    loaded = Network.load(tmp_path / "m.npz", backend=backend, gemm=gemm)
    assert (loaded.dropout, loaded.input_dropout) == (0.3, 0.2)
    assert loaded.config() == first.config() and loaded.config()["dropout"] == 0.3
    loaded.sgd(data(), epochs=2, progress=False, resume=True, monitor_training_cost=False)
    assert np.array_equal(loaded.get_params(), straight.get_params())
    assert Network(**first.config(), backend=backend).input_dropout == 0.2


def test_a_model_file_without_dropout_loads_as_none(tmp_path):
    Network([4, 3, 2], backend="numpy", seed=1).save(tmp_path / "plain.npz")
    assert Network.load(tmp_path / "plain.npz").dropout == 0.0


def test_a_model_file_with_a_bad_dropout_is_refused(tmp_path):
    from gpubp import checkpoint

    net = Network([4, 3, 2], backend="numpy", seed=1, dropout=0.5)
    net.save(tmp_path / "m.npz")
    meta, arrays = checkpoint.load(tmp_path / "m.npz")
    meta["model"]["dropout"] = 1.5
    checkpoint.save(tmp_path / "bad.npz", meta, arrays)
    with pytest.raises(ModelFileError, match="dropout must be a probability"):
        Network.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("kw", [{"dropout": 1.0}, {"dropout": -0.1}, {"input_dropout": "half"},
                                {"dropout": float("nan")}])
def test_bad_dropout_is_a_one_line_error(kw):
    with pytest.raises(GpubpError, match="must be a probability in \\[0, 1\\)"):
        Network([4, 3, 2], backend="numpy", **kw)


def test_a_stack_refuses_dropout():
    """A Stack (K models with leading axes) has no dropout: making one with it is a one-line error."""
    from gpubp.sweeps.stack import Stack

    stack = Stack.__new__(Stack)
    stack.lead = (2,)
    with pytest.raises(GpubpError, match="not a stack"):
        Network.__init__(stack, [4, 3, 2], backend="numpy", dropout=0.5)


# ---------------------------------------------------------------------------------------------
# CuPy: on a GPU, and through the stand-in here
# ---------------------------------------------------------------------------------------------

def test_training_with_dropout_on_the_cupy_path_matches_numpy(cupy_be):
    be, fake = cupy_be
    for gemm in ("blas", "own"):
        net = trained(be, gemm, "float64", "relu", epochs=2)
        ref = trained("numpy", "blas", "float64", "relu", epochs=2)
        assert_close(net.get_params(), ref.get_params(), rtol=1e-10, atol=1e-12, what=f"cupy stand-in {gemm} vs numpy")
    assert any("_drop_f64" in name for name in fake.calls["launches"])


def test_a_graph_epoch_with_dropout_on_the_cupy_path_matches_eager(cupy_be):
    be, _ = cupy_be
    eager = trained(be, "own", "float64", "sigmoid", epochs=3)
    graph = trained(be, "own", "float64", "sigmoid", epochs=3, graph=True)
    assert np.array_equal(be.to_host(graph.params), be.to_host(eager.params))


@pytest.mark.gpu
@pytest.mark.parametrize("gemm", ["blas", "own"])
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-4)], ids=["f64", "f32"])
def test_cupy_trains_with_dropout_as_numpy(gemm, dtype, rtol):
    got = trained("cupy", gemm, dtype, "relu", epochs=2)
    assert_close(got.get_params(), trained("numpy", "blas", dtype, "relu", epochs=2).get_params(), rtol=rtol,
                 atol=rtol * 1e-2, what=f"cupy {gemm} vs numpy")
    graph = trained("cupy", gemm, dtype, "relu", epochs=2, graph=True)
    assert np.array_equal(graph.get_params(), got.get_params())
