"""An epoch as one CUDA graph: captured once, replayed every epoch, equal to the eager epoch bit for
bit, on the emulated backend (a recorded graph) and through the CuPy stand-in (CuPy's stream capture,
with cuBLAS refused and our own binding taking the blas route's products); the counters of an epoch;
and what is refused during capture."""


import numpy as np
import pytest
from cupy_standin import CAPTURE_REFUSED
from helpers import another_thread_capturing, assert_close, assert_differs, assert_equal

from gpubp import Network, train
from gpubp.backends import cublas, get_backend
from gpubp.errors import GpubpError
from gpubp.optimizers import make_optimizer
from gpubp.training import graph_mode

ETA = {"sgd": 0.5, "momentum": 0.1, "adam": 0.01}


def data(n=53, n_in=20, k=5, seed=7):
    rng = np.random.default_rng(seed)
    return rng.random((n, n_in)), rng.integers(0, k, n)


def trained(backend, gemm, optimizer, dtype, graph, epochs=3, **kw):
    X, y = data()
    net = Network([20, 9, 7, 5], cost="log_likelihood", activation="tanh", backend=backend, dtype=dtype, seed=4,
                  gemm=gemm)
    history = net.sgd((X, y), epochs=epochs, mini_batch_size=8, eta=ETA[optimizer], lmbda=1.0, optimizer=optimizer,
                      evaluation_data=(X, y), graph=graph, **kw)
    return net, history


# the native backend's graphs replay the own route only (its blas route is NumPy's)
ROUTES = [("emulated", "blas"), ("emulated", "own"), ("native", "own")]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", list(ETA))
@pytest.mark.parametrize("backend,gemm", ROUTES)
def test_a_replayed_epoch_equals_an_eager_one_bit_for_bit(backend, gemm, optimizer, dtype):
    """Three epochs of 53 rows in batches of 8 (the last, partial batch is in the graph too)."""
    eager, h_eager = trained(backend, gemm, optimizer, dtype, graph=False)
    graph, h_graph = trained(backend, gemm, optimizer, dtype, graph=True)
    assert [r["mode"] for r in h_graph] == ["graph"] * 3 and [r["mode"] for r in h_eager] == ["eager"] * 3
    assert_equal(graph.get_params(), eager.get_params())
    for k, v in eager.optimizer.state_arrays().items():
        assert_equal(graph.optimizer.state_arrays()[k], v, what=k)
    assert [r["validation_accuracy"] for r in h_graph] == [r["validation_accuracy"] for r in h_eager]
    start = Network([20, 9, 7, 5], cost="log_likelihood", activation="tanh", dtype=dtype, seed=4)
    assert_differs(graph.get_params(), start.get_params(), atol=1e-8, rtol=1e-5)  # it trained


def epoch_counters(be, net, epochs, **kw):
    """Counters of each epoch after the first: the difference of what the counters hold at successive epoch ends."""
    X, y = data()
    marks = []
    with be.counters() as c:
        train(net, (X, y), epochs=epochs, mini_batch_size=8, eta=0.5, monitor_training_cost=False,
              on_epoch=lambda r: marks.append(c.as_dict()), **kw)
    return [{k: b[k] - a[k] for k in a} for a, b in zip(marks, marks[1:])]


# An epoch after the first: the permutation goes up (1 h2d), one graph replays the gather and every
# step (1 graph launch, 0 eager launches), one sync stops the clock; the finiteness check after it
# is 2 eager launches (zero the totals, sum the parameters) and 1 device-to-host copy. Nothing allocates.
GRAPH_EPOCH = {"graph_launches": 1, "launches": 2, "gemms": 0, "h2d": 1, "d2h": 1, "syncs": 1, "allocs": 0}


@pytest.mark.parametrize("backend,gemm", ROUTES)
def test_epoch_counters_with_a_graph(backend, gemm):
    be = get_backend(backend)
    net = Network([20, 9, 7, 5], backend=be, seed=1, gemm=gemm)
    assert epoch_counters(be, net, 3, graph=True) == [GRAPH_EPOCH] * 2
    eager = epoch_counters(be, Network([20, 9, 7, 5], backend=be, seed=1, gemm=gemm), 3, graph=False)
    steps = 7  # 53 rows in batches of 8
    per_step = 3 * 3 - 1 if gemm == "own" else 2 * 3  # own: 3L - 1; blas: 2L kernels (+ 4L - 1 GEMMs)
    # the gather: once an epoch into the epoch's buffer, or (native) once a step into the batch's
    gathers = steps if be.gathers_per_step else 1
    assert eager == [{**GRAPH_EPOCH, "graph_launches": 0, "launches": 2 + gathers + steps * per_step,
                      "gemms": 0 if gemm == "own" else steps * (4 * 3 - 1)}] * 2


