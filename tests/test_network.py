"""BP1-BP4 against finite differences for every activation x cost, against network.py's per-example
loop, the optimizers' rules against float64 re-derivations, one seed, the flat buffer, bad input."""

import numpy as np
import pytest
from helpers import assert_close, assert_differs, assert_equal, cost64, forward64, one_hot, sigmoid64, sigmoid_prime64

from gpubp import Network, reference
from gpubp.activations import ACTIVATIONS
from gpubp.bench.nielsen import backprop_one
from gpubp.costs import COSTS
from gpubp.errors import GpubpError
from gpubp.optimizers import SGD, Adam, Momentum

PAIRS = [(a, c) for a in ACTIVATIONS for c in COSTS]


def small_net(cost="quadratic", activation="sigmoid", sizes=(7, 6, 5, 4), seed=3, backend="numpy", dtype="float64"):
    return Network(list(sizes), cost=cost, activation=activation, backend=backend, dtype=dtype, seed=seed)


def batch(rng, m=9, n_in=7, n_out=4):
    X = rng.standard_normal((m, n_in))
    y = rng.integers(0, n_out, m)
    return X, y, one_hot(y, n_out)


def host_params(net):
    return [np.array(w) for w in net.weights], [np.array(b) for b in net.biases]


def rel_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


def numeric_gradient(net, f, h=1e-5):
    """Central differences of f(weights, biases) over every parameter of ``net`` (float64)."""
    flat = net.get_params()
    numeric = np.zeros_like(flat)
    for i in range(flat.size):
        for sign in (+1, -1):
            p = flat.copy()
            p[i] += sign * h
            net.set_params(p)
            numeric[i] += sign * f(*host_params(net))
    net.set_params(flat)
    return numeric / (2 * h)


@pytest.mark.parametrize("activation,cost", PAIRS)
def test_gradient_matches_central_differences(activation, cost):
    """backprop's gradient of the mean cost equals float64 central differences of a cost written
    independently (tests/helpers.py), for every hidden activation and every cost."""
    rng = np.random.default_rng(11)
    net = small_net(cost, activation)
    X, y, Y = batch(rng)
    nabla_b, nabla_w = net.backprop(X, Y)
    grad = np.concatenate([np.ravel(g) for g in nabla_w] + [np.ravel(g) for g in nabla_b])
    numeric = numeric_gradient(net, lambda W, B: cost64(W, B, X, Y, cost, activation=activation))
    assert np.abs(grad).max() > 1e-3  # a real gradient, not a trivially small one
    assert rel_error(grad, numeric) < 1e-7


@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy"])
def test_l2_step_follows_the_regularized_cost_gradient(cost):
    """update_mini_batch with lmbda > 0 steps along the gradient of cost + 0.5*(lmbda/n)*sum w^2,
    biases undecayed: checked against central differences of that regularized cost."""
    rng = np.random.default_rng(12)
    net = small_net(cost)
    X, y, Y = batch(rng)
    eta, lmbda, n = 0.3, 5.0, 40
    before = net.get_params()
    numeric = numeric_gradient(net, lambda W, B: cost64(W, B, X, Y, cost, lmbda=lmbda, n=n))
    net.update_mini_batch(X, Y, eta, lmbda=lmbda, n=n)
    step = (before - net.get_params()) / eta
    assert rel_error(step, numeric) < 1e-7
    # and without L2 the weights carry no decay: the two steps differ by exactly lmbda/n * w
    net.set_params(before)
    net.update_mini_batch(X, Y, eta)
    plain = (before - net.get_params()) / eta
    nw = net.n_weights
    assert_close(step[:nw] - plain[:nw], lmbda / n * before[:nw], atol=1e-12, what="L2 term on weights")
    assert_close(step[nw:], plain[nw:], atol=1e-12, what="biases are not decayed")


