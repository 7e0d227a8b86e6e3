"""The CuPy backend's own Python, run against a stand-in for CuPy that keeps CuPy's documented call
conventions and executes kernels on the emulator.

What is checked: RawModule(code=..., options=...) receives exactly one kernel file's code and the
NVRTC options; get_function by entry name; launches as kernel(grid_tuple, block_tuple, args_tuple,
shared_mem=bytes) with NumPy scalars of the signature's types; synchronize through the current stream; device->host
through asnumpy; allocations counted through a registered cupy.cuda.MemoryHook; a stack's batched
products as cublas<t>gemmStridedBatched calls on raw device pointers (column-major, as cuBLAS
documents it); and a whole training step, of one network and of a stack, giving NumPy's weights. (Real CuPy needs a GPU for all of these; the gpu-marked
tests run them for real.)
"""

import ctypes
import sys
import types

import numpy as np
import pytest
from helpers import assert_close

import gpubp.backends as B
from gpubp import Network
from gpubp.backends import kernel as K
from gpubp.backends.emulated import EmulatedBackend
from gpubp.optimizers import SGD, ModelOptimizers, Momentum, make_optimizer
from gpubp.stack import Stack


def pad3(dims):
    return dims + (1,) * (3 - len(dims))


class FakeCupy(types.ModuleType):
    def __init__(self):
        super().__init__("cupy")
        self.calls = {"modules": [], "launches": [], "geometry": [], "syncs": 0, "asnumpy": 0}
        self._emu = EmulatedBackend()
        self._hooks = {}
        fake = self
        self.ndarray = np.ndarray
        for name in ("asarray", "ascontiguousarray", "zeros", "take", "sum", "clip", "log", "isfinite",
                     "float64", "float32", "int64", "int32", "argmax"):
            setattr(self, name, getattr(np, name))

        class MemoryHook:
            name = "MemoryHook"

            def __enter__(self):
                assert self.name not in fake._hooks
                fake._hooks[self.name] = self
                return self

            def __exit__(self, *exc):
                del fake._hooks[self.name]

            def malloc_postprocess(self, **kwargs):
                pass

        class RawKernel:
            def __init__(self, file, name):
                self.file, self.name = file, name

            def __call__(self, grid, block, args, *, shared_mem=0):
                """RawKernel.__call__(grid, block, args, *, shared_mem=0): 1-3 sizes each."""
                assert type(grid) is tuple and type(block) is tuple and type(args) is tuple
                assert 1 <= len(grid) <= 3 and 1 <= len(block) <= 3
                assert all(isinstance(g, int) and g > 0 for g in grid + block)
                assert isinstance(shared_mem, int) and shared_mem >= 0
                for a in args:  # device arrays or NumPy scalars, never Python numbers
                    assert isinstance(a, np.ndarray) or type(a) in (np.float32, np.float64, np.int32, np.int64,
                                                                   np.uint32), a
                fake.calls["launches"].append(self.name)
                fake.calls["geometry"].append((grid, block, shared_mem))
                fake._emu.execute(self.file, self.name, pad3(grid), pad3(block), args, shared_mem=shared_mem)

        class RawModule:
            def __init__(self, code=None, *, options=(), **kw):
                files = [f for f in K.kernel_files() if K.source(f) == code]
                assert len(files) == 1, "RawModule must get exactly one kernel file's code"
                assert isinstance(options, tuple) and options == K.NVRTC_OPTIONS
                self.file = files[0]
                fake.calls["modules"].append(self.file)

            def get_function(self, name):
                assert name in K.parse_signatures(K.source(self.file))
                return RawKernel(self.file, name)

        class Stream:
            def synchronize(self):
                fake.calls["syncs"] += 1

        class Device:
            id = 0
            compute_capability = "90"
            attributes = {"MultiProcessorCount": 3}

        runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda i: {"name": b"Stand-in"})
        self.cuda = types.SimpleNamespace(MemoryHook=MemoryHook, Device=Device, runtime=runtime,
                                          get_current_stream=lambda: Stream(),
                                          device=types.SimpleNamespace(get_cublas_handle=lambda: 7))
        self.libs_cublas = types.SimpleNamespace(CUBLAS_OP_N=0, CUBLAS_OP_T=1,
                                                 sgemmStridedBatched=self._strided_batched(np.float32),
                                                 dgemmStridedBatched=self._strided_batched(np.float64))
        self.RawModule = RawModule
        self.cublas = types.SimpleNamespace(gemm=self._cublas_gemm)

    def _cublas_gemm(self, transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
        """cupy.cublas.gemm (cupy/cublas.py): out = alpha op(a) @ op(b) + beta out, 2-D, one dtype;
        a C- or F-contiguous out is written in place (anything else would be copied)."""
        assert a.ndim == b.ndim == 2 and a.dtype == b.dtype
        assert transa in ("N", "T") and transb in ("N", "T")
        opa, opb = (a if transa == "N" else a.T), (b if transb == "N" else b.T)
        assert out is not None and out.shape == (opa.shape[0], opb.shape[1]) and out.dtype == a.dtype
        assert out.flags.c_contiguous or out.flags.f_contiguous, "gemm would copy out"
        for x in (a, b):  # operands it reads without a copy
            assert x.flags.c_contiguous or x.flags.f_contiguous
        self.calls.setdefault("gemms", 0)
        self.calls["gemms"] += 1
        out[...] = alpha * (opa.astype(np.float64) @ opb) + beta * out
        return out

    def _strided_batched(self, dtype):
        """cublas<t>gemmStridedBatched(handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb,
        strideB, beta, C, ldc, strideC, batchCount), from cuBLAS's documentation: for each i < batchCount,
        C_i = alpha op(A_i) op(B_i) + beta C_i, every matrix column-major (element (r, c) of A_i at
        A + i*strideA + r + c*lda elements), op(A_i) m x k, op(B_i) k x n, C_i m x n; lda >= rows of A
        as stored, likewise ldb, ldc >= m; alpha and beta read from host pointers; beta = 0 does
        not read C. Pointers are raw device addresses."""
        item = np.dtype(dtype).itemsize
        ctype = ctypes.c_float if dtype == np.float32 else ctypes.c_double

        def memory(ptr, count):
            return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctype)), shape=(count,))

        def matrix(ptr, rows, cols, ld, stride, batch):
            extent = (batch - 1) * stride + (cols - 1) * ld + rows
            return np.lib.stride_tricks.as_strided(memory(ptr, extent), (batch, rows, cols),
                                                   (stride * item, item, ld * item))

        def scalar(ptr):
            return memory(ptr, 1)[0]

        def call(handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB, beta, C, ldc, strideC,
                 batch):
            assert handle == 7 and batch >= 1 and min(m, n, k) >= 1
            a_shape = (m, k) if transa == 0 else (k, m)
            b_shape = (k, n) if transb == 0 else (n, k)
            assert lda >= max(1, a_shape[0]) and ldb >= max(1, b_shape[0]) and ldc >= max(1, m)
            opA = matrix(A, *a_shape, lda, strideA, batch)
            opB = matrix(B, *b_shape, ldb, strideB, batch)
            opA = opA if transa == 0 else opA.transpose(0, 2, 1)
            opB = opB if transb == 0 else opB.transpose(0, 2, 1)
            Cm = matrix(C, m, n, ldc, strideC, batch)
            product = scalar(alpha) * (opA.astype(np.float64) @ opB)
            Cm[...] = product if scalar(beta) == 0 else product + scalar(beta) * Cm
            self.calls.setdefault("strided_batched", []).append((m, n, k, batch))
        return call

    def matmul(self, a, b, out=None):
        """cupy.matmul writes straight into ``out`` only when it is C-contiguous, of the result's
        dtype and shares no memory with a or b (cupy/_core/_routines_linalg.pyx); otherwise it
        allocates a temporary and copies, which a training step must never make it do."""
        assert out is not None, "every GEMM of a step writes into a workspace"
        assert out.flags.c_contiguous and out.dtype == np.result_type(a, b)
        assert not np.shares_memory(out, a) and not np.shares_memory(out, b)
        self.calls.setdefault("gemms", 0)
        self.calls["gemms"] += 1
        return np.matmul(a, b, out=out)

    def empty(self, shape, dtype):
        for h in list(self._hooks.values()):
            h.malloc_postprocess(device_id=0, size=0, mem_size=0, mem_ptr=0, pmem_id=0)
        return np.empty(shape, dtype)

    def asnumpy(self, a):
        self.calls["asnumpy"] += 1
        return np.array(a)


