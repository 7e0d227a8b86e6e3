"""HostArrays: the array plumbing of the backends whose arrays live in host memory.

The numpy, emulated and native backends keep NumPy arrays in the process's own memory and run
the BLAS route's products on the host's BLAS. What they share is here, once: copies that are
casts at most, allocations counted as they are made, products through NumPy's own CBLAS
(gpubp.backends.hostblas: alpha and beta, plans prepared once), TF32 shown by rounding the
operands, and per-thread scratch buffers. A backend takes it by listing it first among its
bases (``class NumpyBackend(HostArrays, Backend)``), so these methods stand in for
gpubp.backends.base.Backend's, which are written for a device with its own memory.

What follows from host memory is set here too: a step's mini-batch is gathered as the step
starts (``gathers_per_step``: its rows stay in the CPU's cache; the emulated backend, which runs
a GPU's epoch, keeps the GPU's gather), and where epochs replay as graphs by default (the native
backend), a network takes the own route unless told, since the host BLAS's calls cannot be
replayed in a graph (``preferred_gemm``).
"""

from __future__ import annotations

import threading

import numpy as np

from .. import reference
from . import hostblas


class HostArrays:
    """NumPy arrays in host memory, products on NumPy's BLAS; see the module's docstring."""

    xp = np
    gathers_per_step = True  # a step's rows, gathered as it starts, stay in the CPU's cache

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()  # each thread's scratch buffers (a sweep may train groups in threads)
        # np.matmul may run a plain product unless NumPy's BLAS could not be found (hostblas then
        # does every product, so that one BLAS pool does all)
        self._plain_matmul = hostblas.uses_numpy_pool()

    @property
    def preferred_gemm(self) -> str:
        """The own route where epochs are graphs by default (the host BLAS's calls cannot be
        replayed in one), the BLAS route elsewhere."""
        return "own" if self.graphs_by_default else "blas"

    def to_device(self, a, dtype=None):
        """``a`` as a C-contiguous NumPy array of ``dtype`` (no copy when it already is one)."""
        self._count("h2d")
        return np.ascontiguousarray(a, dtype=dtype)

    def empty(self, shape, dtype):
        self._count("allocs")
        return np.empty(shape, dtype=dtype)

    def scratch(self, shape, dtype, key=0):
        """A work buffer per (shape, dtype, key) and thread, reused: its contents are undefined on return."""
        buffers = getattr(self._local, "scratch", None)
        if buffers is None:
            buffers = self._local.scratch = {}
        k = (tuple(shape), np.dtype(dtype), key)
        work = buffers.get(k)
        if work is None:
            work = buffers[k] = self.empty(shape, dtype)
        return work

    def matmul(self, a, b, out, tf32: bool = False):
        if self._active:
            self._count("gemms")
        if not tf32 and self._plain_matmul:  # the common case, without a call in between (small steps)
            return np.matmul(a, b, out=out)
        self.product(a, b, out, None, None, tf32)
        return out

    def gemm(self, a, b, out, alpha: float, beta: float, tf32: bool = False) -> None:
        self._count("gemms")
        self.product(a, b, out, alpha, beta, tf32)

    def gemm_plan(self, a, b, out):
        """As Backend.gemm_plan; with NumPy's own CBLAS the arguments are converted once (a call
        costs ~1 us, not ~5)."""
        if not hostblas.uses_numpy_pool():
            return super().gemm_plan(a, b, out)
        plan = hostblas.Plan(a, b, out)

        def run(alpha, beta, b=None):
            if self._active:
                self._count("gemms")
            plan(alpha, beta, b)
        return run

    def product(self, a, b, out, alpha, beta, tf32) -> None:
        """The host product itself (alpha None: a plain matmul), uncounted, for matmul, gemm and a
        graph's replay. Under tf32, for float32, it reads copies of a and b rounded to TF32: how the
        host shows TF32's effect on accuracy (a GPU's tensor cores read TF32 inputs, sum in FP32)."""
        if tf32 and out.dtype == np.float32:
            a = reference.round_tf32(a, out=self.scratch(a.shape, a.dtype, "tf32a"))
            b = reference.round_tf32(b, out=self.scratch(b.shape, b.dtype, "tf32b"))
        if alpha is not None:
            hostblas.gemm(a, b, out, alpha, beta)
        elif not self._plain_matmul:  # keep every product on one BLAS (hostblas)
            hostblas.gemm(a, b, out, 1.0, 0.0)
        else:
            np.matmul(a, b, out=out)
