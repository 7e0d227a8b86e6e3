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


import numpy as np
from helpers import assert_close

from gpubp import Network
from gpubp.backends import kernel as K
from gpubp.optimizers import SGD, ModelOptimizers, Momentum, make_optimizer
from gpubp.sweeps.stack import Stack


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