def test_l2_without_n_is_an_error():
    net = small_net()
    X, y, Y = batch(np.random.default_rng(0))
    with pytest.raises(GpubpError, match="needs n"):
        net.update_mini_batch(X, Y, 0.1, lmbda=1.0)


@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy"])
def test_batch_gradient_is_mean_of_network_py_per_example_gradients(cost):
    rng = np.random.default_rng(13)
    net = small_net(cost, sizes=(12, 8, 7, 5), seed=5)
    X, y, Y = batch(rng, m=17, n_in=12, n_out=5)
    nabla_b, nabla_w = net.backprop(X, Y)
    W, B = host_params(net)
    sum_b = [np.zeros_like(b) for b in B]
    sum_w = [np.zeros_like(w) for w in W]
    for x, t in zip(X, Y):
        db, dw = backprop_one(W, B, x, t, cost)
        sum_b = [s + d for s, d in zip(sum_b, db)]
        sum_w = [s + d for s, d in zip(sum_w, dw)]
    for l in range(net.L):
        assert_close(nabla_w[l], sum_w[l] / len(X), atol=1e-12, what=f"nabla_w[{l}]")
        assert_close(nabla_b[l], sum_b[l] / len(X), atol=1e-12, what=f"nabla_b[{l}]")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fused_sgd_equals_gradient_then_update(dtype):
    """Plain SGD writes its update inside BP3/BP4 (one GEMM with alpha and beta); the same step
    through the gradient buffer and the sgd_update kernel gives the same parameters."""
    rng = np.random.default_rng(14)
    X, y, _ = batch(rng, m=23)
    nets = [small_net("cross_entropy", "tanh", dtype=dtype) for _ in range(2)]
    for net, fused in zip(nets, (True, False)):
        opt = SGD(0.7, lmbda=3.0, n=100, fused=fused)
        net.grads.fill(np.nan)  # the fused path never writes the gradient buffer
        for _ in range(3):
            net.step(net.to_device(X), net.targets(y, len(X)), opt)
        assert np.isfinite(net.get_params()).all()
        assert np.isnan(net.be.to_host(net.grads)).all() == fused
    assert_differs(nets[0].get_params(), small_net("cross_entropy", "tanh", dtype=dtype).get_params())
    tol = 1e-6 if dtype == "float32" else 1e-14
    assert_close(nets[0].get_params(), nets[1].get_params(), rtol=tol, atol=tol, what="fused vs unfused SGD")


def test_momentum_follows_its_rule_in_float64():
    """Three momentum steps equal v <- mu v - eta (grad + lmbda/n w), w <- w + v, re-derived here
    from backprop's gradient (biases without L2)."""
    rng = np.random.default_rng(15)
    net = small_net("log_likelihood", "relu")
    X, y, Y = batch(rng, m=12)
    eta, mu, lmbda, n = 0.2, 0.8, 4.0, 60
    p, v = net.get_params(), np.zeros(net.n_params)
    l2 = np.where(np.arange(net.n_params) < net.n_weights, lmbda / n, 0.0)
    opt = Momentum(eta, lmbda, n, momentum=mu)
    for _ in range(3):
        probe = small_net("log_likelihood", "relu")
        probe.set_params(p)
        nb, nw = probe.backprop(X, Y)
        g = np.concatenate([np.ravel(a) for a in nw] + [np.ravel(a) for a in nb])
        v = mu * v - eta * (g + l2 * p)
        p = p + v
        net.step(net.to_device(X), net.targets(Y, len(X)), opt)
    assert_close(net.get_params(), p, rtol=1e-12, atol=1e-14, what="momentum")
    assert_close(opt.state_arrays()["velocity"], v, rtol=1e-12, atol=1e-14, what="velocity")


