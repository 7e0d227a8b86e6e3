"""A stand-in for CuPy that keeps CuPy 14's conventions and runs kernels on the emulator, so the CuPy
backend's own Python runs here without a GPU (tests/test_cupy_glue.py, tests/test_graphs.py).

``install(monkeypatch)`` puts it in place of ``cupy``, ``cupy_backends.cuda.libs``, ``cuda.pathfinder``
and, for libcublas only, the dynamic loader (``ctypes.CDLL``). What it holds to, each from CuPy's
source or documentation:
- RawModule(code=..., options=...) gets one kernel file's code and our NVRTC options; get_function
  by entry name loads the kernel (cuModuleGetFunction; CUDA's lazy-loading guide) and is refused
  while the current stream captures; kernel(grid, block, args, *, shared_mem=0), 1-3 sizes each,
  args device arrays or NumPy scalars (cupy/_core/raw.pyx).
- Device arrays are a class of their own (host arrays are not device arrays), with .set(host)
  (ndarray.set) and __cuda_array_interface__; asnumpy copies back. Their memory comes from a pool
  that, as CuPy's (cupy/cuda/memory.pyx, SingleDeviceMemoryPool), rounds sizes up to 512 bytes and
  hands a freed block to the next request of its size: an address outlives the array.
- cupy.matmul and cupy.cublas.gemm write into ``out`` in place only when it is contiguous and of the
  result's dtype (cupy/_core/_routines_linalg.pyx, cupy/cublas.py); the stand-in asserts it.
- Streams: the current stream is per thread (cupy/cuda/stream.pyx); Stream(non_blocking=True) is a
  context manager that makes it current in this thread; begin_capture() refuses the default stream
  and captures in relaxed mode; end_capture() returns a Graph, or raises
  cudaErrorStreamCaptureInvalidated when a refused call broke the capture; Graph.launch(stream=None)
  replays it (cupy/cuda/stream.pyx, graph.pyx). A Graph holds its cudaGraph_t, cudaGraphExec_t and
  stream only (cupy/cuda/graph.pxd): its nodes hold raw pointers and keep no array alive. While the current stream captures: kernels launched on it are recorded, not run; any
  cuBLAS call through CuPy raises NotImplementedError (cupy_backends/cuda/libs/cublas.pyx,
  setStream); synchronous copies and synchronizing it raise and invalidate the capture; allocating
  from the pool is ALLOWED (relaxed mode exists for it: the comment in Stream.begin_capture), and
  counted in calls["allocs_in_capture"]. Another thread's current stream is not captured.
- Memory hooks are per thread (cupy/cuda/memory_hook.pyx).
- cuBLAS is loaded lazily: nothing is loaded by ``import cupy``; ``from cupy_backends.cuda.libs import
  cublas`` runs the package's __getattr__, which asks cuda.pathfinder.load_nvidia_dynamic_lib("cublas")
  to load it first (cupy_backends/cuda/libs/__init__.py); pathfinder's answer is cached and names
  the file (cuda/pathfinder, LoadedDL.abs_path). Here the library is pip's (a path in site-packages
  the system loader does not search): ctypes.CDLL opens that path once it is loaded, and refuses any
  other libcublas name, as a machine with a pip-only install would.
- FakeCublasLib plays libcublas for gpubp's own binding (gpubp/backends/cublas.py): the same entry
  points, column-major GEMM read through the pointers it is given (strided-batched too: matrix i
  of A at A + i*strideA, strides 64-bit), each call on its handle's stream (recorded into the graph
  when that stream captures, whatever the current stream); cublasSetStream resets the handle's
  workspace to cuBLAS's own pool (cuBLAS guide), and a captured call needs a workspace set.
"""

from __future__ import annotations

import ctypes
import os
import threading
import types

import numpy as np

from gpubp.backends import kernel as K
from gpubp.backends.emulated import EmulatedBackend

