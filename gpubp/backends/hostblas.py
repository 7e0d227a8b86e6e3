"""GEMM with alpha and beta on the host: out <- alpha * a @ b + beta * out, in place.

NumPy's matmul has neither alpha nor beta, and two BLAS libraries in one process fight over the
two cores: each keeps its threads spinning after a call, so SciPy's BLAS (the obvious way to get
alpha and beta) interleaved with NumPy's made a step of network B 5x slower here. So the CBLAS of
the OpenBLAS that NumPy itself loaded is called directly, through ctypes, on NumPy's own thread
pool; where it cannot be found (NumPy built on another BLAS, or no /proc), SciPy's BLAS wrappers
do every product instead (``matmul`` too, see ``uses_numpy_pool``), so one pool still does all.
"""

from __future__ import annotations

import ctypes
import functools
import os

import numpy as np

from ..errors import GpubpError

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS enum values
# Symbol names of cblas_?gemm with the width of their integers: NumPy's wheels (scipy-openblas64,
# 64-bit integers, prefixed), 64-bit OpenBLAS builds, and the plain LP64 CBLAS.
SYMBOLS = (("scipy_cblas_{}gemm64_", ctypes.c_int64), ("cblas_{}gemm64_", ctypes.c_int64),
           ("cblas_{}gemm", ctypes.c_int))


def _loaded_libraries() -> list[str]:
    """Shared libraries mapped into this process, NumPy's own first."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if ".so" in line.split()[-1]}
    except OSError:
        return []
    blas = [p for p in paths if any(k in os.path.basename(p).lower() for k in ("openblas", "blas", "mkl"))]
    return sorted(blas, key=lambda p: "numpy" not in p)


@functools.cache
def numpy_cblas():
    """(library path, {dtype: prepared ctypes function}) of NumPy's CBLAS, or None when not found."""
    np.empty(1) @ np.empty(1)  # make sure NumPy's BLAS is loaded
    for path in _loaded_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pattern, integer in SYMBOLS:
            fns = {}
            for dtype, letter, scalar in ((np.float32, "s", ctypes.c_float), (np.float64, "d", ctypes.c_double)):
                fn = getattr(lib, pattern.format(letter), None)
                if fn is None:
                    break
                fn.restype = None
                fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer, scalar,
                               ctypes.c_void_p, integer, ctypes.c_void_p, integer, scalar, ctypes.c_void_p, integer)
                fns[np.dtype(dtype)] = fn
            if len(fns) == 2:
                return path, fns
    return None


def uses_numpy_pool() -> bool:
    """Whether gemm runs on NumPy's own BLAS (else on SciPy's, and matmul must follow it there)."""
    return numpy_cblas() is not None


def description() -> str:
    found = numpy_cblas()
    return f"NumPy's own CBLAS ({os.path.basename(found[0])})" if found else "SciPy's BLAS (scipy.linalg.blas)"


def _row_major(x) -> tuple[int, int]:
    """(transpose flag, leading dimension) of a 2-D operand read as row-major: a C-contiguous x as
    it is, an F-contiguous one (a transposed view) through its transpose; no copy either way."""
    if x.flags.c_contiguous:
        return NO_TRANS, max(x.shape[1], 1)
    if x.flags.f_contiguous:
        return TRANS, max(x.shape[0], 1)
    raise GpubpError(f"gemm operands must be C- or F-contiguous (got strides {x.strides})")


def gemm(a, b, out, alpha, beta) -> None:
    """out <- alpha * a @ b + beta * out, in place; a, b and out C- or F-contiguous, one dtype."""
    if not out.flags.c_contiguous:
        if not out.flags.f_contiguous:
            raise GpubpError(f"gemm output must be contiguous (got strides {out.strides})")
        a, b, out = b.T, a.T, out.T  # an F-ordered out is the C-ordered out^T = b^T a^T
    found = numpy_cblas()
    if found is None:
        return _scipy_gemm(a, b, out, alpha, beta)
    (M, K), N = a.shape, b.shape[1]
    ta, lda = _row_major(a)
    tb, ldb = _row_major(b)
    found[1][out.dtype](ROW_MAJOR, ta, tb, M, N, K, alpha, a.ctypes.data, lda, b.ctypes.data, ldb, beta,
                        out.ctypes.data, max(N, 1))


def _scipy_gemm(a, b, out, alpha, beta) -> None:
    """The same through SciPy's Fortran BLAS: a C-ordered out is the column-major out^T =
    alpha b^T a^T + beta out^T, so the operands swap."""
    from scipy.linalg import blas

    c = out.T
    x, tx = (b.T, 0) if b.T.flags.f_contiguous else (b, 1)
    y, ty = (a.T, 0) if a.T.flags.f_contiguous else (a, 1)
    fn = blas.sgemm if out.dtype == np.float32 else blas.dgemm
    r = fn(alpha, x, y, beta=beta, c=c, trans_a=tx, trans_b=ty, overwrite_c=1)
    if r.ctypes.data != c.ctypes.data:  # SciPy copied c (a wrong dtype or layout): the result is not in out
        raise GpubpError(f"gemm could not write its {out.dtype} output in place")