def test_adam_follows_its_rule_in_float64():
    """Three Adam steps equal the bias-corrected rule with decoupled decay, re-derived here."""
    rng = np.random.default_rng(16)
    net = small_net("cross_entropy", "sigmoid")
    X, y, Y = batch(rng, m=12)
    eta, lmbda, n, b1, b2, eps = 0.01, 2.0, 50, 0.9, 0.999, 1e-8
    p, m, v = net.get_params(), np.zeros(net.n_params), np.zeros(net.n_params)
    decay = np.where(np.arange(net.n_params) < net.n_weights, 1 - eta * lmbda / n, 1.0)
    opt = Adam(eta, lmbda, n)
    for t in range(1, 4):
        probe = small_net("cross_entropy", "sigmoid")
        probe.set_params(p)
        nb, nw = probe.backprop(X, Y)
        g = np.concatenate([np.ravel(a) for a in nw] + [np.ravel(a) for a in nb])
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = decay * p - eta * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        net.step(net.to_device(X), net.targets(Y, len(X)), opt)
    assert_close(net.get_params(), p, rtol=1e-12, atol=1e-14, what="adam")
    assert int(opt.state["steps"][0]) == 3


@pytest.mark.parametrize("dtype,atol", [(np.float32, 1e-6), (np.float64, 1e-15)])
def test_sigmoid_matches_float64_reference_without_warnings(dtype, atol):
    z = np.concatenate([np.linspace(-40, 40, 4001), [-1000, -745, -88, 88, 745, 1000, 0.0]]).astype(dtype)
    s = reference.sigmoid(z)  # pytest turns any overflow warning into an error
    assert s.dtype == dtype
    assert_close(s, sigmoid64(z), atol=atol, what="sigma")
    assert s[-7] == 0.0 and s[-2] == 1.0 and s[-1] == 0.5
    assert_close(reference.sigmoid_prime_from_output(s), sigmoid_prime64(z), atol=atol, what="sigma'")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_output_rows_of_plus_minus_1000_stay_finite(dtype):
    """The log-likelihood network's softmax subtracts the row maximum: huge logits give 0/1, not NaN."""
    net = Network([3, 4], cost="log_likelihood", dtype=dtype, seed=1)
    net.weights[0][...] = 0
    net.biases[0][...] = net.xp.asarray([1000.0, -1000.0, 999.0, 0.0], dtype=dtype)
    out = net.be.to_host(net.feedforward(np.ones((2, 3))))
    assert np.isfinite(out).all()
    assert_close(out, np.tile([1 / (1 + np.exp(-1.0)), 0, 1 / (1 + np.e), 0], (2, 1)), atol=1e-6, what="softmax")
    assert_close(out.sum(axis=1), np.ones(2), atol=1e-6, what="rows sum to 1")


def test_parameters_live_in_one_buffer_as_writable_views():
    net = small_net(sizes=(5, 4, 3), dtype="float32")
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
    assert_differs(a.get_params(), Network([784, 100, 10], seed=8).get_params())
    assert abs(np.std(a.weights[0]) - 1 / np.sqrt(784)) < 0.002  # network2: N(0, 1/n_in)
    large = Network([784, 100, 10], seed=7, init="large")
    assert abs(np.std(large.weights[0]) - 1.0) < 0.02  # network.py: N(0, 1)
    assert abs(np.std(a.biases[0]) - 1.0) < 0.2
    relu = Network([784, 100, 10], activation="relu", seed=7)
    assert relu.init == "he" and abs(np.std(relu.weights[0]) - np.sqrt(2 / 784)) < 0.002  # He: N(0, 2/n_in)
    assert abs(np.std(relu.weights[1]) - np.sqrt(2 / 100)) < 0.02 and not relu.get_params()[relu.n_weights:].any()
    assert Network([4, 3], activation="relu", init="network2", seed=1).init == "network2"  # an explicit init wins


