"""A stand-in for CuPy that keeps CuPy's documented conventions and runs kernels on the emulator, so
the CuPy backend's own Python runs here without a GPU (tests/test_cupy_glue.py, tests/test_graphs.py).

What it holds to, each from CuPy's documentation or source:
- RawModule(code=..., options=...) gets one kernel file's code and our NVRTC options; get_function
  by entry name; kernel(grid, block, args, *, shared_mem=0), 1-3 sizes each, args device arrays or
  NumPy scalars (cupy/_core/raw.pyx).
- Device arrays are a class of their own (host arrays are not device arrays), with .set(host)
  (ndarray.set) and __cuda_array_interface__; asnumpy copies back.
- cupy.matmul and cupy.cublas.gemm write into ``out`` in place only when it is contiguous and of the
  result's dtype (cupy/_core/_routines_linalg.pyx, cupy/cublas.py); the stand-in asserts it.
- Streams: Stream(non_blocking=True) is a context manager that makes it current; begin_capture()
  refuses the default stream, end_capture() returns a Graph, Graph.launch(stream=None) replays it
  (cupy/cuda/stream.pyx, graph.pyx). While a stream captures: kernels launched on it are recorded,
  not run; any cuBLAS call through CuPy raises NotImplementedError (cupy_backends/cuda/libs/
  cublas.pyx, setStream); synchronous copies and synchronizing raise; allocating from the pool is
  refused (its addresses would be baked into the graph: cupy#8318).
- FakeCublasLib plays libcublas for gpubp's own binding (gpubp/backends/cublas.py): the same entry
  points, column-major GEMM read through the pointers it is given (strided-batched too: matrix i
  of A at A + i*strideA, strides 64-bit), and its calls recorded into the graph when its
  handle's stream is capturing.
"""

from __future__ import annotations

import ctypes
import types

import numpy as np

from gpubp.backends import kernel as K
from gpubp.backends.emulated import EmulatedBackend

CAPTURE_REFUSED = "calling cuBLAS API during stream capture is currently unsupported"


def pad3(dims):
    return dims + (1,) * (3 - len(dims))


