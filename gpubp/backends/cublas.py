"""cuBLAS for products inside a CUDA graph: a small ctypes binding of its own.

CuPy refuses every cuBLAS call while a stream captures (cupy_backends/cuda/libs/cublas.pyx,
``setStream`` raises NotImplementedError), so the blas route's products inside a captured epoch
go through this binding instead: the same libcublas that CuPy loaded, a handle of our own bound
to the capture stream and given a workspace BEFORE capture begins (cuBLAS's "CUDA Graphs Support":
otherwise cuBLAS would allocate one during capture), pointer mode host, so alpha and beta are
baked into the graph like every kernel's scalars.

Operands are row-major device arrays (C-contiguous, or F-contiguous transposed views); cuBLAS is
column-major, so out = alpha a b + beta out is computed as out^T = alpha b^T a^T + beta out^T.
A stack's products (gpubp.sweeps.stack) are batched: every model's matrix the same shape, a fixed stride
apart, one cublas<t>gemmStridedBatched call for all of them (``gemm_batched``).
Pointers come from ``__cuda_array_interface__`` (CuPy) or ``__array_interface__`` (the tests'
stand-in, where "device" arrays are NumPy's).
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from ..errors import GpubpError

OP_N, OP_T = 0, 1
POINTER_MODE_HOST = 0
DEFAULT_MATH, TF32_TENSOR_OP_MATH = 0, 3
WORKSPACE_BYTES = 32 << 20  # cuBLAS recommends 32 MiB on Hopper (4 MiB before) for graph capture


def find_library() -> str:
    """The path of the libcublas CuPy uses, loaded first by CuPy itself.

    CuPy 14 loads cuBLAS lazily, on first use: ``from cupy_backends.cuda.libs import cublas`` runs
    that package's ``__getattr__``, which asks ``cuda.pathfinder.load_nvidia_dynamic_lib("cublas")``
    for the library (pip wheel, conda, CUDA_PATH or the system) before importing CuPy's binding
    (cupy_backends/cuda/libs/__init__.py). Right after ``import cupy`` nothing is loaded, and with a
    pip-only install the system loader knows no libcublas: so CuPy loads its copy first, then the
    path comes from the same (cached) pathfinder call, else from the process's mapped libraries,
    else from the system loader (a CuPy without cuda.pathfinder)."""
    try:
        from cupy_backends.cuda.libs import cublas as _cupys_binding  # noqa: F401 (CuPy loads libcublas)
    except ImportError:
        pass  # reported below, if no other lookup finds it
    try:
        from cuda import pathfinder

        path = pathfinder.load_nvidia_dynamic_lib("cublas").abs_path
        if path:
            return path
    except Exception:  # noqa: BLE001 (no pathfinder, or it found nothing: the other lookups decide)
        pass
    path = mapped_library("libcublas.so")
    if path:
        return path
    import ctypes.util

    found = ctypes.util.find_library("cublas")
    if not found:
        raise GpubpError("libcublas was not found (install CuPy with its CUDA libraries: the cuda13 extra, "
                         "or pip install nvidia-cublas)")
    return found


def mapped_library(prefix: str) -> str | None:
    """The path of a shared library named ``prefix``* that this process has mapped, if any."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if os.path.basename(path).startswith(prefix):
                    return path
    except OSError:
        pass
    return None


def load():
    """The libcublas CuPy uses, as a ctypes library."""
    return ctypes.CDLL(find_library())


def pointer(a) -> int:
    """The data pointer of a device array (CUDA array interface) or, in the tests' stand-in, a host one."""
    iface = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
    return int(iface["data"][0])


def _operand(x) -> tuple[int, int]:
    """(cuBLAS op, leading dimension) of a row-major operand read as the column-major transpose:
    a C-contiguous x (r, c) is column-major x^T with ld c (op N); an F-contiguous one is x itself
    in column-major order with ld r, so its transpose is op T."""
    if x.flags.c_contiguous:
        return OP_N, max(x.shape[1], 1)
    if x.flags.f_contiguous:
        return OP_T, max(x.shape[0], 1)
    raise GpubpError(f"cuBLAS operands must be C- or F-contiguous (got strides {x.strides})")