def test_one_seed_fixes_weights_and_shuffling():
    """Network(seed=s) alone makes training repeatable; sgd(seed=...) overrides the shuffle only."""
    rng = np.random.default_rng(0)
    X, y = rng.random((60, 6)), rng.integers(0, 3, 60)

    def trained(**kw):
        net = Network([6, 5, 3], seed=4)
        net.sgd((X, y), epochs=2, mini_batch_size=7, eta=1.0, monitor_training_cost=False, **kw)
        return net.get_params()

    assert_equal(trained(), trained())
    assert_differs(trained(), trained(seed=99))
    assert_equal(trained(seed=99), trained(seed=99))
    unseeded = Network([6, 5, 3])
    assert isinstance(unseeded.seed, int) and unseeded.seed >= 0  # drawn, and kept so a run can be repeated
    again = Network([6, 5, 3], seed=unseeded.seed)
    assert_equal(again.get_params(), unseeded.get_params())


@pytest.mark.parametrize("activation,cost", [("sigmoid", "quadratic"), ("relu", "log_likelihood")])
def test_feedforward_matches_float64_reference(activation, cost):
    rng = np.random.default_rng(4)
    net = small_net(cost, activation, sizes=(7, 6, 4), dtype="float32")
    X = rng.standard_normal((11, 7))
    assert_close(net.feedforward(X), forward64(*host_params(net), X, cost, activation), atol=3e-6, what="feedforward")


@pytest.mark.parametrize("optimizer", [SGD(0.5, 5.0, 50_000), Momentum(0.05, 5.0, 50_000), Adam(0.001)],
                         ids=["sgd", "momentum", "adam"])
def test_training_step_allocates_nothing_after_the_first(optimizer):
    import tracemalloc

    net = Network([784, 100, 10], backend="numpy", seed=1)
    rng = np.random.default_rng(0)
    X = rng.random((2000, 784), dtype=np.float32)
    Y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 2000)]
    net.step(X, Y, optimizer)  # first step: workspaces and the optimizer's state appear
    with net.be.counters() as c:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(3):
            net.step(X, Y, optimizer)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    assert c.allocs == 0
    # One (2000, 100) float32 temporary alone would be 800 kB, a parameter-sized one 318 kB. What
    # remains is Python's bookkeeping and the fixed <= 32 KiB buffer NumPy's ufunc iterator takes
    # for the broadcast bias add.
    assert peak < 64 * 1024, f"a training step allocated {peak} bytes"


def test_bad_shapes_and_sizes_are_clear_errors():
    with pytest.raises(GpubpError, match="sizes"):
        Network([784])
    with pytest.raises(GpubpError, match="float32 or float64"):
        Network([4, 2], dtype="float16")
    with pytest.raises(GpubpError, match="unknown cost 'hinge'"):
        Network([4, 2], cost="hinge")
    with pytest.raises(GpubpError, match="unknown activation 'swish'"):
        Network([4, 2], activation="swish")
    with pytest.raises(GpubpError, match="at most 1,000,000,000"):
        Network([784, 100_000_000, 10])  # refused before anything is allocated
    with pytest.raises(GpubpError, match="non-negative"):
        Network([4, 2], seed=-1)
    net = Network([4, 2])
    with pytest.raises(GpubpError, match=r"shape \(m, 4\)"):
        net.feedforward(np.ones((3, 5)))
    with pytest.raises(GpubpError, match=r"lie in \[0, 1\]"):
        net.backprop(np.ones((3, 4)), np.array([0, 1, 2]))


# ---------------------------------------------------------------------------------------------
# Routes: the objects a network is built with, which issue each move of a step
# ---------------------------------------------------------------------------------------------

def recording(route):
    """``route`` with each move the network asks of it appended to ``route.moves`` ("forward 0",
    "output", ...); a move the route makes inside another (the BLAS output's forward) is not one."""

    def recorded(name):
        def move(self, *args):
            label = name if name == "output" else f"{name} {args[0]}"
            if not self.inside:
                self.moves.append(label)
            self.inside += 1
            try:
                getattr(super(Recording, self), name)(*args)
            finally:
                self.inside -= 1
        return move

    class Recording(type(route)):
        forward, output, delta = recorded("forward"), recorded("output"), recorded("delta")
        gradient, update = recorded("gradient"), recorded("update")

    rec = Recording(route.net)
    rec.moves, rec.inside = [], 0
    return rec


