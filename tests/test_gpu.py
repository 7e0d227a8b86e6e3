"""What only a GPU can tell, on real CuPy: each test is marked ``gpu`` (skipped without one, a failure
with --require-gpu) and what it checks is also checked through the stand-in (tests/test_cupy_glue.py)
or on the emulated backend (tests/test_graphs.py). .ci/gpu-check runs them, and .ci/sanitize runs
``test_every_kernel_once_for_the_sanitizers`` under compute-sanitizer.
"""

import gc
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close, assert_equal

from gpubp import Network, train
from gpubp.activations import ACTIVATIONS
from gpubp.backends import get_backend
from gpubp.costs import COSTS
from gpubp.errors import GpubpError
from gpubp.optimizers import make_optimizer

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]
TOL = {"float64": 1e-10, "float32": 1e-4}  # relative, as tests/test_emulated.py


def data(n=53, n_in=20, k=5, seed=7):
    rng = np.random.default_rng(seed)
    return rng.random((n, n_in)), rng.integers(0, k, n)


# The lookup in a process where nothing has touched cuBLAS yet: no cupy.matmul before it.
LOOKUP = """
import json, os, sys
import numpy as np
import cupy
from gpubp.backends import cublas
path = cublas.find_library()
cublas.load()
mapped = sorted({line.split()[-1] for line in open("/proc/self/maps")
                 if os.path.basename(line.split()[-1]).startswith("libcublas.so")})
be = __import__("gpubp.backends", fromlist=["get_backend"]).get_backend("cupy")
rng = np.random.default_rng(0)
a, b = rng.random((3, 33, 17)), rng.random((17, 9))
out = be.empty((3, 33, 9), np.float64)
be.matmul(be.to_device(a), be.to_device(b), out)
err = float(np.abs(be.to_host(out) - a @ b).max())
print(json.dumps({"path": path, "mapped": mapped, "max_error": err}))
"""


