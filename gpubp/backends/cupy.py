"""The CuPy backend: device arrays in CuPy, GEMMs in cuBLAS, our kernels through RawModule.

The products of a gpubp.sweeps.stack.Stack (3-D: a leading model axis) are one strided-batched call each
through our cuBLAS binding (``Cublas.gemm_batched``): cupy.matmul would first copy every operand
that is not C-contiguous, and a stack's are strided views (W and W^T of the (K, P) parameters, D^T).

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
from ..errors import GpubpError
from . import cublas
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
    graphs_by_default = True

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
        self._capture_stream = None
        self._graph_blas = None  # our cuBLAS handle on the capture stream
        self._eager_blas = None  # and one on the current stream, for TF32 products

    def upload(self, dst, host) -> None:
        """Copy ``host`` into device array ``dst`` in place (cupy.ndarray.set: no allocation)."""
        self._count("h2d")
        dst.set(np.ascontiguousarray(host, dtype=dst.dtype))

    def to_host(self, a) -> np.ndarray:
        self._count("d2h")
        return self.xp.asnumpy(a)

    def synchronize(self) -> None:
        self._count("syncs")
        self.xp.cuda.get_current_stream().synchronize()

    def matmul(self, a, b, out, tf32: bool = False):
        """out <- a @ b: cupy.matmul; inside a capture (where CuPy refuses cuBLAS) or under TF32,
        through our own cuBLAS handle (gpubp/backends/cublas.py); with a model axis (out 3-D), one
        strided-batched call through that handle, on the operands' views as they are."""
        if out.ndim == 3:
            self._own_blas(tf32).gemm_batched(a, b, out, tf32)
            return out
        if self.capturing or tf32:
            self._own_blas(tf32).gemm(a, b, out, 1.0, 0.0, tf32)
            return out
        return super().matmul(a, b, out)

    def gemm(self, a, b, out, alpha: float, beta: float, tf32: bool = False) -> None:
        """out <- alpha * (a @ b) + beta * out in one cuBLAS call: cupy.cublas.gemm reads C- or
        F-contiguous operands (a transposed view is F-contiguous) and writes a contiguous out in place."""
        if self.capturing or tf32:
            self._own_blas(tf32).gemm(a, b, out, alpha, beta, tf32)
            return
        from cupy import cublas as cupy_cublas

        self._count("gemms")
        cupy_cublas.gemm("N", "N", a, b, out=out, alpha=alpha, beta=beta)

    def _own_blas(self, tf32: bool) -> cublas.Cublas:
        """Our cuBLAS handle: the capture stream's during a capture (made by prepare_capture), else
        one on the current stream for TF32 and batched products (CuPy's TF32 switch is process-wide)."""
        if self.capturing:
            return self._graph_blas
        self._count("gemms")  # an eager product (captured ones are graph nodes)
        if self._eager_blas is None:
            workspace = self.xp.empty((cublas.WORKSPACE_BYTES,), dtype=self.xp.uint8)
            self._eager_blas = cublas.Cublas(cublas.load(), self.xp.cuda.get_current_stream().ptr, workspace)
        return self._eager_blas

    # -----------------------------------------------------------------------------------------
    # Graphs: CuPy's stream capture; the blas route's products through our own cuBLAS binding
    # -----------------------------------------------------------------------------------------

    def graph_support(self, gemm: str) -> tuple[bool, str]:
        if gemm == "own":
            return True, "the own route's layer kernels are captured as they are"
        try:
            cublas.load()
        except (OSError, GpubpError) as e:
            return False, f"the blas route needs libcublas for capture, which did not load ({sysinfo.first_line(e)})"
        return True, "the blas route's products go through a cuBLAS handle bound to the capture stream"

    def prepare_capture(self, gemm: str) -> None:
        super().prepare_capture(gemm)
        if self._capture_stream is None:
            self._capture_stream = self.xp.cuda.Stream(non_blocking=True)
        if gemm == "blas" and self._graph_blas is None:  # handle and workspace before capture begins
            workspace = self.xp.empty((cublas.WORKSPACE_BYTES,), dtype=self.xp.uint8)
            self._graph_blas = cublas.Cublas(cublas.load(), self._capture_stream.ptr, workspace)

    @contextmanager
    def capture(self):
        """CuPy's stream capture (Stream.begin_capture/end_capture, as CuPy documents it): everything
        launched on the capture stream in the block becomes one cupy.cuda.Graph."""
        if self._capture_stream is None:
            raise GpubpError("call prepare_capture before capture")
        handle = _CapturedGraph(self)
        stream = self._capture_stream
        with stream:
            stream.begin_capture()
            self.capturing = True
            try:
                yield handle
            finally:
                self.capturing = False
                graph = stream.end_capture()
        handle.graph = graph

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


class _CapturedGraph:
    """A captured cupy.cuda.Graph; ``launch()`` replays it on the current stream."""

    def __init__(self, be) -> None:
        self.be, self.graph = be, None

    def launch(self) -> None:
        self.be._count("graph_launches")
        self.graph.launch()


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
