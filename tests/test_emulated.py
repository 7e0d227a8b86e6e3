"""The whole training path on the kernel backends: same weights as NumPy, and the device-efficiency
counters (launches, GEMMs, copies, syncs, allocations) a GPU step must meet."""

import numpy as np
import pytest
from helpers import assert_close, assert_differs

from gpubp import Network, train
from gpubp.activations import ACTIVATIONS
from gpubp.backends import get_backend
from gpubp.costs import COSTS
from gpubp.optimizers import SGD, make_optimizer

KERNEL_BACKENDS = ["emulated", pytest.param("cupy", marks=pytest.mark.gpu)]
TOL = {"float64": 1e-10, "float32": 1e-4}  # relative


def params_close(a, b, dtype, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rel = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert rel <= TOL[dtype], f"{what}: relative difference {rel:.3e} > {TOL[dtype]:g}"
    assert_close(a, b, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(b).max(), what=what)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cost", ["quadratic", "cross_entropy"])
def test_update_mini_batch_matches_numpy(backend, dtype, cost):
    rng = np.random.default_rng(21)
    X = rng.random((37, 50))
    y = rng.integers(0, 10, 37)
    nets = {b: Network([50, 33, 17, 10], cost=cost, backend=b, dtype=dtype, seed=8) for b in ("numpy", backend)}
    for net in nets.values():
        for _ in range(3):
            net.update_mini_batch(X, y, 0.9, lmbda=2.0, n=1000)
    a, b = nets[backend].get_params(), nets["numpy"].get_params()
    assert_differs(a, Network([50, 33, 17, 10], seed=8, dtype=dtype).get_params())  # it moved
    params_close(a, b, dtype, f"{backend} vs numpy after update_mini_batch")
    grads = [nets[k].backprop(X, y) for k in ("numpy", backend)]
    for g_ref, g in zip(grads[0][1] + grads[0][0], grads[1][1] + grads[1][0]):
        params_close(nets[backend].be.to_host(g), g_ref, dtype, "backprop gradient")


OPTIMIZER_ETA = {"sgd": 0.5, "momentum": 0.1, "adam": 0.01}
COMBOS = [(a, c, o) for a in ACTIVATIONS for c in COSTS for o in OPTIMIZER_ETA]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation,cost,optimizer", COMBOS)
@pytest.mark.filterwarnings("ignore::gpubp.errors.TrainingWarning")  # random labels: at chance, rightly
def test_every_activation_cost_and_optimizer_trains_as_on_numpy(backend, dtype, activation, cost, optimizer):
    """Two epochs (with L2, a partial last batch and evaluation) give NumPy's weights and state."""
    rng = np.random.default_rng(31)
    X, y = rng.random((45, 20)), rng.integers(0, 5, 45)
    out = {}
    for b in ("numpy", backend):
        net = Network([20, 9, 7, 5], cost=cost, activation=activation, backend=b, dtype=dtype, seed=6)
        h = net.sgd((X, y), epochs=2, mini_batch_size=8, eta=OPTIMIZER_ETA[optimizer], lmbda=1.5,
                    evaluation_data=(X, y), optimizer=optimizer, momentum=0.8)
        out[b] = (net.get_params(), net.optimizer.state_arrays(), h)
    params_close(out[backend][0], out["numpy"][0], dtype, f"{backend} vs numpy weights")
    for k, v in out["numpy"][1].items():
        params_close(out[backend][1][k], v, dtype, f"{backend} vs numpy {k}")
    assert out[backend][2][-1]["train_cost"] == pytest.approx(out["numpy"][2][-1]["train_cost"], rel=TOL[dtype])


@pytest.mark.slow
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_200_sgd_steps_on_mnist_match_numpy(mnist, backend, dtype):
    X, y = mnist["train"][0][:2000], mnist["train"][1][:2000]
    ev = (mnist["validation"][0][:500], mnist["validation"][1][:500])
    out = {}
    for b in ("numpy", backend):
        net = Network([784, 30, 10], backend=b, dtype=dtype, seed=2)
        h = net.sgd((X, y), epochs=1, mini_batch_size=10, eta=3.0, lmbda=1.0, evaluation_data=ev, seed=3)
        out[b] = (net.get_params(), h[0])
    params_close(out[backend][0], out["numpy"][0], dtype, f"{backend} vs numpy after 200 steps")
    assert out[backend][1]["validation_accuracy"] == pytest.approx(out["numpy"][1]["validation_accuracy"], abs=0.004)
    assert out["numpy"][1]["validation_accuracy"] > 0.7  # it learned


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("sizes", [[784, 30, 10], [784, 100, 50, 10]], ids=["L2", "L3"])
def test_a_training_step_meets_the_counter_targets(backend, sizes):
    be = get_backend(backend)
    L = len(sizes) - 1
    net = Network(sizes, backend=be, seed=1)
    rng = np.random.default_rng(0)
    X = be.to_device(rng.random((10, 784)), np.float32)
    Y = be.to_device(np.eye(10)[rng.integers(0, 10, 10)], np.float32)
    opt = SGD(3.0, lmbda=5.0, n=50_000)
    net.step(X, Y, opt)  # the first step allocates the workspaces
    with be.counters() as c:
        net.step(X, Y, opt)
    assert c.launches == 2 * L  # L bias+sigma, 1 output delta, L-1 hidden deltas; the update rides in the GEMMs
    assert c.gemms == 4 * L - 1  # L forward, L-1 for delta W, L for dW + update, L for db + update
    assert c.launches + c.gemms <= 6 * L
    assert (c.h2d, c.d2h, c.syncs, c.allocs) == (0, 0, 0, 0)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_nothing_returns_to_the_host_inside_an_epoch(backend):
    be = get_backend(backend)
    rng = np.random.default_rng(0)
    X, y = rng.random((250, 20)), rng.integers(0, 4, 250)
    net = Network([20, 8, 4], backend=be, seed=1)
    h2d = {}
    for epochs in (1, 3):
        with be.counters() as c:
            train(net, (X, y), epochs=epochs, mini_batch_size=10, eta=1.0, monitor_training_cost=False)
        # per epoch: one permutation up, one sync to stop the clock, one finiteness check down;
        # 25 steps per epoch add nothing.
        assert c.syncs == epochs and c.d2h == epochs, c
        h2d[epochs] = c.h2d
    assert h2d[3] - h2d[1] == 2 and h2d[1] <= 3  # the data itself goes up once per run (X, labels)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_a_step_with_a_stateful_optimizer_adds_one_launch(backend, optimizer):
    be = get_backend(backend)
    net = Network([784, 30, 10], backend=be, seed=1)
    rng = np.random.default_rng(0)
    X = be.to_device(rng.random((10, 784)), np.float32)
    Y = be.to_device(np.eye(10)[rng.integers(0, 10, 10)], np.float32)
    opt = make_optimizer(optimizer, eta=0.1)
    net.step(X, Y, opt)
    with be.counters() as c:
        net.step(X, Y, opt)
    assert c.launches == 2 * 2 + 1 and c.gemms == 4 * 2 - 1  # the gradient, then one optimizer kernel
    assert (c.h2d, c.d2h, c.syncs, c.allocs) == (0, 0, 0, 0)


def test_emulated_backend_reports_its_compiler_and_builds_once(tmp_path, monkeypatch):
    from gpubp.backends import emulated

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    names = {"one_hot.cu": ["one_hot_f32", "one_hot_f64"], "momentum.cu": ["momentum_update_f64"]}
    be = emulated.EmulatedBackend()
    for file, kernels in names.items():  # two files (all of them would take seconds: their cache is the same)
        for k in kernels:
            be.load_kernel(file, k)
    built = sorted(p.name.split("-")[0] for p in (tmp_path / "gpubp" / "emulated").glob("*.so"))
    assert built == ["momentum", "one_hot"]  # one library per kernel file, whatever its kernels
    monkeypatch.setattr(emulated.subprocess, "run", lambda *a, **k: pytest.fail(f"compiled again: {a}"))
    again = emulated.EmulatedBackend()  # from the cache: no compiler run
    for file, kernels in names.items():
        again.load_kernel(file, kernels[0])
    assert be.compiler.rsplit("/", 1)[-1] in be.device


def test_a_kernel_that_only_shares_an_if_constexpr_with_a_tiled_one_runs_serially():
    """``if constexpr (...) {`` is not a function called constexpr: the blocks of every such if in
    the file once merged into one "body", so any kernel with one looked cooperative."""
    from gpubp.backends.emulated import cooperative_kernels

    code = """
template <bool B> __device__ void pick(float* x) { if constexpr (B) { x[0] = 1; } }
template <bool B> __device__ void tile(float* x) {
    __shared__ float s[4];
    if constexpr (B) { s[0] = x[0]; __syncthreads(); }
    x[0] = s[1];
}
extern "C" __global__ void plain(float* x, int n) { pick<true>(x); }
extern "C" __global__ void tiled(float* x, int n) { tile<true>(x); }
"""
    assert cooperative_kernels(code) == {"tiled"}


def test_processes_that_need_the_same_library_build_it_once(tmp_path, monkeypatch):
    """Parallel test workers and sweeps share the kernel cache: while one process builds a library,
    another that needs it waits for that build instead of compiling it too."""
    import subprocess
    import sys
    import textwrap

    from gpubp.backends import emulated

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from gpubp.backends import emulated
        real = emulated.subprocess.run
        def counted(cmd, **kw):
            print("compiled", flush=True)
            time.sleep(1.0)  # long enough for the other process to find the build under way
            return real(cmd, **kw)
        emulated.subprocess.run = counted
        emulated.build("one_hot.cu", emulated.find_compiler())
    """))
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert "".join(outs).count("compiled") == 1, outs
    assert len(list((tmp_path / "gpubp" / "emulated").glob("one_hot-*.so"))) == 1
    emulated.build("one_hot.cu", emulated.find_compiler())  # and this process finds it built
