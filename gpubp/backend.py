"""Backend: which array library runs the maths, and the few things the network asks of it.

A backend owns ``xp`` (numpy or cupy), moves arrays to and from the device, synchronizes,
allocates workspaces, runs GEMMs, and runs the fused elementwise operations of backprop:

    bias_sigmoid(Z, b)                 Z <- sigma(Z + b)                       (forward, per layer)
    output_delta(cost, D, A, Y, s)     D <- s*(A-Y)*sigma'  or  s*(A-Y)        (BP1)
    hidden_delta(G, A)                 G <- G * sigma'(from A)                 (BP2, after the GEMM)
    sgd_update(p, g, nw, decay, step)  p <- decay*p - step*g (decay on weights only)
    one_hot(labels, Y), argmax_hits(A, labels, hits)

The NumPy backend runs the NumPy reference of each (gpubp.kernels); the CuPy and emulated
backends launch our CUDA kernels (gpubp.kernels.KernelBackend) through one launch path.
Every backend counts launches, GEMMs, copies, syncs and allocations inside ``counters()``.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np

from . import kernels as K
from .errors import BackendUnavailable, GpubpError

BACKEND_NAMES = ("auto", "numpy", "cupy", "emulated")


@dataclass
class Counters:
    """What one stretch of work asked of the device (see ``Backend.counters``)."""

    launches: int = 0  # custom kernel launches
    gemms: int = 0  # matrix products (cuBLAS on the GPU)
    h2d: int = 0  # host -> device copies
    d2h: int = 0  # device -> host copies
    syncs: int = 0  # host waits for the device
    allocs: int = 0  # device allocations

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Backend:
    """What every backend shares: the counters, and the array plumbing over ``xp``."""

    name = "?"
    xp = np
    reason = ""  # why this backend was chosen (for "auto")
    device = "CPU"
    counts_own_allocs = True  # the CuPy backend counts real pool allocations instead

    def __init__(self) -> None:
        self._active: list[Counters] = []

    def _count(self, what: str, k: int = 1) -> None:
        if self._active:
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

    def to_device(self, a, dtype=None):
        """``a`` as a C-contiguous device array of ``dtype``: copied up from the host, or cast in
        place on the device when it is a device array already (no host round trip)."""
        if self.xp is not np and isinstance(a, self.xp.ndarray):
            return self.xp.ascontiguousarray(a, dtype=dtype)
        self._count("h2d")
        return self.xp.asarray(np.ascontiguousarray(a, dtype=dtype))

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

    def matmul(self, a, b, out):
        """out <- a @ b (a or b may be transposed views; out is written in place)."""
        self._count("gemms")
        return self.xp.matmul(a, b, out=out)

    def __repr__(self) -> str:
        return f"<gpubp backend {self.name} on {self.device}>"


class NumpyBackend(Backend):
    """The CPU backend; its fused operations are the NumPy references the kernels must match."""

    name = "numpy"

    def __init__(self) -> None:
        super().__init__()
        self._scratch: dict = {}
        self.device = f"CPU ({os.cpu_count()} cores)"

    def _work(self, shape, dtype):
        """A scratch buffer per (shape, dtype): allocated once, so a step allocates nothing."""
        key = (shape, dtype)
        work = self._scratch.get(key)
        if work is None:
            work = self._scratch[key] = self.empty(shape, dtype)
        return work

    def bias_sigmoid(self, Z, b):
        K.bias_sigmoid(Z, b)

    def output_delta(self, cost, D, A, Y, scale):
        K.output_delta(cost, D, A, Y, scale, work=self._work(A.shape, A.dtype))

    def hidden_delta(self, G, A):
        K.hidden_delta(G, A, work=self._work(A.shape, A.dtype))

    def sgd_update(self, p, g, n_weights, decay, step):
        K.sgd_update(p, g, n_weights, decay, step, work=self._work(g.shape, g.dtype))

    def one_hot(self, labels, Y):
        K.one_hot(labels, Y)

    def argmax_hits(self, A, labels, hits):
        K.argmax_hits(A, labels, hits)


@functools.lru_cache(maxsize=1)
def cupy_status() -> tuple[bool, str]:
    """One cached probe: (usable, one-line reason). Usable means CuPy imports AND a device answers."""
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install 'gpubp[cuda13]' or 'gpubp[cuda12]')"
    except Exception as e:  # a broken install raises more than ImportError
        return False, f"CuPy failed to import: {type(e).__name__}: {_first_line(e)}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        msg = _first_line(e)
        if "NoDevice" in msg or "no CUDA-capable device" in msg:
            return False, f"no CUDA device found ({msg})"
        return False, f"no usable NVIDIA driver ({msg})"
    if count < 1:
        return False, "no CUDA device found (the driver reports 0 devices)"
    try:
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception as e:
        return False, f"CUDA device 0 did not answer ({_first_line(e)})"
    return True, f"CUDA device 0: {name}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


_instances: dict[str, Backend] = {}


def get_backend(name: str | None = None) -> Backend:
    """The backend called ``name`` ("auto" | "numpy" | "cupy" | "emulated"); default from $GPUBP_BACKEND.

    "auto" takes CuPy only when it imports and a CUDA device answers, else NumPy; ``.reason``
    says why. "cupy" with no usable GPU raises BackendUnavailable naming the cause.
    """
    if isinstance(name, Backend):
        return name
    name = (name or os.environ.get("GPUBP_BACKEND") or "auto").strip().lower()
    if name not in BACKEND_NAMES:
        raise GpubpError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
    reason = ""
    if name == "auto":
        ok, why = cupy_status()
        name, reason = ("cupy", f"auto: {why}") if ok else ("numpy", f"auto: GPU not used: {why}")
    if name not in _instances:
        _instances[name] = _make(name)
    be = _instances[name]
    be.reason = reason or f"asked for {name}"
    return be


def _make(name: str) -> Backend:
    if name == "numpy":
        return NumpyBackend()
    if name == "emulated":
        from .emulator import EmulatedBackend

        return EmulatedBackend()
    ok, why = cupy_status()
    if not ok:
        raise BackendUnavailable(f"backend 'cupy' cannot run here: {why}; use --backend numpy or emulated")
    from .cupy_backend import CupyBackend

    return CupyBackend()
