"""The CuPy backend's own Python, run against a stand-in for CuPy that keeps CuPy's documented call
conventions and executes kernels on the emulator.

What is checked: RawModule(code=..., options=...) receives exactly one kernel file's code and the
NVRTC options; get_function by entry name; launches as kernel(grid_tuple, block_tuple, args_tuple,
shared_mem=bytes) with NumPy scalars of the signature's types; synchronize through the current stream; device->host
through asnumpy; allocations counted through a registered cupy.cuda.MemoryHook; a stack's batched
products as one cublas<t>gemmStridedBatched each on the strided views; and a whole training step,
of one network and of a stack, giving NumPy's weights. (Real CuPy needs a GPU for all of these; the gpu-marked
tests run them for real.)
"""

import time

import numpy as np
import pytest
from cupy_standin import CUBLAS_PATH
from helpers import another_thread_capturing, assert_close, assert_equal

from gpubp import Network, train
from gpubp.backends import cublas
from gpubp.backends import kernel as K
from gpubp.errors import GpubpError
from gpubp.optimizers import SGD, ModelOptimizers, Momentum, make_optimizer
from gpubp.sweeps.stack import Stack
from gpubp.training import graph_mode


def test_cupy_backend_drives_kernels_as_cupy_documents(cupy_be):
    be, fake = cupy_be
    assert be.name == "cupy" and be.sm_count == 3 and "Stand-in" in be.device
    seconds = be.warmup()
    assert seconds >= 0 and sorted(set(fake.calls["modules"])) == K.kernel_files()
    assert len(fake.calls["modules"]) == len(K.kernel_files())  # one module per file, compiled once


def test_a_training_step_on_the_cupy_path_matches_numpy(cupy_be):
    be, fake = cupy_be
    rng = np.random.default_rng(0)
    X, y = rng.random((23, 30)), rng.integers(0, 5, 23)
    nets = [Network([30, 12, 9, 5], cost="quadratic", backend=b, dtype="float64", seed=4) for b in (be, "numpy")]
    for net in nets:
        net.update_mini_batch(X, y, 0.8, lmbda=1.0, n=500)
    assert_close(nets[0].get_params(), nets[1].get_params(), rtol=1e-12, atol=1e-14, what="cupy path vs numpy")
    assert fake.calls["asnumpy"] >= 1  # the result came back through cupy.asnumpy
    Xd = be.to_device(X, np.float64)
    Yd = nets[0].one_hot(nets[0].labels(y))
    opt = SGD(0.8)
    nets[0].step(Xd, Yd, opt)
    fake.calls["launches"].clear()
    fake.calls["gemms"] = 0
    with be.counters() as c:
        nets[0].step(Xd, Yd, opt)
    assert fake.calls["launches"] == ["bias_sigmoid_f64"] * 3 + ["quadratic_delta_f64"] + ["sigmoid_delta_f64"] * 2
    assert c.as_dict() == {"launches": 6, "gemms": 11, "h2d": 0, "d2h": 0, "syncs": 0, "allocs": 0,
                           "graph_launches": 0}
    assert fake.calls["gemms"] == 11  # 5 through cupy.matmul's no-temporary path, 6 fused in cupy.cublas.gemm
    with be.counters() as c:
        be.empty((3,), np.float32)
        be.synchronize()
    assert c.allocs == 1 and c.syncs == 1 and fake.calls["syncs"] >= 1  # counted by the pool hook


def test_device_arrays_are_cast_on_the_device_not_round_tripped(cupy_be):
    be, fake = cupy_be
    a = fake.ascontiguousarray(np.arange(6.0).reshape(2, 3))  # a device array
    with be.counters() as c:
        out = be.to_device(a.T, np.float32)
    assert out.flags.c_contiguous and out.dtype == np.float32 and c.h2d == 0


def test_a_stateful_optimizer_on_the_cupy_path_matches_numpy(cupy_be):
    be, fake = cupy_be
    rng = np.random.default_rng(1)
    X, y = rng.random((19, 30)), rng.integers(0, 5, 19)
    params = []
    for b in (be, "numpy"):
        net = Network([30, 12, 5], cost="log_likelihood", activation="relu", backend=b, dtype="float64", seed=4)
        opt = Momentum(0.1, lmbda=2.0, n=300, momentum=0.7)
        for _ in range(3):
            net.step(net.to_device(X), net.targets(y, len(y)), opt)
        params.append(net.get_params())
    assert_close(params[0], params[1], rtol=1e-12, atol=1e-14, what="momentum on the cupy path vs numpy")
    assert "momentum_update_f64" in fake.calls["launches"] and "bias_softmax_f64" in fake.calls["launches"]


