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
import threading
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
        # Per thread, as CuPy's current stream is (cupy/cuda/stream.pyx): the capture stream, our
        # cuBLAS handle on it, the graph being recorded, and the eager handle (TF32 and batched
        # products). A capture belongs to the thread that opened it: another thread's products and
        # launches meanwhile run on its own stream and handle, not into this thread's graph.
        self._threads = threading.local()

    def _mine(self, name: str):
        return getattr(self._threads, name, None)

    @property
    def capturing(self) -> bool:
        return self._mine("graph") is not None

    def _refuse_in_capture(self, what: str) -> None:
        if self.capturing:
            raise GpubpError(f"{what} during graph capture: the graph would bake in an address the pool may "
                             f"hand to another array, or the capturing stream would have to wait")

    def empty(self, shape, dtype):
        """A new device array. Refused during this thread's capture: CuPy allows it (relaxed capture
        mode, cupy/cuda/stream.pyx begin_capture) and the graph keeps its address after it is freed."""
        self._refuse_in_capture("an allocation")
        return super().empty(shape, dtype)

    def to_device(self, a, dtype=None):
        self._refuse_in_capture("a host-to-device copy")
        return super().to_device(a, dtype)

    def upload(self, dst, host) -> None:
        """Copy ``host`` into device array ``dst`` in place (cupy.ndarray.set: no allocation)."""
        self._refuse_in_capture("a host-to-device copy")
        self._count("h2d")
        dst.set(np.ascontiguousarray(host, dtype=dst.dtype))

    def to_host(self, a) -> np.ndarray:
        self._refuse_in_capture("a device-to-host copy")
        self._count("d2h")
        return self.xp.asnumpy(a)

    def synchronize(self) -> None:
        self._refuse_in_capture("a synchronization")
        self._count("syncs")
        self.xp.cuda.get_current_stream().synchronize()

    def matmul(self, a, b, out, tf32: bool = False):
        """out <- a @ b: cupy.matmul; inside a capture (where CuPy refuses cuBLAS) or under TF32,
        through our own cuBLAS handle (gpubp/backends/cublas.py); with a model axis (out 3-D), one
        strided-batched call through that handle, on the operands' views as they are."""
        if out.ndim == 3:
            self._keep((a, b, out))
            self._own_blas(tf32).gemm_batched(a, b, out, tf32)
            return out
        if self.capturing or tf32:
            self._keep((a, b, out))
            self._own_blas(tf32).gemm(a, b, out, 1.0, 0.0, tf32)
            return out
        return super().matmul(a, b, out)

    def gemm(self, a, b, out, alpha: float, beta: float, tf32: bool = False) -> None:
        """out <- alpha * (a @ b) + beta * out in one cuBLAS call: cupy.cublas.gemm reads C- or
        F-contiguous operands (a transposed view is F-contiguous) and writes a contiguous out in place."""
        if self.capturing or tf32:
            self._keep((a, b, out))
            self._own_blas(tf32).gemm(a, b, out, alpha, beta, tf32)
            return
        from cupy import cublas as cupy_cublas

        self._count("gemms")
        cupy_cublas.gemm("N", "N", a, b, out=out, alpha=alpha, beta=beta)

    def _own_blas(self, tf32: bool) -> cublas.Cublas:
        """Our cuBLAS handle: the capture stream's during this thread's capture (made by
        prepare_capture), else this thread's eager one for TF32 and batched products (CuPy's TF32
        switch is process-wide), bound at each use to the current stream, where the kernels before
        and after the product run (SetStream, then SetWorkspace: cublas.Cublas.set_stream)."""
        if self.capturing:
            return self._threads.graph_blas
        self._count("gemms")  # an eager product (captured ones are graph nodes)
        stream = self.xp.cuda.get_current_stream().ptr
        handle = self._mine("eager_blas")
        if handle is None:
            workspace = self.xp.empty((cublas.WORKSPACE_BYTES,), dtype=self.xp.uint8)
            handle = self._threads.eager_blas = cublas.Cublas(cublas.load(), stream, workspace)
        elif handle.stream != stream:
            handle.set_stream(stream)
        return handle

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
        """This thread's capture stream, every kernel loaded (a kernel loads at cuModuleGetFunction,
        CUDA's lazy-loading guide: never inside a capture) and, for the blas route, our cuBLAS handle
        on the capture stream with its workspace, all before the capture begins. Nothing waits."""
        super().prepare_capture(gemm)
        t = self._threads
        if self._mine("stream") is None:
            t.stream = self.xp.cuda.Stream(non_blocking=True)
        for name, (file, _) in K.signatures().items():
            self.load_kernel(file, name)
        if gemm == "blas" and self._mine("graph_blas") is None:
            workspace = self.xp.empty((cublas.WORKSPACE_BYTES,), dtype=self.xp.uint8)
            t.graph_blas = cublas.Cublas(cublas.load(), t.stream.ptr, workspace)

    @contextmanager
    def capture(self):
        """CuPy's stream capture (Stream.begin_capture/end_capture, as CuPy documents it): everything
        launched on this thread's capture stream in the block becomes one cupy.cuda.Graph.

        A cupy.cuda.Graph holds its cudaGraph_t, cudaGraphExec_t and stream only (cupy/cuda/graph.pxd)
        and the graph's nodes hold raw device pointers, so the handle keeps alive every array a
        captured launch or product named, for as long as the graph lives. If the block raises, its error is the one that propagates (ending a capture that a refused call has
        invalidated raises cudaErrorStreamCaptureInvalidated, which would hide it). An allocation
        CuPy made from its pool during the capture (its address is baked in) fails the capture."""
        stream = self._mine("stream")
        if stream is None:
            raise GpubpError("call prepare_capture before capture")
        if self.capturing:
            raise GpubpError("a capture is already in progress")
        handle = _CapturedGraph(self)
        hidden = _PoolAllocations(None)
        with stream:
            stream.begin_capture()
            self._threads.graph = handle
            try:
                with hidden:
                    yield handle
            except BaseException:
                self._threads.graph = None
                try:
                    stream.end_capture()
                except Exception:  # noqa: BLE001 (the block's own error is the one to report)
                    pass
                raise
            self._threads.graph = None
            handle.graph = stream.end_capture()
        if hidden.count:
            raise GpubpError(f"{hidden.count} allocation(s) from CuPy's memory pool during graph capture: the "
                             f"graph baked in their addresses (make every buffer before the capture)")

    def _keep(self, arrays) -> None:
        graph = self._mine("graph")
        if graph is not None:
            graph.keep(arrays)

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
        self._keep(args)
        self.load_kernel(file, name)(grid, block, args, shared_mem=shared_mem)


