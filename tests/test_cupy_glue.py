"""The CuPy backend's own Python, run against a stand-in for CuPy that keeps CuPy's documented call
conventions and executes kernels on the emulator.

What is checked: RawModule(code=..., options=...) receives exactly one kernel file's code and the
NVRTC options; get_function by entry name; launches as kernel(grid_tuple, block_tuple, args_tuple,
shared_mem=bytes) with NumPy scalars of the signature's types; synchronize through the current stream; device->host
through asnumpy; allocations counted through a registered cupy.cuda.MemoryHook; and a whole
training step giving NumPy's weights. (Real CuPy needs a GPU for all of these; the gpu-marked
tests run them for real.)
"""

import sys
import types

import numpy as np
import pytest
from helpers import assert_close

import gpubp.backends as B
from gpubp import Network
from gpubp.backends import kernel as K
from gpubp.backends.emulated import EmulatedBackend
from gpubp.optimizers import SGD, Momentum


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
        for name in ("asarray", "ascontiguousarray", "zeros", "take", "sum", "clip", "log",
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
                                          get_current_stream=lambda: Stream())
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