def test_launch_grid_hands_cupy_the_geometry_and_dynamic_shared_memory(cupy_be):
    be, fake = cupy_be
    Z, b = be.to_device(np.zeros((5, 7)), np.float32), be.to_device(np.zeros(7), np.float32)
    be.launch_grid("bias_sigmoid_f32", (3, 1), (8,), 256, Z, b, 5, 7)  # a 1-D kernel: sizes padded with 1
    be.kernel("bias_sigmoid", np.float32)(Z.size, Z, b, 5, 7)
    assert fake.calls["geometry"] == [((3, 1, 1), (8, 1, 1), 256), ((1, 1, 1), (256, 1, 1), 0)]
    assert_close(Z, np.full((5, 7), 1 / (1 + np.exp(-0.5))), atol=1e-6, what="sigma(sigma(0)) in place")


def test_a_stack_on_the_cupy_path_is_strided_batched_cublas_and_matches_numpy(cupy_be):
    """Three models: every product one gemmStridedBatched on the strided views (W^T of the (K, P)
    parameters, D^T, a shared input), the bias and update kernels per model; NumPy's weights and
    accuracies after a step; nothing allocated, copied or waited for in a step after the first."""
    be, fake = cupy_be
    rng = np.random.default_rng(3)
    X, Y = rng.random((3, 9, 30)), np.eye(5)[rng.integers(0, 5, (3, 9))]
    out = {}
    for b in (be, "numpy"):
        stack = Stack([30, 12, 7, 5], [4, 5, 6], cost="log_likelihood", activation="tanh", backend=b, dtype="float64")
        opt = ModelOptimizers([make_optimizer("momentum", eta=e, lmbda=1.0, n=50, momentum=0.7)
                               for e in (0.1, 0.2, 0.3)])
        Xd, Yd = stack.be.to_device(X, np.float64), stack.be.to_device(Y, np.float64)
        stack.step(Xd, Yd, opt)
        fake.calls["launches"].clear()
        fake.cublas_lib.calls.clear()
        with stack.be.counters() as c:
            stack.step(Xd, Yd, opt)
        if b is be:
            launched, batched, counts = list(fake.calls["launches"]), list(fake.cublas_lib.calls), c.as_dict()
        out[stack.be.name] = (stack.get_params(), [r["correct"] for r in stack.measure(X[0], Y[0].argmax(1))])
    assert_close(out["cupy"][0], out["numpy"][0], rtol=1e-12, atol=1e-14, what="stack on the cupy path vs numpy")
    assert out["cupy"][1] == out["numpy"][1]
    L = 3
    assert counts == {"launches": 2 * L + 1, "gemms": 4 * L - 1, "h2d": 0, "d2h": 0, "syncs": 0, "allocs": 0,
                      "graph_launches": 0}
    assert launched == ["bias_tanh_models_f64"] * 2 + ["bias_softmax_models_f64", "difference_delta_f64"] \
        + ["tanh_delta_f64"] * 2 + ["momentum_update_models_f64"]
    # (m, n, k, batch) of each cuBLAS call, column-major (out^T = b^T a^T): forward, BP2, BP4, BP3 per layer
    assert sorted(batched) == sorted(("gemmStridedBatched", *mnk, 3) for mnk in [
        (12, 9, 30), (7, 9, 12), (5, 9, 7),  # forward
        (7, 9, 5), (12, 9, 7),  # BP2
        (30, 12, 9), (12, 7, 9), (7, 5, 9),  # BP4
        (12, 1, 9), (7, 1, 9), (5, 1, 9)])  # BP3


# ---------------------------------------------------------------------------------------------
# What only CuPy's own behaviour shows (the stand-in behaves as CuPy 14 does on each point)
# ---------------------------------------------------------------------------------------------


def small_data(n=53, n_in=20, k=5, seed=7):
    rng = np.random.default_rng(seed)
    return rng.random((n, n_in)), rng.integers(0, k, n)


def test_libcublas_is_found_after_cupy_loads_its_own(cupy_be):
    """Right after `import cupy` no libcublas is loaded, and a pip-only install's is on no loader path:
    the lookup has CuPy load it (cupy_backends.cuda.libs, through cuda.pathfinder) and opens that file."""
    be, fake = cupy_be
    assert fake.pathfinder.loaded == {}  # nothing loaded yet, as after `import cupy`
    assert cublas.find_library() == CUBLAS_PATH
    assert list(fake.pathfinder.loaded) == ["cublas"]  # CuPy's lazy loader was asked, once
    assert cublas.load() is fake.cublas_lib
    assert graph_mode(Network([20, 9, 5], backend=be, gemm="blas"))[0] is True