def test_libcublas_is_found_in_a_fresh_process():
    """Right after `import cupy` CuPy has loaded no cuBLAS; the lookup must have CuPy load its own and
    bind that very file (one libcublas in the process), and a batched product through it must be right."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", LOOKUP], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(found["mapped"]) == 1, f"more than one libcublas in the process: {found['mapped']}"
    assert os.path.realpath(found["path"]) == os.path.realpath(found["mapped"][0]), found
    assert found["max_error"] < 1e-12, found


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("gemm", ["blas", "own"])
def test_graph_epochs_equal_eager_ones_step_by_step(gemm, dtype):
    """Epochs of one step each (so every step is compared), then epochs of 7 steps with a partial
    last batch: a replayed graph gives the eager run's parameters after every one, and NumPy's."""
    for n, bs, epochs in ((8, 8, 4), (53, 8, 2)):
        X, y = data(n=n)
        seen = {}
        for backend, graph in (("cupy", True), ("cupy", False), ("numpy", False)):
            net = Network([20, 9, 7, 5], cost="log_likelihood", activation="tanh", backend=backend, dtype=dtype,
                          seed=4, gemm=gemm if backend == "cupy" else "blas")
            marks = []
            history = net.sgd((X, y), epochs=epochs, mini_batch_size=bs, eta=0.5, lmbda=1.0, graph=graph,
                              monitor_training_cost=False, on_epoch=lambda r, net=net: marks.append(net.get_params()))
            assert [r["mode"] for r in history] == ["graph" if graph else "eager"] * epochs
            seen[(backend, graph)] = marks
        for k, (g, e, ref) in enumerate(zip(seen[("cupy", True)], seen[("cupy", False)], seen[("numpy", False)])):
            for other, what in ((e, "eager"), (ref, "numpy")):
                assert_close(g, other, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(other).max(),
                             what=f"graph vs {what}, epoch {k + 1}")


@pytest.mark.parametrize("gemm", ["blas", "own"])
def test_a_graph_epoch_asks_nothing_of_the_host(gemm):
    be = get_backend("cupy")
    X, y = data(n=250, k=4)
    net = Network([20, 8, 4], backend=be, seed=1, gemm=gemm)
    marks = []
    with be.counters() as c:
        train(net, (X, y), epochs=3, mini_batch_size=10, eta=1.0, monitor_training_cost=False,
              on_epoch=lambda r: marks.append(c.as_dict()))
    assert c.syncs == 3 and c.d2h == 3, c  # the first epoch's capture included
    later = [{k: b[k] - a[k] for k in a} for a, b in zip(marks, marks[1:])]
    assert all(d["graph_launches"] == 1 and d["allocs"] == 0 and d["gemms"] == 0 for d in later), later


def test_a_graph_contender_keeps_what_its_graph_writes_into():
    from gpubp.bench import contenders

    be = get_backend("cupy")
    X, y = data(n=40)
    graph = contenders.ours("cupy", [20, 9, 5], 8, "float64", 5, (X, y), gemm="own", graph=True)
    gc.collect()
    arrays = [be.empty((k * 64,), np.float64) for k in range(1, 17) for _ in range(4)]
    for a in arrays:
        a.fill(0.25)
    graph.time()
    be.synchronize()
    for a in arrays:
        assert_equal(be.to_host(a), 0.25, what="the replay wrote into memory its contender had let go")


def test_a_capture_belongs_to_its_thread():
    be = get_backend("cupy")
    X, y = data(n=10)
    out = {}
    for backend in ("numpy", "cupy"):
        net = Network([20, 9, 5], backend=backend, dtype="float64", seed=2, gemm="blas")
        opt = make_optimizer("sgd", eta=0.5, n=10).bind(net)
        Xd, Yd = net.to_device(X), net.one_hot(net.labels(y))
        net.step(Xd, Yd, opt)
        if backend == "cupy":
            inside, done, failed = threading.Event(), threading.Event(), []

            def capture():
                try:
                    be.prepare_capture("blas")
                    with be.capture():
                        inside.set()
                        done.wait(30)
                except Exception as e:  # noqa: BLE001 (reported by the assertion below)
                    failed.append(e)
                    inside.set()

            t = threading.Thread(target=capture)
            t.start()
            assert inside.wait(30)
            try:
                net.step(Xd, Yd, opt)
                be.synchronize()
            finally:
                done.set()
                t.join()
            assert not failed, failed
        else:
            net.step(Xd, Yd, opt)
        out[backend] = net.get_params()
    assert_close(out["cupy"], out["numpy"], rtol=1e-12, atol=1e-14, what="a step beside another thread's capture")


def test_capture_refusals_and_errors_on_real_cupy():
    import cupy

    be = get_backend("cupy")
    be.prepare_capture("own")
    with pytest.raises(GpubpError, match="an allocation during graph capture"), be.capture():
        be.empty((3,), np.float32)
    x = be.empty((4,), np.float32)
    with pytest.raises(Exception) as e, be.capture():
        cupy.asnumpy(x)  # a synchronous copy: CUDA refuses it inside a capture
    assert "Invalidated" not in str(e.value), e.value
    with be.capture() as g:
        be.kernel("fill", np.float32)(4, x, 4, 1.5)
    g.launch()
    assert_equal(be.to_host(x), 1.5)


def test_a_tf32_product_on_another_stream_follows_the_kernels_before_it():
    """The eager cuBLAS handle runs on the current stream: a product right after a kernel on a new
    stream reads what that kernel wrote (on the handle's first stream it could read it too early)."""
    import cupy

    be = get_backend("cupy")
    rng = np.random.default_rng(5)
    a = be.to_device(rng.random((512, 512)), np.float32)
    b, out = be.empty((512, 512), np.float32), be.empty((512, 512), np.float32)
    be.matmul(a, a, out, tf32=True)  # the handle is made on the default stream
    with cupy.cuda.Stream(non_blocking=True) as s:
        for value in (1.0, 2.0, 3.0):
            be.kernel("fill", np.float32)(b.size, b, b.size, value)
            be.matmul(a, b, out, tf32=True)
            s.synchronize()
            want = be.to_host(a).astype(np.float64).sum(axis=1, keepdims=True) * value
            assert_close(be.to_host(out), np.broadcast_to(want, (512, 512)), rtol=3e-3, atol=1e-3,
                         what=f"TF32 product after fill({value}) on a new stream")


@pytest.mark.parametrize("gemm", ["blas", "own"])
def test_every_kernel_once_for_the_sanitizers(gemm):
    """Small runs that launch every kernel a training step can (each activation, cost and optimizer),
    eager and as a graph: the workload .ci/sanitize runs under compute-sanitizer's four tools."""
    X, y = data(n=21, n_in=12, k=4)
    runs = [(a, c, "sgd", 0.5) for a in ACTIVATIONS for c in COSTS]
    runs += [("sigmoid", "cross_entropy", "momentum", 0.1), ("relu", "log_likelihood", "adam", 0.01)]
    for activation, cost, optimizer, eta in runs:
        for graph in (False, True):
            net = Network([12, 7, 4], cost=cost, activation=activation, backend="cupy", dtype="float32", seed=3,
                          gemm=gemm)
            net.sgd((X, y), epochs=1, mini_batch_size=8, eta=eta, lmbda=0.5, optimizer=optimizer,
                    evaluation_data=(X, y), graph=graph)
            assert np.isfinite(net.get_params()).all()
