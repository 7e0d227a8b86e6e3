"""Backend: which array library runs the maths, and the few things the network asks of it.

A backend owns ``xp`` (numpy or cupy). It moves arrays to and from the device, synchronizes,
allocates, runs the products (``matmul``, and ``gemm`` with alpha and beta, so an update can
ride in its product) and runs kernels by name: ``be.kernel("bias_relu", dtype)`` is a callable
``k(n, *args)`` taking the kernel's own arguments. The NumPy backend runs the NumPy reference
of that name (gpubp.reference); the CuPy and emulated backends launch our CUDA kernel
(backends/kernel.py). Every backend counts what it asks of the device inside ``counters()``.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np

from .. import reference
from ..errors import GpubpError
from . import hostblas


@dataclass
class Counters:
    """What one stretch of work asked of the device (see ``Backend.counters``)."""

    launches: int = 0  # our kernel launches issued one by one (eager)
    gemms: int = 0  # matrix products (cuBLAS on the GPU)
    h2d: int = 0  # host -> device copies
    d2h: int = 0  # device -> host copies
    syncs: int = 0  # host waits for the device
    allocs: int = 0  # device allocations
    graph_launches: int = 0  # CUDA graphs launched (each replays many kernels)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Backend:
    """What every backend shares: the counters, and the array plumbing over ``xp``.

    Capabilities are class attributes, so callers ask rather than probe for methods:
    ``compiles_kernels`` (our CUDA runs here: CuPy and the emulator), and ``fuses_per_model``: a
    gpubp.sweeps.stack.Stack folds plain SGD's update into each model's BP4 product, one BLAS call per
    model, as one network's step does (on the CPU a call costs a microsecond; on a GPU it would be
    K launches a layer, so there a stack keeps one batched product and the update kernel).
    """

    name = "?"
    xp = np
    reason = ""  # why this backend was chosen (for "auto")
    device = "CPU"
    compiles_kernels = False
    capturing = False  # inside capture() (the kernel backends): launches are recorded into a graph
    counts_own_allocs = True  # the CuPy backend counts real pool allocations instead
    fuses_per_model = False
    preferred_gemm = "blas"  # the route a Network takes here unless told (gemm=None)
    graphs_by_default = False  # whether training replays each epoch as a graph unless told (graph=None)
    gathers_per_step = False  # gather each mini-batch as its step starts, not the whole set once an epoch
    torch_device = None  # the PyTorch device gpubp bench runs beside this backend ("cpu", "cuda"), if any

    def __init__(self) -> None:
        self._active: list[Counters] = []
        self._local = threading.local()  # each thread's scratch buffers (a sweep may train groups in threads)
        # xp.matmul may run a plain product: not on the CPU when NumPy's BLAS could not be found
        # (hostblas then does every product, on one BLAS)
        self._plain_matmul = self.xp is not np or hostblas.uses_numpy_pool()

    def _count(self, what: str, k: int = 1) -> None:
        for c in self._active:
            setattr(c, what, getattr(c, what) + k)

    @contextmanager
    def counters(self):
        """``with be.counters() as c:`` counts what the block asks of the device."""
        c = Counters()
        self._active.append(c)
        try:
            yield c
        finally:
            self._active.remove(c)

    def graph_support(self, gemm: str) -> tuple[bool, str]:
        """(whether an epoch on the ``gemm`` route can be captured as a graph here, why or why not)."""
        return False, f"the {self.name} backend has no CUDA graphs"

    def prepare_capture(self, gemm: str) -> None:
        """Make whatever capture will need (before it starts: nothing may be allocated during it)."""
        ok, why = self.graph_support(gemm)
        if not ok:
            raise GpubpError(f"cannot capture a graph: {why}")

    @contextmanager
    def capture(self):
        """``with be.capture() as g:`` records the launches and products of the block into a graph
        instead of running them; ``g.launch()`` then replays them all at once."""
        raise GpubpError(f"the {self.name} backend cannot capture graphs")
        yield  # pragma: no cover

    def warmup(self) -> float:
        """Compile whatever this backend compiles, outside any clock; seconds taken (0 when nothing)."""
        return 0.0

    def kernel(self, stem: str, dtype):
        """The callable ``k(n, *args)`` that runs kernel ``stem`` for ``dtype`` over n work items."""
        raise NotImplementedError(f"{type(self).__name__} runs no kernels")

    def to_device(self, a, dtype=None):
        """``a`` as a C-contiguous device array of ``dtype``: copied up from the host, or cast in
        place on the device when it is a device array already (no host round trip)."""
        if self.xp is not np and isinstance(a, self.xp.ndarray):
            return self.xp.ascontiguousarray(a, dtype=dtype)
        self._count("h2d")
        return self.xp.asarray(np.ascontiguousarray(a, dtype=dtype))

    def upload(self, dst, host) -> None:
        """Copy host array ``host`` into the existing device array ``dst`` (same shape; no allocation)."""
        self._count("h2d")
        dst[...] = host

    def to_host(self, a) -> np.ndarray:
        """A NumPy copy of device array ``a``; inside an epoch only for what the user asked to see."""
        self._count("d2h")
        return np.array(a)

    def synchronize(self) -> None:
        self._count("syncs")

    def empty(self, shape, dtype):
        if self.counts_own_allocs:
            self._count("allocs")
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        out = self.empty(shape, dtype)
        out.fill(0)
        return out

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

    def _tf32_operands(self, a, b, out, tf32):
        """a and b, or (under tf32, for float32) copies of them rounded to TF32: how the host backends
        show TF32's effect on accuracy (a GPU's tensor cores read TF32 inputs and sum in FP32)."""
        if not (tf32 and out.dtype == np.float32):
            return a, b
        ra, rb = self.scratch(a.shape, a.dtype, "tf32a"), self.scratch(b.shape, b.dtype, "tf32b")
        return reference.round_tf32(a, out=ra), reference.round_tf32(b, out=rb)

    def matmul(self, a, b, out, tf32: bool = False):
        """out <- a @ b (a or b may be transposed views; out is written in place); tf32: the product
        reads its float32 inputs as TF32."""
        if self._active:
            self._count("gemms")
        if not tf32 and self._plain_matmul:  # the common case, without a call in between (small steps)
            return self.xp.matmul(a, b, out=out)
        self._product(a, b, out, None, None, tf32)
        return out

    def gemm(self, a, b, out, alpha: float, beta: float, tf32: bool = False) -> None:
        """out <- alpha * (a @ b) + beta * out, in one BLAS call (2-D; a or b may be transposed views)."""
        self._count("gemms")
        self._product(a, b, out, alpha, beta, tf32)

    def gemm_plan(self, a, b, out):
        """``plan(alpha, beta, b=None)``: ``gemm(a, b, out, alpha, beta)`` prepared once for products a
        step repeats on the same arrays (``b`` may change each call, same shape and layout). On the
        CPU with NumPy's own CBLAS the arguments are converted once (a call costs ~1 us, not ~5)."""
        b0 = b
        if not (self.xp is np and hostblas.uses_numpy_pool()):
            return lambda alpha, beta, b=None: self.gemm(a, b0 if b is None else b, out, alpha, beta)
        plan = hostblas.Plan(a, b, out)

        def run(alpha, beta, b=None):
            if self.capturing:  # a capture records products (the emulator): through gemm, which does
                return self.gemm(a, b0 if b is None else b, out, alpha, beta)
            if self._active:
                self._count("gemms")
            plan(alpha, beta, b)
        return run

    def _product(self, a, b, out, alpha, beta, tf32) -> None:
        """The host product itself (alpha None: a plain matmul), uncounted, for matmul, gemm and replays."""
        a, b = self._tf32_operands(a, b, out, tf32)
        if alpha is not None:
            hostblas.gemm(a, b, out, alpha, beta)
        elif self.xp is np and not hostblas.uses_numpy_pool():  # keep every product on one BLAS (hostblas)
            hostblas.gemm(a, b, out, 1.0, 0.0)
        else:
            self.xp.matmul(a, b, out=out)

    def __repr__(self) -> str:
        return f"<gpubp backend {self.name} on {self.device}>"