@pytest.mark.parametrize("tf32", [False, True])
def test_blas_products_through_our_binding_run_without_an_earlier_cupy_product(cupy_be, tf32):
    """A stack's batched products and --tf32 products go through our binding: on a fresh process
    (nothing multiplied by CuPy before) they must find libcublas too, and match NumPy."""
    be, fake = cupy_be
    rng = np.random.default_rng(2)
    a, b = rng.random((3, 7, 5)).astype(np.float32), rng.random((5, 4)).astype(np.float32)
    out = be.empty((3, 7, 4), np.float32)
    be.matmul(be.to_device(a, np.float32), be.to_device(b, np.float32), out, tf32=tf32)
    assert_close(be.to_host(out), np.asarray(a, np.float64) @ b, rtol=2e-3 if tf32 else 1e-6, atol=1e-6,
                 what="batched product through our binding")


def test_a_graph_contender_keeps_alive_what_its_graph_writes_into(cupy_be):
    """A cupy.cuda.Graph holds raw pointers: when the bench's graph contender let its network, data
    and optimizer go, the pool gave their memory to the next arrays, and every replay wrote into them."""
    import gc

    from gpubp.bench import contenders

    be, fake = cupy_be
    X, y = small_data(n=40)
    graph = contenders.ours("cupy", [20, 9, 5], 8, "float64", 5, (X, y), gemm="own", graph=True)
    gc.collect()
    # the next requests to the pool, of every size up to 8 KiB (CuPy's pool rounds to 512 bytes and
    # hands a freed block to the next request of its size): they get whatever the contender let go
    arrays = [be.empty((k * 64,), np.float64) for k in range(1, 17) for _ in range(4)]
    for a in arrays:
        a.fill(0.25)
    graph.time()  # replays the contender's graph
    for a in arrays:
        assert_equal(be.to_host(a), 0.25, what="the replay wrote into memory its contender had let go")


def test_a_capture_on_the_cupy_backend_belongs_to_its_thread(cupy_be):
    """While one thread captures, another thread's step (kernels and cuBLAS products) runs in full,
    on that thread's own stream and handle, and none of it lands in the first thread's graph."""
    be, fake = cupy_be
    X, y = small_data(n=10)
    out = {}
    for b in ("numpy", be):
        net = Network([20, 9, 5], backend=b, dtype="float64", seed=2, gemm="blas")
        opt = make_optimizer("sgd", eta=0.5, n=10).bind(net)
        Xd, Yd = net.to_device(X), net.one_hot(net.labels(y))
        if b is be:
            net.step(Xd, Yd, opt)
            with another_thread_capturing(be, prepare=lambda: be.prepare_capture("blas")) as graphs:
                net.step(Xd, Yd, opt)  # this thread, eager, while the other captures
                be.empty((3,), np.float32)  # allowed here: this thread does not capture
            assert graphs and graphs[0].graph.nodes == []  # nothing of this thread's step was recorded
        else:
            net.step(Xd, Yd, opt)
            net.step(Xd, Yd, opt)
        out[net.be.name] = net.get_params()
    assert_close(out["cupy"], out["numpy"], rtol=1e-12, atol=1e-14, what="a step beside another thread's capture")


def test_no_wait_inside_a_graph_epoch_on_the_cupy_backend(cupy_be):
    """train() with graphs on CuPy: per epoch one sync (the clock) and one copy back, the first epoch
    (warm-up, capture) included; no kernel loads inside the capture."""
    be, fake = cupy_be
    X, y = small_data(n=250, n_in=20, k=4)
    net = Network([20, 8, 4], backend=be, seed=1)
    for epochs in (1, 3):
        with be.counters() as c:
            history = train(net, (X, y), epochs=epochs, mini_batch_size=10, eta=1.0, monitor_training_cost=False)
        assert [r["mode"] for r in history] == ["graph"] * epochs
        assert c.syncs == epochs and c.d2h == epochs, c


def test_epoch_one_reports_its_capture_apart_from_training(cupy_be, monkeypatch):
    """Epoch 1 in graph mode: "seconds" is the replay only; the warm-up and capture are "capture_seconds"."""
    be, fake = cupy_be
    prepare = be.prepare_capture

    def slow_prepare(gemm):
        time.sleep(1.0)
        prepare(gemm)

    monkeypatch.setattr(be, "prepare_capture", slow_prepare)
    net = Network([20, 9, 5], backend=be, seed=1)
    history = net.sgd(small_data(), epochs=2, mini_batch_size=8, eta=0.5, monitor_training_cost=False)
    first, second = history
    assert first["capture_seconds"] >= 1.0 > first["seconds"]
    assert "capture_seconds" not in second