def _batched_operand(x) -> tuple[int, int, int]:
    """(cuBLAS op, leading dimension, stride between models) of the last two axes (r, c) of a
    row-major, possibly strided operand, all in elements: rows contiguous is op N with ld = the row
    stride, columns contiguous (a transposed view) op T with ld = the column stride; a 2-D operand,
    which every model shares, has stride 0. A size-1 axis's stride is free, so it never decides."""
    r, c = x.shape[-2:]
    sr, sc = (s // x.itemsize for s in x.strides[-2:])
    batch = x.strides[0] // x.itemsize if x.ndim == 3 and x.shape[0] > 1 else 0
    if (c == 1 or sc == 1) and (r == 1 or sr >= c):
        return OP_N, max(sr if r > 1 else c, 1), batch
    if (r == 1 or sr == 1) and (c == 1 or sc >= r):
        return OP_T, max(sc if c > 1 else r, 1), batch
    raise GpubpError(f"batched cuBLAS operands need a contiguous axis (got shape {x.shape}, strides {x.strides})")


class Cublas:
    """A cuBLAS handle on ``stream_ptr`` with a preallocated workspace; ``gemm`` is safe to capture."""

    def __init__(self, lib, stream_ptr: int, workspace) -> None:
        self.lib = lib
        handle = ctypes.c_void_p()
        self._check(lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
        self.handle = handle
        self.workspace = workspace  # kept alive as long as the handle uses it
        self.set_stream(stream_ptr)
        self._check(lib.cublasSetPointerMode_v2(handle, POINTER_MODE_HOST), "cublasSetPointerMode")
        self.gemm_fns = {np.dtype(np.float32): (lib.cublasSgemm_v2, ctypes.c_float),
                         np.dtype(np.float64): (lib.cublasDgemm_v2, ctypes.c_double)}
        self.batched_fns = {np.dtype(np.float32): lib.cublasSgemmStridedBatched,
                            np.dtype(np.float64): lib.cublasDgemmStridedBatched}
        self.tf32 = False

    def set_stream(self, stream_ptr: int) -> None:
        """Bind the handle to ``stream_ptr``, then give it the workspace again: cublasSetStream resets
        the workspace to cuBLAS's default pool (cuBLAS guide, cublasSetStream), and a capture must
        never see cuBLAS allocate one."""
        self._check(self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream_ptr)), "cublasSetStream")
        self._check(self.lib.cublasSetWorkspace_v2(self.handle, ctypes.c_void_p(pointer(self.workspace)),
                                                   ctypes.c_size_t(self.workspace.nbytes)), "cublasSetWorkspace")
        self.stream = stream_ptr

    @staticmethod
    def _check(status, what: str) -> None:
        if status != 0:
            raise GpubpError(f"{what} failed with cuBLAS status {status}")

    def set_tf32(self, on: bool) -> None:
        """TF32 tensor-core math for float32 products (cublasSetMathMode), or the default."""
        self._check(self.lib.cublasSetMathMode(self.handle, TF32_TENSOR_OP_MATH if on else DEFAULT_MATH),
                    "cublasSetMathMode")
        self.tf32 = on

    def gemm(self, a, b, out, alpha: float, beta: float, tf32: bool = False) -> None:
        """out (M, N), C-contiguous <- alpha * a (M, K) @ b (K, N) + beta * out; tf32: with TF32
        tensor-core math (the handle's math mode is switched only when it changes)."""
        if tf32 != self.tf32:
            self.set_tf32(tf32)
        if not out.flags.c_contiguous:
            raise GpubpError(f"cuBLAS output must be C-contiguous (got strides {out.strides})")
        (M, K), N = a.shape, b.shape[1]
        op_b, ldb = _operand(b)
        op_a, lda = _operand(a)
        fn, scalar = self.gemm_fns[out.dtype]
        self._check(fn(self.handle, op_b, op_a, N, M, K, ctypes.byref(scalar(alpha)), ctypes.c_void_p(pointer(b)),
                       ldb, ctypes.c_void_p(pointer(a)), lda, ctypes.byref(scalar(beta)),
                       ctypes.c_void_p(pointer(out)), max(N, 1)), "cublasGemm")

    def gemm_batched(self, a, b, out, tf32: bool = False) -> None:
        """out[k] (M, N) <- a[k] (M, K) @ b[k] (K, N) for every model k of out (K, M, N), whose rows
        are contiguous; a and b 3-D with any stride between models, or 2-D and shared by all."""
        if tf32 != self.tf32:
            self.set_tf32(tf32)
        batch, M, N = out.shape
        K = a.shape[-1]
        if a.shape[-2:] != (M, K) or b.shape[-2:] != (K, N) or not a.dtype == b.dtype == out.dtype:
            raise GpubpError(f"batched gemm: {a.shape} @ {b.shape} -> {out.shape} ({a.dtype}, {b.dtype}, {out.dtype})")
        op_c, ldc, stride_c = _batched_operand(out)
        if op_c != OP_N:
            raise GpubpError(f"batched cuBLAS output needs contiguous rows (got strides {out.strides})")
        op_b, ldb, stride_b = _batched_operand(b)
        op_a, lda, stride_a = _batched_operand(a)
        scalar = self.gemm_fns[out.dtype][1]
        L = ctypes.c_longlong
        self._check(self.batched_fns[out.dtype](
            self.handle, op_b, op_a, N, M, K, ctypes.byref(scalar(1.0)), ctypes.c_void_p(pointer(b)), ldb,
            L(stride_b), ctypes.c_void_p(pointer(a)), lda, L(stride_a), ctypes.byref(scalar(0.0)),
            ctypes.c_void_p(pointer(out)), ldc, L(stride_c), batch), "cublasGemmStridedBatched")
