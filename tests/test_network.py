"""BP1-BP4 against finite differences and against the seed notes' per-example loop; sigma; the flat buffer."""

import numpy as np
import pytest
from helpers import assert_close, cost64, one_hot, seed_notes_backprop, sigmoid64, sigmoid_prime64

from gpubp import Network
from gpubp import kernels as K

COSTS = ["quadratic", "cross_entropy"]


def small_net(cost, sizes=(7, 6, 5, 4), seed=3, backend="numpy", dtype="float64"):
    return Network(list(sizes), cost=cost, backend=backend, dtype=dtype, seed=seed)


def batch(rng, m=9, n_in=7, n_out=4):
    X = rng.standard_normal((m, n_in))
    y = rng.integers(0, n_out, m)
    return X, y, one_hot(y, n_out)


def host_params(net):
    return [np.array(w) for w in net.weights], [np.array(b) for b in net.biases]


def rel_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("cost", COSTS)
def test_gradient_matches_central_differences(cost):
    rng = np.random.default_rng(11)
    net = small_net(cost)
    X, y, Y = batch(rng)
    nabla_b, nabla_w = net.backprop(X, Y)
    grad = np.concatenate([np.ravel(g) for g in nabla_w] + [np.ravel(g) for g in nabla_b])
    flat = net.get_params()
    numeric = np.zeros_like(flat)
    h = 1e-5
    for i in range(flat.size):
        for sign in (+1, -1):
            p = flat.copy()
            p[i] += sign * h
            net.set_params(p)
            W, B = host_params(net)
            numeric[i] += sign * cost64(W, B, X, Y, cost)
    numeric /= 2 * h
    assert np.abs(grad).max() > 1e-3  # a real gradient, not a trivially small one
    assert rel_error(grad, numeric) < 1e-7


@pytest.mark.parametrize("cost", COSTS)
def test_l2_step_follows_the_regularized_cost_gradient(cost):
    """update_mini_batch with lmbda > 0 steps along the gradient of cost + 0.5*(lmbda/n)*sum w^2,
    biases undecayed: checked against central differences of that regularized cost."""
    rng = np.random.default_rng(12)
    net = small_net(cost)
    X, y, Y = batch(rng)
    eta, lmbda, n = 0.3, 5.0, 40
    before = net.get_params()
    W, B = host_params(net)
    nw = net.n_weights
    numeric = np.empty_like(before)
    h = 1e-5
    for i in range(before.size):
        up, down = before.copy(), before.copy()
        up[i] += h
        down[i] -= h
        vals = []
        for p in (up, down):
            net.set_params(p)
            Wp, Bp = host_params(net)
            vals.append(cost64(Wp, Bp, X, Y, cost, lmbda=lmbda, n=n))
        numeric[i] = (vals[0] - vals[1]) / (2 * h)
    net.set_params(before)
    net.update_mini_batch(X, Y, eta, lmbda=lmbda, n=n)
    step = (before - net.get_params()) / eta
    assert rel_error(step, numeric) < 1e-7
    # and without L2 the weights carry no decay: the two steps differ by exactly lmbda/n * w
    net.set_params(before)
    net.update_mini_batch(X, Y, eta)
    plain = (before - net.get_params()) / eta
    assert_close(step[:nw] - plain[:nw], lmbda / n * before[:nw], atol=1e-12, what="L2 term on weights")
    assert_close(step[nw:], plain[nw:], atol=1e-12, what="biases are not decayed")


def test_l2_without_n_is_an_error():
    net = small_net("quadratic")
    X, y, Y = batch(np.random.default_rng(0))
    with pytest.raises(Exception, match="needs n"):
        net.update_mini_batch(X, Y, 0.1, lmbda=1.0)


@pytest.mark.parametrize("cost", COSTS)
def test_batch_gradient_is_mean_of_seed_notes_per_example_gradients(cost):
    rng = np.random.default_rng(13)
    net = small_net(cost, sizes=(12, 8, 7, 5), seed=5)
    X, y, Y = batch(rng, m=17, n_in=12, n_out=5)
    nabla_b, nabla_w = net.backprop(X, Y)
    W, B = host_params(net)
    sum_b = [np.zeros_like(b) for b in B]
    sum_w = [np.zeros_like(w) for w in W]
    for x, t in zip(X, Y):
        db, dw = seed_notes_backprop(W, B, x, t, cost)
        sum_b = [s + d for s, d in zip(sum_b, db)]
        sum_w = [s + d for s, d in zip(sum_w, dw)]
    for l in range(net.L):
        assert_close(nabla_w[l], sum_w[l] / len(X), atol=1e-12, what=f"nabla_w[{l}]")
        assert_close(nabla_b[l], sum_b[l] / len(X), atol=1e-12, what=f"nabla_b[{l}]")