@pytest.fixture
def cupy_be(monkeypatch):
    fake = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupy.cublas", fake.cublas)
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs.cublas", fake.libs_cublas)
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs", types.SimpleNamespace(cublas=fake.libs_cublas))
    monkeypatch.setattr("gpubp.backends.cupy.device_pointer", lambda a: a.ctypes.data)  # device arrays are NumPy's
    B.reset()
    be = B.get_backend("cupy")
    yield be, fake
    B.reset()


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
    a = np.arange(6.0).reshape(2, 3)  # the stand-in's device arrays are NumPy arrays
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
    Z, b = np.zeros((5, 7), np.float32), np.zeros(7, np.float32)
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
        opt = ModelOptimizers([make_optimizer("momentum", eta=e, lmbda=1.0, n=50, momentum=0.7) for e in (0.1, 0.2, 0.3)])
        Xd, Yd = stack.be.to_device(X, np.float64), stack.be.to_device(Y, np.float64)
        stack.step(Xd, Yd, opt)
        if b is be:
            fake.calls["launches"].clear()
            fake.calls["strided_batched"] = []
            with be.counters() as c:
                stack.step(Xd, Yd, opt)
            launched, batched = list(fake.calls["launches"]), list(fake.calls["strided_batched"])
        else:
            stack.step(Xd, Yd, opt)
        out[stack.be.name] = (stack.get_params(), [r["correct"] for r in stack.measure(X[0], Y[0].argmax(1))])
    assert_close(out["cupy"][0], out["numpy"][0], rtol=1e-12, atol=1e-14, what="stack on the cupy path vs numpy")
    assert out["cupy"][1] == out["numpy"][1]
    L = 3
    assert c.as_dict() == {"launches": 2 * L + 1, "gemms": 4 * L - 1, "h2d": 0, "d2h": 0, "syncs": 0, "allocs": 0,
                           "graph_launches": 0}
    assert launched == ["bias_tanh_models_f64"] * 2 + ["bias_softmax_models_f64", "difference_delta_f64"] \
        + ["tanh_delta_f64"] * 2 + ["momentum_update_models_f64"]
    # (m, n, k, batch) of each cuBLAS call, column-major: forward z^T = W a^T, BP2, BP4, BP3 per layer
    assert sorted(batched) == sorted(
        [(12, 9, 30, 3), (7, 9, 12, 3), (5, 9, 7, 3),  # forward
         (7, 9, 5, 3), (12, 9, 7, 3),  # BP2
         (30, 12, 9, 3), (12, 7, 9, 3), (7, 5, 9, 3),  # BP4
         (12, 1, 9, 3), (7, 1, 9, 3), (5, 1, 9, 3)])  # BP3
