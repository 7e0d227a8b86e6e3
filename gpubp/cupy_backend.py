"""The CuPy backend: device arrays in CuPy, GEMMs in cuBLAS, our kernels through RawModule.

Each kernel file is one ``cupy.RawModule(code=kernels.source(file), options=NVRTC_OPTIONS)``,
compiled on first use (or by ``warmup()``) and cached on disk by CuPy, keyed on the code
string, which already holds the shared header. Launch validation and grid sizes come from
``kernels.KernelBackend``, the same path the emulated backend takes. Allocations are counted
from CuPy's memory pool with a MemoryHook, so they include any CuPy makes behind our back.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from . import kernels as K
from .backend import Backend


class CupyBackend(K.KernelBackend, Backend):
    name = "cupy"
    counts_own_allocs = False  # the pool hook counts every allocation

    def __init__(self) -> None:
        import cupy

        Backend.__init__(self)
        self.xp = cupy
        dev = cupy.cuda.Device()
        self.sm_count = int(dev.attributes["MultiProcessorCount"])
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        self.device = f"{name} (sm_{dev.compute_capability}, {self.sm_count} SMs)"
        self._modules: dict[str, object] = {}
        self._functions: dict[str, object] = {}

    def to_host(self, a) -> np.ndarray:
        self._count("d2h")
        return self.xp.asnumpy(a)

    def synchronize(self) -> None:
        self._count("syncs")
        self.xp.cuda.get_current_stream().synchronize()

    @contextmanager
    def counters(self):
        with super().counters() as c, _PoolAllocations(c):
            yield c

    def _function(self, file: str, name: str):
        fn = self._functions.get(name)
        if fn is None:
            mod = self._modules.get(file)
            if mod is None:
                mod = self._modules[file] = self.xp.RawModule(code=K.source(file), options=K.NVRTC_OPTIONS)
            fn = self._functions[name] = mod.get_function(name)
        return fn

    def _run(self, file, name, grid, block, args, shared_mem=0) -> None:
        self._function(file, name)(grid, block, args, shared_mem=shared_mem)


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