def test_graph_mode_says_what_runs_and_why():
    emulated = Network([4, 3], backend="emulated")
    assert graph_mode(emulated) == (False, "eager: graphs are on by default on the cupy and native backends, not emulated")
    assert graph_mode(emulated, True)[0] is True
    numpy_net = Network([4, 3], backend="numpy")
    assert graph_mode(numpy_net, False) == (False, "eager: asked for (graph=False)")
    with pytest.raises(GpubpError, match="a graph was asked for but cannot be captured: the numpy backend has no"):
        graph_mode(numpy_net, True)
    with pytest.raises(GpubpError, match="cannot be captured"):
        train(numpy_net, data(n=10, n_in=4, k=3), epochs=1, graph=True)


@pytest.mark.parametrize("backend", ["emulated", "native"])
def test_capture_refuses_what_cuda_forbids_during_capture(backend):
    be = get_backend(backend)
    x = be.empty((4,), np.float32)
    refused = [(lambda: be.empty((3,), np.float32), "an allocation"),
               (lambda: be.to_host(x), "a device-to-host copy"),
               (lambda: be.upload(x, np.ones(4)), "a host-to-device copy"),
               (lambda: be.synchronize(), "a synchronization")]
    if backend == "native":  # its replay runs kernels only: a NumPy product would be skipped
        m, out = be.empty((2, 2), np.float32), be.empty((2, 2), np.float32)
        refused.append((lambda: be.matmul(m, m, out), "a BLAS product"))
    for action, what in refused:
        with pytest.raises(GpubpError, match=f"{what} during graph capture"), be.capture():
            action()
    with be.capture() as g:  # and the backend is usable after each refusal
        be.kernel("fill", np.float32)(4, x, 4, 1.5)
    g.launch()
    assert_equal(be.to_host(x), 1.5)


# ---------------------------------------------------------------------------------------------
# Through the CuPy stand-in: CuPy's capture API, cuBLAS refused, our binding for the blas route
# ---------------------------------------------------------------------------------------------


def test_the_stand_in_refuses_cublas_and_synchronous_copies_in_capture(cupy_be):
    be, fake = cupy_be
    a, out = be.to_device(np.ones((2, 2)), np.float32), be.empty((2, 2), np.float32)
    stream = fake.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        with pytest.raises(NotImplementedError, match=CAPTURE_REFUSED):
            fake.matmul(a, a, out=out)
        with pytest.raises(NotImplementedError, match=CAPTURE_REFUSED):
            fake.cublas.gemm("N", "N", a, a, out=out)
        with pytest.raises(RuntimeError, match="synchronous device-to-host"):
            fake.asnumpy(a)
        fake.empty((3,), np.float32)  # allowed, as CuPy's relaxed capture allows it (and counted)
        assert fake.calls["allocs_in_capture"] == 1
        with pytest.raises(RuntimeError, match="cudaErrorStreamCaptureInvalidated"):
            stream.end_capture()  # the refused copy broke the capture
    with pytest.raises(RuntimeError, match="default"):
        fake.cuda.Stream(null=True).begin_capture()