def test_the_eager_cublas_handle_follows_the_current_stream(cupy_be):
    """Our eager handle (TF32 products) runs each product on the stream current at the call, where the
    kernels around it run; rebinding it (SetStream) is followed by its workspace (SetWorkspace)."""
    be, fake = cupy_be
    a, out = be.to_device(np.ones((4, 4)), np.float32), be.empty((4, 4), np.float32)
    be.matmul(a, a, out, tf32=True)
    stream = fake.cuda.Stream(non_blocking=True)
    with stream:
        fake.cublas_lib.calls.clear()
        be.matmul(a, a, out, tf32=True)
    assert fake.cublas_lib.call_streams[-1] == stream.ptr
    assert fake.cublas_lib.calls[:2] == ["setStream", "setWorkspace"]
    be.matmul(a, a, out, tf32=True)
    assert fake.cublas_lib.call_streams[-1] == 0  # back on the default stream


def test_an_allocation_during_capture_is_refused_on_the_cupy_backend(cupy_be):
    """CuPy lets the pool allocate during a capture and the graph keeps the address: ours refuses,
    by its own allocations and by any CuPy makes behind its back."""
    be, fake = cupy_be
    be.prepare_capture("own")
    with pytest.raises(GpubpError, match="an allocation during graph capture"), be.capture():
        be.empty((3,), np.float32)
    with pytest.raises(GpubpError, match="1 allocation.* from CuPy's memory pool during graph capture"):
        with be.capture():
            fake.empty((3,), np.float32)  # as a CuPy routine's temporary would
    x = be.empty((4,), np.float32)
    with be.capture() as g:  # and the backend captures again after each refusal
        be.kernel("fill", np.float32)(4, x, 4, 1.5)
    g.launch()
    assert_equal(be.to_host(x), 1.5)


def test_the_error_inside_a_capture_is_the_one_reported(cupy_be):
    """A refused call invalidates the capture, and ending it then raises cudaErrorStreamCaptureInvalidated:
    the error that broke it is what propagates."""
    be, fake = cupy_be
    be.prepare_capture("own")
    x = be.empty((4,), np.float32)
    with pytest.raises(RuntimeError, match="cupy.asnumpy") as e, be.capture():
        fake.asnumpy(x)  # a synchronous copy, as a CuPy routine that brings a value back would make
    assert "Invalidated" not in str(e.value)
    with be.capture() as g:
        be.kernel("fill", np.float32)(4, x, 4, 2.5)
    g.launch()
    assert_equal(be.to_host(x), 2.5)


def test_a_kernel_first_loaded_inside_a_capture_is_refused_by_the_stand_in(cupy_be):
    """CUDA loads a kernel at cuModuleGetFunction; the stand-in refuses a load inside a capture, so a
    graph epoch on a fresh backend (nothing warmed up) shows that prepare_capture loaded them all."""
    be, fake = cupy_be
    stream = fake.cuda.Stream(non_blocking=True)
    module = fake.RawModule(code=K.source("accumulate.cu"), options=K.NVRTC_OPTIONS)
    with stream:
        stream.begin_capture()
        with pytest.raises(RuntimeError, match="loading kernel"):
            module.get_function("fill_f32")
        with pytest.raises(RuntimeError, match="Invalidated"):
            stream.end_capture()
    net = Network([20, 9, 5], backend=be, seed=1, gemm="own")
    assert [r["mode"] for r in net.sgd(small_data(), epochs=1, mini_batch_size=8, eta=0.5)] == ["graph"]


def test_the_stand_ins_graph_holds_addresses_not_arrays(cupy_be):
    """As a cupy.cuda.Graph: the arrays a graph's launches named may go, and the pool hands their
    memory to the next request of that size, which the replay then writes into."""
    import gc

    be, fake = cupy_be
    stream = fake.cuda.Stream(non_blocking=True)
    x = fake.empty((64,), np.float32)
    fill = fake.RawModule(code=K.source("accumulate.cu"), options=K.NVRTC_OPTIONS).get_function("fill_f32")
    with stream:
        stream.begin_capture()
        fill((1,), (64,), (x, np.int64(64), np.float32(7.0)))
        graph = stream.end_capture()
    del x
    gc.collect()
    y = fake.empty((64,), np.float32)
    y[...] = 1.0
    graph.launch()
    assert_equal(y, 7.0)
