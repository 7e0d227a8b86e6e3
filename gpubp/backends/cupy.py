"""The CuPy backend: device arrays in CuPy, GEMMs in cuBLAS, our kernels through RawModule.

The products of a gpubp.stack.Stack (3-D: a leading model axis) are one strided-batched cuBLAS call
each (``batched_gemm``): cupy.matmul would first copy every operand that is not C-contiguous, and
a stack's weights are strided views of its (K, P) parameters and its forward GEMM reads W^T.

Each kernel file is one ``cupy.RawModule(code=kernel.source(file), options=NVRTC_OPTIONS)``,
compiled on first use (or by ``warmup()``) and cached on disk by CuPy, keyed on the code
string, which already holds our headers. Launch checks and grid sizes come from
``kernel.KernelBackend``, the path the emulated backend takes too. Allocations are counted from
CuPy's memory pool with a MemoryHook, so they include any CuPy makes behind our back.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

import numpy as np

from .. import sysinfo
from . import kernel as K


@functools.lru_cache(maxsize=1)
def probe() -> tuple[bool, str]:
    """One cached probe: (usable, one-line reason). Usable means CuPy imports AND a device answers."""
    try:
        import cupy
    except ImportError:
        return False, f"CuPy is not installed ({sysinfo.GPU_INSTALL_HINT})"
    except Exception as e:  # a broken install raises more than ImportError
        return False, f"CuPy failed to import: {type(e).__name__}: {sysinfo.first_line(e)}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return False, sysinfo.explain_cuda_error(e)
    if count < 1:
        return False, "no CUDA device found (the driver reports 0 devices)"
    try:
        name = sysinfo.gpu_name(cupy.cuda.runtime, 0)
    except Exception as e:
        return False, f"CUDA device 0 did not answer ({sysinfo.first_line(e)})"
    return True, f"CUDA device 0: {name}"


class CupyBackend(K.KernelBackend):
    name = "cupy"
    counts_own_allocs = False  # the pool hook counts every allocation

    def __init__(self) -> None:
        import cupy

        super().__init__()
        self.xp = cupy
        dev = cupy.cuda.Device()
        self.sm_count = int(dev.attributes["MultiProcessorCount"])
        name = sysinfo.gpu_name(cupy.cuda.runtime, dev.id)
        self.device = f"{name} (sm_{dev.compute_capability}, {self.sm_count} SMs)"
        self._modules: dict[str, object] = {}
        self._functions: dict[str, object] = {}

    def to_host(self, a) -> np.ndarray:
        self._count("d2h")
        return self.xp.asnumpy(a)

    def synchronize(self) -> None:
        self._count("syncs")
        self.xp.cuda.get_current_stream().synchronize()

    def matmul(self, a, b, out):
        """out <- a @ b; with a model axis (out 3-D, a or b 3-D or a 2-D operand shared by every
        model), one strided-batched cuBLAS call on the views as they are."""
        if out.ndim == 2:
            return super().matmul(a, b, out)
        self._count("gemms")
        batched_gemm(self.xp, a, b, out)

    def gemm(self, a, b, out, alpha: float, beta: float) -> None:
        """out <- alpha * (a @ b) + beta * out in one cuBLAS call: cupy.cublas.gemm reads C- or
        F-contiguous operands (a transposed view is F-contiguous) and writes a contiguous out in place."""
        from cupy import cublas

        self._count("gemms")
        cublas.gemm("N", "N", a, b, out=out, alpha=alpha, beta=beta)

    @contextmanager
    def counters(self):
        with super().counters() as c, _PoolAllocations(c):
            yield c

    def load_kernel(self, file: str, name: str):
        fn = self._functions.get(name)
        if fn is None:
            mod = self._modules.get(file)
            if mod is None:
                mod = self._modules[file] = self.xp.RawModule(code=K.source(file), options=K.NVRTC_OPTIONS)
            fn = self._functions[name] = mod.get_function(name)
        return fn

    def execute(self, file, name, grid, block, args, shared_mem=0) -> None:
        self.load_kernel(file, name)(grid, block, args, shared_mem=shared_mem)


def device_pointer(a) -> int:
    """The device address of a CuPy array's first element (views included)."""
    return a.data.ptr


def _operand(x):
    """How cuBLAS reads the last two axes (r, c) of a row-major operand x, in cuBLAS's column-major
    terms: ("N", ld) when its rows are contiguous (x is x^T column-major, leading dimension = the row
    stride), ("T", ld) when its columns are (a transposed view); and the stride between models (0
    for a 2-D operand every model shares), in elements."""
    r, c = x.shape[-2:]
    sr, sc = (s // x.itemsize for s in x.strides[-2:])
    batch = x.strides[0] // x.itemsize if x.ndim == 3 and x.shape[0] > 1 else 0
    if (c == 1 or sc == 1) and (r == 1 or sr >= c):
        return "N", max(sr if r > 1 else c, 1), batch
    if (r == 1 or sr == 1) and (c == 1 or sc >= r):
        return "T", max(sc if c > 1 else r, 1), batch
    raise ValueError(f"batched_gemm: an operand of shape {x.shape} and strides {x.strides} has no contiguous axis")


def batched_gemm(cupy, a, b, out) -> None:
    """out[k] <- a[k] @ b[k] for every model k (a 2-D a or b is shared), one cublas<t>gemmStridedBatched.

    Row-major out = a b is column-major out^T = b^T a^T, so cuBLAS gets b as its A and a as its B;
    out must have contiguous rows. Scalars alpha = 1 and beta = 0 are read from the host."""
    from cupy_backends.cuda.libs import cublas

    K, m, n = out.shape
    k = a.shape[-1]
    if a.shape[-2:] != (m, k) or b.shape[-2:] != (k, n) or out.strides[-1] != out.itemsize \
            or not a.dtype == b.dtype == out.dtype or (m > 1 and out.strides[-2] // out.itemsize < n):
        raise ValueError(f"batched_gemm: {a.shape} @ {b.shape} -> {out.shape} ({a.dtype}, {b.dtype}, {out.dtype})")
    opb, ldb, sb = _operand(b)
    opa, lda, sa = _operand(a)
    ldc = max(out.strides[-2] // out.itemsize if m > 1 else n, 1)
    sc = out.strides[0] // out.itemsize if K > 1 else 0
    trans = {"N": cublas.CUBLAS_OP_N, "T": cublas.CUBLAS_OP_T}
    one, zero = np.ones(1, out.dtype), np.zeros(1, out.dtype)
    call = cublas.sgemmStridedBatched if out.dtype == np.float32 else cublas.dgemmStridedBatched
    call(cupy.cuda.device.get_cublas_handle(), trans[opb], trans[opa], n, m, k, one.ctypes.data,
         device_pointer(b), ldb, sb, device_pointer(a), lda, sa, zero.ctypes.data, device_pointer(out), ldc, sc, K)


class _PoolAllocations:
    """A CuPy MemoryHook that counts every allocation served by the memory pool."""

    def __init__(self, counters) -> None:
        import cupy

        counters_ = counters

        class Hook(cupy.cuda.MemoryHook):
            name = f"gpubp-counters-{id(counters)}"

            def malloc_postprocess(self, **kwargs):
                counters_.allocs += 1

        self._hook = Hook()

    def __enter__(self):
        self._hook.__enter__()
        return self

    def __exit__(self, *exc):
        self._hook.__exit__(*exc)


BACKEND = CupyBackend
