"""Backend: which array library runs the maths, and the few things the network asks of it.

A backend owns ``xp`` (numpy or cupy). It moves arrays to and from the device, synchronizes,
allocates, runs the products (``matmul``, and ``gemm`` with alpha and beta, so an update can
ride in its product) and runs kernels by name: ``be.kernel("bias_relu", dtype)`` is a callable
``k(n, *args)`` taking the kernel's own arguments. The NumPy backend runs the NumPy reference
of that name (gpubp.reference); the CuPy, emulated and native backends launch our CUDA kernel
(backends/kernel.py). Every backend counts what it asks of the device inside ``counters()``.

This class is written for a device with its own memory (CuPy's); the backends whose arrays live
in host memory (numpy, emulated, native) share gpubp.backends.host.HostArrays in its place.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np

from ..errors import GpubpError


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
    """What every backend shares: the counters, the graph interface, and the array plumbing of a
    device with its own memory (``xp``'s arrays there, host arrays copied up and down).

    Capabilities are class attributes, so callers ask rather than probe for methods:
    ``compiles_kernels`` (our CUDA runs here: the cupy, emulated and native backends) and
    ``graphs_by_default``; what follows from where the arrays live (``gathers_per_step``,
    ``preferred_gemm``) is set by HostArrays for the backends whose arrays are in host memory.
    """

    name = "?"
    xp = np
    reason = ""  # why this backend was chosen (for "auto")
    device = "CPU"
    compiles_kernels = False
    capturing = False  # inside capture() (the kernel backends): launches are recorded into a graph
    graphs_by_default = False  # whether training replays each epoch as a graph unless told (graph=None)
    gathers_per_step = False  # gather each mini-batch as its step starts, not the whole set once an epoch
    preferred_gemm = "blas"  # the route a Network takes here unless told (gemm=None)

    def __init__(self) -> None:
        self._active: list[Counters] = []

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

    def use_cores(self, n: int) -> None:
        """Split the work this Python thread launches over at most ``n`` cores from now on (a sweep's
        worker threads each take their share). Nothing to do where the threads' work is not split."""

    def kernel(self, stem: str, dtype):
        """The callable ``k(n, *args)`` that runs kernel ``stem`` for ``dtype`` over n work items."""
        raise NotImplementedError(f"{type(self).__name__} runs no kernels")

    def to_device(self, a, dtype=None):
        """``a`` as a C-contiguous device array of ``dtype``: copied up from the host, or cast in
        place on the device when it is a device array already (no host round trip)."""
        if isinstance(a, self.xp.ndarray):
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
        """An uninitialised device array (a device's allocator counts its own allocations: CuPy's pool hook)."""
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        out = self.empty(shape, dtype)
        out.fill(0)
        return out

    def matmul(self, a, b, out, tf32: bool = False):
        """out <- a @ b (a or b may be transposed views; out is written in place); tf32: the product
        reads its float32 inputs as TF32."""
        if self._active:
            self._count("gemms")
        return self.xp.matmul(a, b, out=out)

    def gemm(self, a, b, out, alpha: float, beta: float, tf32: bool = False) -> None:
        """out <- alpha * (a @ b) + beta * out, in one BLAS call (2-D; a or b may be transposed views)."""
        raise NotImplementedError(f"{type(self).__name__} has no gemm")

    def gemm_plan(self, a, b, out):
        """``plan(alpha, beta, b=None)``: ``gemm(a, b, out, alpha, beta)`` prepared once for products a
        step repeats on the same arrays (``b`` may change each call, same shape and layout)."""
        b0 = b
        return lambda alpha, beta, b=None: self.gemm(a, b0 if b is None else b, out, alpha, beta)

    def __repr__(self) -> str:
        return f"<gpubp backend {self.name} on {self.device}>"
