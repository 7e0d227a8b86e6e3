"""The CPU backend: NumPy arrays, OpenBLAS products, and the NumPy reference of every kernel.

``kernel(stem, dtype)`` returns gpubp.reference's function of that name, so the network asks the
same things of every backend. References borrow scratch buffers from here, one per (shape,
dtype) and thread, allocated once, so a training step allocates nothing after its first.
"""

from __future__ import annotations

import functools
import inspect
import os

from .. import reference
from ..errors import GpubpError
from .base import Backend
from .host import HostArrays


class NumpyBackend(HostArrays, Backend):
    name = "numpy"

    def __init__(self) -> None:
        super().__init__()
        self.device = f"CPU ({os.cpu_count()} cores)"

    def kernel(self, stem: str, dtype):
        ref = getattr(reference, stem, None)
        if ref is None or not callable(ref):
            raise GpubpError(f"no NumPy reference named {stem!r} in gpubp.reference")
        if "scratch" in inspect.signature(ref).parameters:
            ref = functools.partial(ref, scratch=self.scratch)
        return lambda n, *args: ref(*args)


def probe() -> tuple[bool, str]:
    return True, "NumPy runs everywhere"


BACKEND = NumpyBackend