@pytest.mark.parametrize("dtype,atol", [(np.float32, 1e-6), (np.float64, 1e-15)])
def test_sigmoid_matches_float64_reference_without_warnings(dtype, atol):
    z = np.concatenate([np.linspace(-40, 40, 4001), [-1000, -745, -88, 88, 745, 1000, 0.0]]).astype(dtype)
    s = K.sigmoid(z)  # pytest turns any overflow warning into an error
    assert s.dtype == dtype
    assert_close(s, sigmoid64(z), atol=atol, what="sigma")
    assert s[-7] == 0.0 and s[-2] == 1.0 and s[-1] == 0.5
    a = K.sigmoid(z)
    assert_close(K.sigmoid_prime_from_activation(a), sigmoid_prime64(z), atol=atol, what="sigma'")


def test_parameters_live_in_one_buffer_as_writable_views():
    net = small_net("quadratic", sizes=(5, 4, 3), dtype="float32")
    assert net.params.dtype == np.float32 and net.params.shape == (5 * 4 + 4 * 3 + 4 + 3,)
    assert [w.shape for w in net.weights] == [(4, 5), (3, 4)]
    assert [b.shape for b in net.biases] == [(4,), (3,)]
    for v in net.weights + net.biases:
        assert np.shares_memory(v, net.params)
    net.weights[1][2, 3] = 42.0
    net.biases[0][1] = -7.0
    flat = net.get_params()
    assert flat[20 + 2 * 4 + 3] == 42.0 and flat[32 + 1] == -7.0
    for v in net.grad_weights + net.grad_biases:
        assert np.shares_memory(v, net.grads)


def test_initialization_is_seeded_and_scaled():
    a = Network([784, 100, 10], seed=7)
    b = Network([784, 100, 10], seed=7, dtype="float64")
    assert_close(a.get_params(), b.get_params(), rtol=2**-24, what="same seed, same start (float32 rounding)")
    assert not np.array_equal(a.get_params(), Network([784, 100, 10], seed=8).get_params())
    assert abs(np.std(a.weights[0]) - 1 / np.sqrt(784)) < 0.002  # network2: N(0, 1/n_in)
    large = Network([784, 100, 10], seed=7, init="large")
    assert abs(np.std(large.weights[0]) - 1.0) < 0.02  # network.py: N(0, 1)
    assert abs(np.std(a.biases[0]) - 1.0) < 0.2


def test_feedforward_matches_float64_reference():
    rng = np.random.default_rng(4)
    net = small_net("quadratic", sizes=(7, 6, 4), dtype="float32")
    X = rng.standard_normal((11, 7))
    W, B = host_params(net)
    A = X
    for w, b in zip(W, B):
        A = sigmoid64(A @ w.T.astype(np.float64) + b)
    assert_close(net.feedforward(X), A, atol=2e-6, what="feedforward")


def test_training_step_allocates_nothing_after_the_first():
    import tracemalloc

    net = Network([784, 100, 10], backend="numpy", seed=1)
    rng = np.random.default_rng(0)
    X = rng.random((2000, 784), dtype=np.float32)
    Y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 2000)]
    net._step(X, Y, 0.5, 0.999)  # first step: workspaces appear
    with net.be.counters() as c:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(3):
            net._step(X, Y, 0.5, 0.999)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    assert c.allocs == 0
    # One (2000, 100) float32 temporary alone would be 800 kB. What remains is Python's bookkeeping
    # and the fixed <= 32 KiB buffer NumPy's ufunc iterator takes for the broadcast bias add.
    assert peak < 64 * 1024, f"a training step allocated {peak} bytes"


def test_bad_shapes_and_sizes_are_clear_errors():
    from gpubp.errors import GpubpError

    with pytest.raises(GpubpError, match="sizes"):
        Network([784])
    with pytest.raises(GpubpError, match="float32 or float64"):
        Network([4, 2], dtype="float16")
    with pytest.raises(GpubpError, match="cost"):
        Network([4, 2], cost="hinge")
    net = Network([4, 2])
    with pytest.raises(GpubpError, match=r"shape \(m, 4\)"):
        net.feedforward(np.ones((3, 5)))
    with pytest.raises(GpubpError, match=r"lie in \[0, 1\]"):
        net.backprop(np.ones((3, 4)), np.array([0, 1, 2]))
