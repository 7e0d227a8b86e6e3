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


class CBlas:
    """NumPy's CBLAS ?gemm: ``fns[dtype]`` with argument types set (converts Python numbers at each
    call), ``raw[dtype]`` without (for Plan, which passes ctypes values it made once), ``integer``
    and ``scalars[dtype]`` the C types of its integers and of alpha and beta."""

    def __init__(self, path, lib, pattern, integer):
        self.path, self.integer, self.fns, self.raw, self.scalars = path, integer, {}, {}, {}
        for dtype, letter, scalar in ((np.float32, "s", ctypes.c_float), (np.float64, "d", ctypes.c_double)):
            name = pattern.format(letter)
            fn = getattr(lib, name)
            fn.restype = None
            fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer, scalar,
                           ctypes.c_void_p, integer, ctypes.c_void_p, integer, scalar, ctypes.c_void_p, integer)
            raw = lib[name]  # a second function object for the same symbol, left without argtypes
            raw.restype = None
            self.fns[np.dtype(dtype)], self.raw[np.dtype(dtype)], self.scalars[np.dtype(dtype)] = fn, raw, scalar


@functools.cache
def numpy_cblas() -> CBlas | None:
    """NumPy's own CBLAS, or None when it cannot be found in this process."""
    np.empty(1) @ np.empty(1)  # make sure NumPy's BLAS is loaded
    for path in _loaded_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pattern, integer in SYMBOLS:
            if all(hasattr(lib, pattern.format(letter)) for letter in "sd"):
                return CBlas(path, lib, pattern, integer)
    return None


def uses_numpy_pool() -> bool:
    """Whether gemm runs on NumPy's own BLAS (else on SciPy's, and matmul must follow it there)."""
    return numpy_cblas() is not None


def description() -> str:
    found = numpy_cblas()
    return f"NumPy's own CBLAS ({os.path.basename(found.path)})" if found else "SciPy's BLAS (scipy.linalg.blas)"


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
    found.fns[out.dtype](ROW_MAJOR, ta, tb, M, N, K, alpha, a.ctypes.data, lda, b.ctypes.data, ldb, beta,
                         out.ctypes.data, max(N, 1))


class Plan:
    """One product a step repeats on the same arrays (a fused update: out <- alpha a b + beta out),
    its CBLAS arguments made into C values once and passed as they are: a call costs the product
    and about a microsecond (converting fourteen arguments each call costs more than the small
    products of network.py's setup). ``b`` may be replaced at each call by an array of the same
    shape and layout (a step's input batch)."""

    def __init__(self, a, b, out):
        if not out.flags.c_contiguous:
            raise GpubpError(f"a planned gemm's output must be C-contiguous (got strides {out.strides})")
        cblas = numpy_cblas()
        I, S = cblas.integer, cblas.scalars[out.dtype]
        (M, K), N = a.shape, b.shape[1]
        ta, lda = _row_major(a)
        tb, ldb = _row_major(b)
        self._fn = cblas.raw[out.dtype]
        self._args = [ctypes.c_int(ROW_MAJOR), ctypes.c_int(ta), ctypes.c_int(tb), I(M), I(N), I(K), S(1),
                      ctypes.c_void_p(a.ctypes.data), I(lda), ctypes.c_void_p(b.ctypes.data), I(ldb), S(0),
                      ctypes.c_void_p(out.ctypes.data), I(max(N, 1))]
        self._alpha, self._beta, self._b = self._args[6], self._args[11], self._args[9]
        self._b_home, self._b_form = b.ctypes.data, (b.shape, tb)
        self._keep = (a, b, out)  # the pointers stay valid as long as the plan lives

    def __call__(self, alpha, beta, b=None) -> None:
        self._alpha.value, self._beta.value = alpha, beta
        if b is None:
            self._b.value = self._b_home
        elif (b.shape, _row_major(b)[0]) != self._b_form:
            raise GpubpError(f"planned gemm: an operand {b.shape} does not fit the plan's {self._b_form[0]}")
        else:
            self._b.value = b.ctypes.data
        self._fn(*self._args)


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