CAPTURE_REFUSED = "calling cuBLAS API during stream capture is currently unsupported"
INVALIDATED = "cudaErrorStreamCaptureInvalidated"
UNSUPPORTED = "cudaErrorStreamCaptureUnsupported"
CUBLAS_PATH = "/site-packages/nvidia/cu13/lib/libcublas.so.13"  # where pip's nvidia-cublas puts it


def pad3(dims):
    return dims + (1,) * (3 - len(dims))


class _Block:
    """A block of pool memory; when the last array on it goes, the block goes back to the pool."""

    def __init__(self, pool, ptr, size):
        self.pool, self.ptr, self.size = pool, ptr, size
        self.__array_interface__ = {"data": (ptr, False), "shape": (size,), "typestr": "|u1", "version": 3}

    def __del__(self):
        self.pool.release(self.ptr, self.size)


class _Pool:
    """CuPy's memory pool as far as addresses go (cupy/cuda/memory.pyx): sizes rounded up to 512
    bytes, a freed block handed to the next request of its size (the last freed first), the device
    memory itself (here: arenas of host memory) never given back."""

    UNIT, ARENA = 512, 32 << 20

    def __init__(self):
        self.arenas, self.free, self.top = [], {}, None
        # reentrant: a garbage collection inside malloc may free a block (its __del__ releases it)
        self.lock = threading.RLock()

    def malloc(self, nbytes: int) -> _Block:
        size = max(-(-nbytes // self.UNIT), 1) * self.UNIT
        with self.lock:
            free = self.free.get(size)
            if free:
                return _Block(self, free.pop(), size)
            if self.top is None or self.top[1] + size > self.top[0].nbytes:
                self.arenas.append(np.empty(max(size, self.ARENA), np.uint8))
                self.top = [self.arenas[-1], 0]
            ptr = self.top[0].ctypes.data + self.top[1]
            self.top[1] += size
        return _Block(self, ptr, size)

    def release(self, ptr, size) -> None:
        with self.lock:
            self.free.setdefault(size, []).append(ptr)

    def view(self, ptr, shape, strides, dtype, cls):
        """The array at raw address ``ptr`` (what a graph node holds), over the pool's memory."""
        for arena in self.arenas:
            base = arena.ctypes.data
            if base <= ptr < base + arena.nbytes:
                return np.ndarray(shape, dtype, buffer=arena, offset=ptr - base, strides=strides).view(cls)
        raise AssertionError(f"address {ptr:#x} is not in the pool")


class FakeCupy(types.ModuleType):
    def __init__(self):
        super().__init__("cupy")
        self.calls = {"modules": [], "launches": [], "geometry": [], "syncs": 0, "asnumpy": 0, "gemms": 0,
                      "captured": 0, "allocs_in_capture": 0}
        self._emu = EmulatedBackend()
        self._pool = _Pool()
        self._tls = threading.local()  # per thread: the current-stream stack and the memory hooks
        self._streams_by_ptr = {}
        fake = self

        class ndarray(np.ndarray):
            """A device array: NumPy memory from the pool, seen as CuPy's ndarray."""

            def set(self, arr, stream=None):
                fake._refuse_in_capture("ndarray.set (a synchronous host-to-device copy)")
                np.copyto(self, np.asarray(arr).reshape(self.shape), casting="no")

            @property
            def __cuda_array_interface__(self):
                iface = self.__array_interface__
                return {"shape": iface["shape"], "typestr": iface["typestr"], "data": iface["data"],
                        "strides": iface["strides"], "version": 3}

        self.ndarray = ndarray
        for name in ("float64", "float32", "int64", "int32", "uint8", "uint32"):
            setattr(self, name, getattr(np, name))

        class MemoryHook:
            name = "MemoryHook"

            def __enter__(self):
                hooks = fake._hooks()
                assert self.name not in hooks
                hooks[self.name] = self
                return self

            def __exit__(self, *exc):
                del fake._hooks()[self.name]

            def malloc_postprocess(self, **kwargs):
                pass

        class RawKernel:
            def __init__(self, file, name):
                self.file, self.name = file, name

            def __call__(self, grid, block, args, *, shared_mem=0):
                """RawKernel.__call__(grid, block, args, *, shared_mem=0): 1-3 sizes each."""
                assert type(grid) is tuple and type(block) is tuple and type(args) is tuple
                assert 1 <= len(grid) <= 3 and 1 <= len(block) <= 3
                assert all(isinstance(g, int) and g > 0 for g in grid + block)
                assert isinstance(shared_mem, int) and shared_mem >= 0
                for a in args:  # device arrays or NumPy scalars, never Python numbers or host arrays
                    assert isinstance(a, ndarray) or type(a) in (np.float32, np.float64, np.int32, np.int64,
                                                                 np.uint32), a
                fake.calls["launches"].append(self.name)
                fake.calls["geometry"].append((grid, block, shared_mem))
                raw = tuple(fake._raw(a) for a in args)  # a graph node holds addresses, not arrays

                def run():
                    fake._emu.execute(self.file, self.name, pad3(grid), pad3(block),
                                      tuple(fake._array(r) for r in raw), shared_mem=shared_mem)

                fake._on_stream(run)

        class RawModule:
            def __init__(self, code=None, *, options=(), **kw):
                files = [f for f in K.kernel_files() if K.source(f) == code]
                assert len(files) == 1, "RawModule must get exactly one kernel file's code"
                assert isinstance(options, tuple) and options == K.NVRTC_OPTIONS
                self.file = files[0]
                fake.calls["modules"].append(self.file)

            def get_function(self, name):
                """Compiles and loads the module on first use, and the kernel (cuModuleGetFunction)."""
                fake._refuse_in_capture(f"loading kernel {name} (loading may need the device to wait)")
                assert K.signatures().get(name, ("",))[0] == self.file, f"{self.file} exports no kernel {name}"
                return RawKernel(self.file, name)

        class Graph:
            def __init__(self, nodes):
                self.nodes = nodes

            def launch(self, stream=None):
                for node in self.nodes:
                    node()

        class Stream:
            def __init__(self, null=False, non_blocking=False, ptds=False):
                self.ptr = 0 if null else id(self)
                self.non_blocking = non_blocking
                self._nodes, self.invalidated = None, False
                fake._streams_by_ptr[self.ptr] = self

            def __enter__(self):
                fake._stack().append(self)
                return self

            def __exit__(self, *exc):
                fake._stack().pop()

            def synchronize(self):
                if self._nodes is not None:
                    self.invalidated = True
                    raise RuntimeError(f"Stream.synchronize on a capturing stream ({UNSUPPORTED})")
                fake.calls["syncs"] += 1

            def begin_capture(self, mode=None):
                if self.ptr in (0, 1):
                    raise RuntimeError("cannot capture on the default (legacy) stream")
                assert self._nodes is None and self.non_blocking
                self._nodes, self.invalidated = [], False

            def end_capture(self):
                assert self._nodes is not None, "end_capture without begin_capture"
                nodes, self._nodes = self._nodes, None
                if self.invalidated:
                    raise RuntimeError(f"{INVALIDATED}: operation failed due to a previous error during capture")
                return Graph(nodes)

            def is_capturing(self):
                return self._nodes is not None

        class Device:
            id = 0
            compute_capability = "90"
            attributes = {"MultiProcessorCount": 3}

        self._null = Stream(null=True)
        runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda i: {"name": b"Stand-in"},
                                        runtimeGetVersion=lambda: 0, driverGetVersion=lambda: 0)  # 0: none here
        self.__version__ = "14 (stand-in)"
        self.allocator = "pool"

        def set_allocator(allocator=None):
            """cupy.cuda.set_allocator(None): plain cudaMalloc, no pool (what .ci/sanitize sets for memcheck)."""
            self.allocator = allocator

        self.cuda = types.SimpleNamespace(MemoryHook=MemoryHook, Device=Device, runtime=runtime, Stream=Stream,
                                          Graph=Graph, get_current_stream=self._current, set_allocator=set_allocator)
        self.RawModule = RawModule
        self.cublas = types.SimpleNamespace(gemm=self._cublas_gemm)

    # -- streams and capture -------------------------------------------------------------------

    def _stack(self) -> list:
        stack = getattr(self._tls, "streams", None)
        if stack is None:
            stack = self._tls.streams = []
        return stack

    def _hooks(self) -> dict:
        hooks = getattr(self._tls, "hooks", None)
        if hooks is None:
            hooks = self._tls.hooks = {}
        return hooks

    def _current(self):
        stack = self._stack()
        return stack[-1] if stack else self._null

    def _on_stream(self, work, stream=None) -> None:
        """Run work on ``stream`` (default: this thread's current one): recorded instead when it captures."""
        stream = self._current() if stream is None else stream
        if stream._nodes is not None:
            self.calls["captured"] += 1
            stream._nodes.append(work)
        else:
            work()

    def _refuse_in_capture(self, what: str) -> None:
        stream = self._current()
        if stream._nodes is not None:
            stream.invalidated = True
            raise RuntimeError(f"{what} is not allowed while the stream captures ({UNSUPPORTED})")

    # -- arrays --------------------------------------------------------------------------------

    def empty(self, shape, dtype):
        """An array from the pool (allowed during capture: its address is then baked into the graph)."""
        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self._current()._nodes is not None:
            self.calls["allocs_in_capture"] += 1
        block = self._pool.malloc(nbytes)
        for h in list(self._hooks().values()):
            h.malloc_postprocess(device_id=0, size=nbytes, mem_size=block.size, mem_ptr=block.ptr, pmem_id=0)
        return np.asarray(block)[:nbytes].view(dtype).reshape(shape).view(self.ndarray)

    def _copy(self, a, dtype=None):
        a = np.asarray(a, dtype=dtype)
        out = self.empty(a.shape, a.dtype)
        np.copyto(out, a, casting="no")
        return out

    def _raw(self, a):
        """What a graph node keeps of a launch argument: a device array's address and layout only."""
        if isinstance(a, self.ndarray):
            return ("ptr", a.__array_interface__["data"][0], a.shape, a.strides, a.dtype)
        return ("scalar", a)

    def _array(self, raw):
        if raw[0] == "scalar":
            return raw[1]
        _, ptr, shape, strides, dtype = raw
        return self._pool.view(ptr, shape, strides, dtype, self.ndarray)

    def asarray(self, a, dtype=None):
        self._refuse_in_capture("a synchronous host-to-device copy")
        return self._copy(a, dtype)

    def ascontiguousarray(self, a, dtype=None):
        if isinstance(a, self.ndarray) and a.flags.c_contiguous and (dtype is None or a.dtype == np.dtype(dtype)):
            return a
        return self._copy(np.ascontiguousarray(a), dtype)

    def asnumpy(self, a):
        self._refuse_in_capture("cupy.asnumpy (a synchronous device-to-host copy)")
        self.calls["asnumpy"] += 1
        return np.array(a).view(np.ndarray)

    # -- products ------------------------------------------------------------------------------

    def _cublas_gemm(self, transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
        """cupy.cublas.gemm (cupy/cublas.py): out = alpha op(a) @ op(b) + beta out, 2-D, one dtype;
        a C- or F-contiguous out is written in place (anything else would be copied)."""
        if self._current()._nodes is not None:
            raise NotImplementedError(CAPTURE_REFUSED)
        assert a.ndim == b.ndim == 2 and a.dtype == b.dtype
        assert transa in ("N", "T") and transb in ("N", "T")
        opa, opb = (a if transa == "N" else a.T), (b if transb == "N" else b.T)
        assert out is not None and out.shape == (opa.shape[0], opb.shape[1]) and out.dtype == a.dtype
        assert out.flags.c_contiguous or out.flags.f_contiguous, "gemm would copy out"
        for x in (a, b):  # operands it reads without a copy
            assert x.flags.c_contiguous or x.flags.f_contiguous
        self.calls["gemms"] += 1
        out[...] = alpha * (np.asarray(opa, np.float64) @ opb) + beta * out
        return out

    def matmul(self, a, b, out=None):
        """cupy.matmul writes straight into ``out`` only when it is C-contiguous, of the result's
        dtype and shares no memory with a or b (cupy/_core/_routines_linalg.pyx); otherwise it
        allocates a temporary and copies, which a training step must never make it do."""
        if self._current()._nodes is not None:
            raise NotImplementedError(CAPTURE_REFUSED)
        assert out is not None, "every GEMM of a step writes into a workspace"
        assert out.flags.c_contiguous and out.dtype == np.result_type(a, b)
        assert not np.shares_memory(out, a) and not np.shares_memory(out, b)
        self.calls["gemms"] += 1
        return np.matmul(a, b, out=out)


class FakePathfinder(types.ModuleType):
    """cuda.pathfinder's load_nvidia_dynamic_lib: loads the library (once; the answer is cached) and
    says where it found it."""

    class DynamicLibNotFoundError(RuntimeError):
        pass

    def __init__(self):
        super().__init__("cuda.pathfinder")
        self.loaded: dict[str, types.SimpleNamespace] = {}

    def load_nvidia_dynamic_lib(self, libname):
        if libname != "cublas":
            raise self.DynamicLibNotFoundError(f'Failure finding "{libname}"')
        return self.loaded.setdefault(libname, types.SimpleNamespace(
            abs_path=CUBLAS_PATH, was_already_loaded_from_elsewhere=False, found_via="site-packages"))


class FakeLibs(types.ModuleType):
    """cupy_backends.cuda.libs: each library's binding is imported on first attribute access, after
    cuda.pathfinder has loaded the library (cupy_backends/cuda/libs/__init__.py)."""

    def __init__(self, pathfinder: FakePathfinder):
        super().__init__("cupy_backends.cuda.libs")
        self._pathfinder = pathfinder

    def __getattr__(self, name):
        if name != "cublas":
            raise AttributeError(name)
        self._pathfinder.load_nvidia_dynamic_lib(name)
        return types.ModuleType("cupy_backends.cuda.libs.cublas")


def install(monkeypatch) -> FakeCupy:
    """CuPy, its lazy library loading and pip's libcublas replaced by the stand-ins above."""
    import sys

    fake = FakeCupy()
    fake.pathfinder = FakePathfinder()
    fake.cublas_lib = FakeCublasLib(fake)
    libs = FakeLibs(fake.pathfinder)
    modules = {"cupy": fake, "cupy.cublas": fake.cublas, "cupy_backends": types.ModuleType("cupy_backends"),
               "cupy_backends.cuda": types.ModuleType("cupy_backends.cuda"), "cupy_backends.cuda.libs": libs,
               "cuda": types.ModuleType("cuda"), "cuda.pathfinder": fake.pathfinder}
    modules["cuda"].pathfinder = fake.pathfinder
    modules["cupy_backends"].cuda = modules["cupy_backends.cuda"]
    modules["cupy_backends.cuda"].libs = libs
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    real_cdll = ctypes.CDLL

    def dlopen(name, *args, **kwargs):
        """The dynamic loader, for libcublas: the path pathfinder loaded opens; no other name does."""
        if os.path.basename(str(name)).startswith("libcublas"):
            if fake.pathfinder.loaded.get("cublas") and str(name) == CUBLAS_PATH:
                return fake.cublas_lib
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")
        return real_cdll(name, *args, **kwargs)

    monkeypatch.setattr(ctypes, "CDLL", dlopen)
    return fake


class FakeCublasLib:
    """libcublas's entry points that gpubp's binding calls, reading and writing host memory through the
    pointers it is given, column-major as cuBLAS is; calls on a capturing stream become graph nodes."""

    def __init__(self, fake: FakeCupy):
        self.fake = fake
        self.streams: dict[int, int] = {}  # handle -> the stream its calls run on
        self.workspaces: dict[int, bool] = {}  # handle -> whether a workspace of ours is set
        self.calls = []
        self.call_streams = []  # the stream each product ran on, in order

    def _handle(self, h) -> int:
        return h.value if isinstance(h, ctypes.c_void_p) else int(h)

    def cublasCreate_v2(self, handle_ref):
        handle_ref._obj.value = 0x1000 + len(self.streams)
        self.streams[handle_ref._obj.value] = 0
        return 0

    def cublasSetStream_v2(self, handle, stream):
        """Binds the handle to a stream and resets its workspace to cuBLAS's own pool (cuBLAS guide,
        cublasSetStream): a workspace of the caller's must be set again after it."""
        self.streams[self._handle(handle)] = stream.value or 0
        self.workspaces[self._handle(handle)] = False
        self.calls.append("setStream")
        return 0

    def cublasSetWorkspace_v2(self, handle, ptr, size):
        assert ptr.value and size.value >= 4 << 20
        self.workspaces[self._handle(handle)] = True
        self.calls.append("setWorkspace")
        return 0

    def cublasSetPointerMode_v2(self, handle, mode):
        assert mode == 0  # host: alpha and beta are read at the call (and baked into a graph)
        return 0

    def cublasSetMathMode(self, handle, mode):
        self.calls.append(("mathMode", mode))
        return 0

    @staticmethod
    def _column_major(ptr, rows, cols, ld, ctype, stride=0, batch=1):
        """``batch`` rows x cols column-major matrices at ptr, leading dimension ld, ``stride`` elements
        apart, as a NumPy view (batch, rows, cols)."""
        size = ctypes.sizeof(ctype)
        extent = stride * (batch - 1) + ld * (cols - 1) + rows
        base = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctype)), shape=(extent,))
        return np.lib.stride_tricks.as_strided(base, shape=(batch, rows, cols),
                                               strides=(size * stride, size, size * ld))

    def _gemm(self, ctype, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc,
              strides=(0, 0, 0), batch=1, name="gemm"):
        a_shape = (m, k) if transa == 0 else (k, m)
        b_shape = (k, n) if transb == 0 else (n, k)
        assert lda >= a_shape[0] and ldb >= b_shape[0] and ldc >= m and batch >= 1
        al, be = alpha._obj.value, beta._obj.value
        pa, pb, pc = A.value, B.value, C.value
        sa, sb, sc = strides

        def run():
            a = self._column_major(pa, *a_shape, lda, ctype, sa, batch)
            b = self._column_major(pb, *b_shape, ldb, ctype, sb, batch)
            c = self._column_major(pc, m, n, ldc, ctype, sc, batch)
            opa = a if transa == 0 else a.transpose(0, 2, 1)
            opb = b if transb == 0 else b.transpose(0, 2, 1)
            c[...] = al * (opa.astype(np.float64) @ opb) + (be * c if be else 0.0)

        self.calls.append(name if batch == 1 else (name, m, n, k, batch))
        stream = self.fake._streams_by_ptr[self.streams[self._handle(handle)]]
        self.call_streams.append(stream.ptr)
        # cuBLAS would take its workspace from its own pool inside the capture (cuBLAS guide, "CUDA Graphs Support")
        assert stream._nodes is None or self.workspaces[self._handle(handle)], "captured without a workspace"
        self.fake._on_stream(run, stream)  # on the handle's stream, whatever the thread's current one
        return 0

    def cublasSgemm_v2(self, *args):
        return self._gemm(ctypes.c_float, *args)

    def cublasDgemm_v2(self, *args):
        return self._gemm(ctypes.c_double, *args)

    def _strided_batched(self, ctype, handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
                         beta, C, ldc, strideC, batch):
        """cublas<t>gemmStridedBatched: for i < batch, C_i = alpha op(A_i) op(B_i) + beta C_i, the
        strides (long long: a ctypes c_longlong must carry them) between the matrices in elements."""
        strides = []
        for s in (strideA, strideB, strideC):
            assert isinstance(s, ctypes.c_longlong), "a stride passed as a plain int is a 32-bit C int"
            strides.append(s.value)
        return self._gemm(ctype, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc,
                          strides=tuple(strides), batch=batch, name="gemmStridedBatched")

    def cublasSgemmStridedBatched(self, *args):
        return self._strided_batched(ctypes.c_float, *args)

    def cublasDgemmStridedBatched(self, *args):
        return self._strided_batched(ctypes.c_double, *args)