@pytest.mark.parametrize("gemm", ["blas", "own"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_cupy_backend_graph_epochs_equal_numpy(cupy_be, gemm, optimizer):
    """On by default on CuPy; the blas route's products went through the binding, recorded in capture."""
    be, fake = cupy_be
    net, history = trained(be, gemm, optimizer, "float64", graph=None)
    ref, _ = trained("numpy", "blas", optimizer, "float64", graph=False)
    assert [r["mode"] for r in history] == ["graph"] * 3
    assert_close(net.get_params(), ref.get_params(), atol=1e-12, rtol=1e-10)
    assert fake.calls["captured"] > 0
    binding_calls = fake.cublas_lib.calls
    if gemm == "blas":  # handle bound to the capture stream and given a workspace before any product
        assert binding_calls[:2] == ["setStream", "setWorkspace"] and "gemm" in binding_calls
    else:
        assert binding_calls == []


@pytest.mark.parametrize("gemm", ["blas", "own"])
def test_epoch_counters_with_a_graph_through_the_cupy_stand_in(cupy_be, gemm):
    be, fake = cupy_be
    net = Network([20, 9, 7, 5], backend=be, seed=1, gemm=gemm)
    assert epoch_counters(be, net, 3) == [GRAPH_EPOCH] * 2  # graph=None: on, on CuPy


def test_blas_route_without_a_loadable_cublas_runs_eager_by_default(cupy_be, monkeypatch):
    be, fake = cupy_be

    def missing():
        raise OSError("libcublas.so.13: cannot open shared object file")

    monkeypatch.setattr(cublas, "load", missing)
    net = Network([20, 9, 7, 5], backend=be, seed=1)
    graph, why = graph_mode(net)
    assert graph is False and why.startswith("eager: the blas route needs libcublas for capture")
    with pytest.raises(GpubpError, match="cannot be captured: the blas route needs libcublas"):
        graph_mode(net, True)
    assert graph_mode(Network([20, 9, 7, 5], backend=be, seed=1, gemm="own"))[0] is True


@pytest.mark.parametrize("backend", ["emulated", "native"])
def test_a_capture_belongs_to_its_thread(backend):
    """While one thread captures, another thread's steps, copies and allocations run as usual and
    stay out of the first thread's graph (the backend is one object per process)."""
    be = get_backend(backend)
    X, y = data(n=10, n_in=20)
    net = Network([20, 9, 5], backend=be, dtype="float64", seed=2, gemm="own")
    Xd, Yd = net.to_device(X), net.one_hot(net.labels(y))
    opt = make_optimizer("sgd", eta=0.5, n=10).bind(net)
    net.step(Xd, Yd, opt)
    before = be.to_host(net.params).copy()
    with another_thread_capturing(be) as recorded:
        net.step(Xd, Yd, opt)  # this thread, eager, while the other captures
        after = be.to_host(net.params)  # a copy, refused only inside this thread's own capture
        be.empty((3,), np.float32)
    assert_differs(after, before)  # the step ran here
    graph = recorded[0]
    assert len(getattr(graph, "launches", getattr(graph, "nodes", None))) == 0  # and was not recorded there


@pytest.mark.parametrize("backend,gemm", ROUTES)
def test_a_changed_learning_rate_is_captured_anew(backend, gemm):
    """A graph bakes in the scalars of its launches (eta, the decay): when on_epoch changes the
    optimizer's eta, the next epoch is captured again, and equals the eager run bit for bit."""
    X, y = data()
    out = {}
    for graph in (False, True):
        net = Network([20, 9, 5], backend=backend, dtype="float64", seed=3, gemm=gemm)

        def schedule(record, net=net):
            net.optimizer.eta *= 0.1

        net.sgd((X, y), epochs=3, mini_batch_size=8, eta=0.5, lmbda=1.0, graph=graph, on_epoch=schedule,
                monitor_training_cost=False)
        out[graph] = net.get_params()
    assert_equal(out[True], out[False])


def test_native_replays_run_side_by_side_in_threads():
    """A native graph's replay takes no process-wide lock (a launch's state is per OS thread), so
    networks trained in threads replay on as many cores: here it finishes while another thread
    holds the emulator's launch lock, and gives the same parameters as a replay with nothing else
    going on."""
    import threading

    from gpubp.backends import emulated
    from gpubp.training import Epochs

    X, y = data(n=200, n_in=20)
    params = []
    for concurrent in (False, True):
        net = Network([20, 9, 5], backend="native", dtype="float64", seed=2, gemm="own")
        opt = make_optimizer("sgd", eta=0.5, n=200).bind(net)
        driver = Epochs(net, net.to_device(X), net.labels(y), 8, opt, graph=True)
        if not concurrent:
            driver.epoch()
        else:
            finished = threading.Event()
            t = threading.Thread(target=lambda: (driver.epoch(), finished.set()))
            with emulated.LAUNCH_LOCK:
                t.start()
                assert finished.wait(20), "the replay waited for the launch lock"
            t.join()
        params.append(net.get_params())
    assert_equal(params[0], params[1])


def test_a_sweep_on_cupy_is_one_stack_captured_as_a_graph(cupy_be):
    """Through the CuPy stand-in: a group is one Stack (its batched products through our binding),
    its epochs captured and replayed as graphs by the same driver as one network's, each model
    equal to its own network trained on NumPy."""
    from gpubp.sweeps import grid, train_group

    be, fake = cupy_be
    X, y = data(n=45)
    sets = {"train": (X, y), "validation": (X[:20], y[:20]), "test": (X[:20], y[:20])}
    runs = grid([1, 2, 3], etas=[0.2, 0.5], sizes=[20, 9, 5], cost="log_likelihood", epochs=2, dtype="float64",
                batch_size=8)
    group = train_group(runs, sets, backend=be, keep_params=True)
    assert group["stacked"] is True and group["size"] == 6
    assert all(r["mode"] == "graph" for res in group["runs"] for r in res["history"])
    assert fake.calls["captured"] > 0 and any("gemm" in str(c) for c in fake.cublas_lib.calls)
    for res in group["runs"]:
        r = res["run"]
        net = Network([20, 9, 5], cost="log_likelihood", backend="numpy", dtype="float64", seed=r["seed"])
        net.sgd((X, y), epochs=2, mini_batch_size=8, eta=r["eta"], monitor_training_cost=False)
        assert_close(res["params"], net.get_params(), atol=1e-12, rtol=1e-10)


def test_a_group_of_one_run_on_cupy_is_a_stack_of_one(cupy_be):
    """A group of one run on CuPy is a Stack of K = 1, its batches gathered per step with their model
    axis (1, m, n_0), equal to its own network."""
    from gpubp.sweeps import grid, train_group

    be, fake = cupy_be
    X, y = data(n=45)
    sets = {"train": (X, y), "validation": (X[:20], y[:20]), "test": (X[:20], y[:20])}
    group = train_group(grid([4], etas=[0.5], sizes=[20, 9, 5], epochs=1, dtype="float64", batch_size=8), sets,
                        backend=be, keep_params=True)
    net = Network([20, 9, 5], backend="numpy", dtype="float64", seed=4)
    net.sgd((X, y), epochs=1, mini_batch_size=8, eta=0.5, monitor_training_cost=False)
    assert group["stacked"] is True
    assert_close(group["runs"][0]["params"], net.get_params(), atol=1e-12, rtol=1e-10)