class _CapturedGraph:
    """A captured cupy.cuda.Graph; ``launch()`` replays it on the current stream. It keeps alive the
    memory of every array its launches and products named (a view's base: one reference a buffer)."""

    def __init__(self, be) -> None:
        self.be, self.graph, self._arrays = be, None, {}

    def keep(self, arrays) -> None:
        for a in arrays:
            if isinstance(a, self.be.xp.ndarray):
                owner = a if a.base is None else a.base
                self._arrays.setdefault(id(owner), owner)

    def launch(self) -> None:
        self.be._count("graph_launches")
        self.graph.launch()


class _PoolAllocations:
    """A CuPy MemoryHook counting the allocations the memory pool serves to this thread (CuPy's hooks
    are per thread: cupy/cuda/memory_hook.pyx), into ``counters`` when given, and into ``count``."""

    def __init__(self, counters) -> None:
        import cupy

        outer = self
        self.count = 0

        class Hook(cupy.cuda.MemoryHook):
            name = f"gpubp-allocations-{id(self)}"

            def malloc_postprocess(self, **kwargs):
                outer.count += 1
                if counters is not None:
                    counters.allocs += 1

        self._hook = Hook()

    def __enter__(self):
        self._hook.__enter__()
        return self

    def __exit__(self, *exc):
        self._hook.__exit__(*exc)


BACKEND = CupyBackend