class FakeCupy(types.ModuleType):
    def __init__(self):
        super().__init__("cupy")
        self.calls = {"modules": [], "launches": [], "geometry": [], "syncs": 0, "asnumpy": 0, "gemms": 0,
                      "captured": 0}
        self._emu = EmulatedBackend()
        self._hooks = {}
        self.capturing = None  # the stream that captures now
        fake = self

        class ndarray(np.ndarray):
            """A device array: NumPy memory, seen as CuPy's ndarray."""

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
                assert self.name not in fake._hooks
                fake._hooks[self.name] = self
                return self

            def __exit__(self, *exc):
                del fake._hooks[self.name]

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
                fake._on_stream(lambda: fake._emu.execute(self.file, self.name, pad3(grid), pad3(block), args,
                                                          shared_mem=shared_mem))

        class RawModule:
            def __init__(self, code=None, *, options=(), **kw):
                files = [f for f in K.kernel_files() if K.source(f) == code]
                assert len(files) == 1, "RawModule must get exactly one kernel file's code"
                assert isinstance(options, tuple) and options == K.NVRTC_OPTIONS
                self.file = files[0]
                fake.calls["modules"].append(self.file)

            def get_function(self, name):
                assert name in K.parse_signatures(K.source(self.file))
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
                self._nodes = None

            def __enter__(self):
                fake._streams.append(self)
                return self

            def __exit__(self, *exc):
                fake._streams.pop()

            def synchronize(self):
                fake._refuse_in_capture("Stream.synchronize")
                fake.calls["syncs"] += 1

            def begin_capture(self, mode=None):
                if self.ptr in (0, 1):
                    raise RuntimeError("cannot capture on the default (legacy) stream")
                assert fake.capturing is None and self.non_blocking
                self._nodes, fake.capturing = [], self

            def end_capture(self):
                assert fake.capturing is self
                nodes, self._nodes, fake.capturing = self._nodes, None, None
                return Graph(nodes)

            def is_capturing(self):
                return fake.capturing is self

        class Device:
            id = 0
            compute_capability = "90"
            attributes = {"MultiProcessorCount": 3}

        self._null = Stream(null=True)
        self._streams = []
        runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda i: {"name": b"Stand-in"})
        self.cuda = types.SimpleNamespace(MemoryHook=MemoryHook, Device=Device, runtime=runtime, Stream=Stream,
                                          Graph=Graph, get_current_stream=self._current)
        self.RawModule = RawModule
        self.cublas = types.SimpleNamespace(gemm=self._cublas_gemm)

    # -- streams and capture -------------------------------------------------------------------

    def _current(self):
        return self._streams[-1] if self._streams else self._null

    def _on_stream(self, work) -> None:
        """Run work on the current stream: recorded instead when that stream captures."""
        stream = self._current()
        if self.capturing is stream:
            self.calls["captured"] += 1
            stream._nodes.append(work)
        else:
            work()

    def _refuse_in_capture(self, what: str) -> None:
        if self.capturing is not None:
            raise RuntimeError(f"{what} is not allowed while a stream captures (cudaErrorStreamCaptureUnsupported)")

    # -- arrays --------------------------------------------------------------------------------

    def _device(self, a):
        return np.asarray(a).view(self.ndarray)

    def empty(self, shape, dtype):
        self._refuse_in_capture("allocating from the memory pool")
        for h in list(self._hooks.values()):
            h.malloc_postprocess(device_id=0, size=0, mem_size=0, mem_ptr=0, pmem_id=0)
        return np.empty(shape, dtype).view(self.ndarray)

    def asarray(self, a, dtype=None):
        self._refuse_in_capture("a synchronous host-to-device copy")
        return self._device(np.array(a, dtype=dtype))

    def ascontiguousarray(self, a, dtype=None):
        return self._device(np.ascontiguousarray(a, dtype=dtype))

    def asnumpy(self, a):
        self._refuse_in_capture("cupy.asnumpy (a synchronous device-to-host copy)")
        self.calls["asnumpy"] += 1
        return np.array(a).view(np.ndarray)

    # -- products ------------------------------------------------------------------------------

    def _cublas_gemm(self, transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
        """cupy.cublas.gemm (cupy/cublas.py): out = alpha op(a) @ op(b) + beta out, 2-D, one dtype;
        a C- or F-contiguous out is written in place (anything else would be copied)."""
        if self.capturing is not None:
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
        if self.capturing is not None:
            raise NotImplementedError(CAPTURE_REFUSED)
        assert out is not None, "every GEMM of a step writes into a workspace"
        assert out.flags.c_contiguous and out.dtype == np.result_type(a, b)
        assert not np.shares_memory(out, a) and not np.shares_memory(out, b)
        self.calls["gemms"] += 1
        return np.matmul(a, b, out=out)


class FakeCublasLib:
    """libcublas's entry points that gpubp's binding calls, reading and writing host memory through the
    pointers it is given, column-major as cuBLAS is; calls on a capturing stream become graph nodes."""

    def __init__(self, fake: FakeCupy):
        self.fake = fake
        self.streams: dict[int, int] = {}
        self.calls = []

    def _handle(self, h) -> int:
        return h.value if isinstance(h, ctypes.c_void_p) else int(h)

    def cublasCreate_v2(self, handle_ref):
        handle_ref._obj.value = 0x1000 + len(self.streams)
        self.streams[handle_ref._obj.value] = 0
        return 0

    def cublasSetStream_v2(self, handle, stream):
        self.streams[self._handle(handle)] = stream.value or 0
        self.calls.append("setStream")
        return 0

    def cublasSetWorkspace_v2(self, handle, ptr, size):
        assert ptr.value and size.value >= 4 << 20
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
        capture = self.fake.capturing
        if capture is not None and capture.ptr == self.streams[self._handle(handle)]:
            self.fake.calls["captured"] += 1
            capture._nodes.append(run)
        else:
            run()
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