ROUTE_CASES = [("numpy", "blas"), ("emulated", "blas"), ("emulated", "own")]


@pytest.mark.parametrize("backend,gemm", ROUTE_CASES)
@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_a_step_runs_the_equations_in_the_chapter_s_order_through_its_route(backend, gemm, optimizer):
    """Forward through the hidden layers, the output layer with BP1, then from the top BP2 before
    each layer's BP3/BP4 (as SGD's update, or into grads for the optimizer's kernel); the route
    object the network was built with issues every move, and recording them changes no number."""
    X, y, _ = batch(np.random.default_rng(4), n_out=5)
    plain = Network([7, 6, 5, 5], backend=backend, dtype="float64", seed=2, gemm=gemm)
    watched = Network([7, 6, 5, 5], backend=backend, dtype="float64", seed=2, gemm=gemm)
    assert watched.route.name == gemm
    watched.route = recording(watched.route)
    opt = {"sgd": lambda: SGD(0.5, 1.0, 100), "momentum": lambda: Momentum(0.1, 1.0, 100)}[optimizer]
    labels = plain.labels(y)
    plain.step(plain.to_device(X), plain.one_hot(labels), opt())
    watched.step(watched.to_device(X), watched.one_hot(labels), opt())
    bp34 = "update" if optimizer == "sgd" else "gradient"
    assert watched.route.moves == ["forward 0", "forward 1", "output", "delta 2", f"{bp34} 2", "delta 1",
                                   f"{bp34} 1", f"{bp34} 0"]
    assert_close(watched.get_params(), plain.get_params(), what=f"{backend} {gemm} params")


def test_a_stack_trains_through_its_route_not_through_private_hooks():
    """Stack changes no private method of Network: its two differences (each model's bias, SGD
    folded model by model) are its route's, and only where its products are host BLAS calls."""
    from gpubp.sweeps.stack import Stack, StackRoute

    overridden = {k for k, v in vars(Stack).items() if callable(v) and k.startswith("_") and not k.startswith("__")}
    assert overridden == set()
    rng = np.random.default_rng(6)
    X = rng.standard_normal((2, 9, 7))
    Y = np.eye(4)[rng.integers(0, 4, (2, 9))]
    for backend, folds in (("numpy", True), ("emulated", False)):
        stack = Stack([7, 5, 4], [1, 2], backend=backend, dtype="float64")
        assert isinstance(stack.route, StackRoute)
        stack.grads[...] = np.nan  # a fold writes W and b in its products and never touches grads
        from gpubp.optimizers import ModelOptimizers

        stack.step(X, Y, ModelOptimizers([SGD(0.5), SGD(0.3)]))
        assert np.isnan(stack.be.to_host(stack.grads)).all() == folds, backend
        one = Network([7, 5, 4], backend="numpy", dtype="float64", seed=2)
        one.step(X[1], Y[1], SGD(0.3))
        assert_close(stack.get_params()[1], one.get_params(), rtol=1e-12, what=f"{backend} model 1 as a network")


@pytest.mark.parametrize("backend", ["numpy", "emulated", "native"])
def test_the_default_route_is_the_own_one_where_epochs_are_graphs_the_blas_cannot_join(backend):
    from gpubp.backends import get_backend

    be = get_backend(backend)
    net = Network([6, 5, 3], backend=be)
    can_graph_blas, _ = be.graph_support("blas")
    assert net.gemm == ("own" if be.graphs_by_default and not can_graph_blas else "blas")
    wide = Network([6, 5, 300], cost="log_likelihood", backend=be)  # softmax too wide for the own route's kernel
    assert wide.gemm == "blas"


def test_the_cupy_backend_keeps_the_blas_route_by_default(cupy_be):
    be, _ = cupy_be
    assert Network([6, 5, 3], backend=be).gemm == "blas"
