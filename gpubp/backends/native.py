"""The native backend: our kernels compiled for this CPU, and an epoch replayed as one call.

The emulated backend proves the CUDA sources on the CPU by running them as a GPU would, block
by block, thread by thread. This backend compiles the same sources with the same runtime header
(gpubp/backends/emulator_runtime.h) for speed instead:

* with the host's optimisation flags (``-O3 -march=native``, or $GPUBP_NATIVE_ARCH's target;
  no ``-march`` where the compiler refuses it), into libraries cached under ~/.cache/gpubp/native by the hash of
  the translation unit, the flags and this CPU's model and features;
* a kernel that does not cooperate (the elementwise ones: bias and activation, deltas, SGD and
  momentum, the gather) runs as ONE host thread over its whole range: CUDA's grid-stride loop
  with a 1 x 1 grid is a plain loop; a kernel that cooperates (Adam's step counter, the
  evaluation's reductions) keeps its CUDA geometry and runs as the emulator runs it;
* the layer kernels of the own route (and the gather) come from gpubp/backends/native_layer.h:
  each unit here defines GPUBP_NATIVE, under which the kernel files leave their layer and gather
  export macros to that header, so the same entry points (names, parameters) call its host code,
  with the same functors; that code is register-blocked for the CPU's vector unit and
  split between the cores by OpenMP when a product is large (-fopenmp where the compiler has
  it; OMP_NUM_THREADS as usual), so the own route runs here with no BLAS call at all; the blas
  route is NumPy's, as on the numpy backend;
* a graph is a list of launches recorded during capture (entry point, geometry, the pointers
  to each argument) and replayed by one C loop: an epoch of the own route is one call from
  Python, as it is one graph launch on a GPU.

By default a network here takes the own route and trains its epochs as graphs. Results are not
bit-identical to the numpy backend's (the products sum in another order); the tests hold them
to the same tolerances as the GPU's (float64 1e-10, float32 1e-4 relative over training runs).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..cache import cache_root
from ..errors import BackendUnavailable, GpubpError
from . import emulated as E
from . import kernel as K

LAYER_HEADER = Path(__file__).with_name("native_layer.h")
CXX_FLAGS = ("-std=c++17", "-O3", "-ffp-contract=fast", "-shared", "-fPIC", "-fvisibility=hidden")
ARCH_FLAGS = ("-march=native",)
OPENMP_FLAGS = ("-fopenmp",)
ALIGN = 64  # bytes: a cache line, and an AVX-512 vector
# native_layer.h's threshold: products of at least this many multiply-adds run on every core
PARALLEL_MACS = 1 << int(re.search(r"PARALLEL_MACS = 1 << (\d+);", LAYER_HEADER.read_text()).group(1))
# The first line of a kernel file that exports: native_layer.h goes in just before it, after every
# template the exports call (in the file and in the headers it includes).
_FIRST_EXPORT = re.compile(r"^(?:GPUBP_EXPORT|GPUBP_ACTIVATION|GPUBP_OUTPUT_KERNEL|GPUBP_LAYER_KERNELS"
                           r"|GPUBP_UPDATE_KERNELS|GPUBP_GATHER_KERNEL)\s*\(", re.MULTILINE)
# The switch at the top of this backend's translation units: under it the kernel files leave their layer
# and gather export macros to native_layer.h, which defines them over its host code.
NATIVE_SWITCH = "#define GPUBP_NATIVE 1\n"

# The replay loop: every recorded launch, in order, through the entry points' common signature.
REPLAY_SOURCE = r"""
#ifdef _OPENMP
#include <omp.h>
#endif
typedef int (*gpubp_entry)(unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned long long,
                           unsigned long long, void**);
struct gpubp_launch {
    gpubp_entry entry;
    unsigned grid[3], block[3];
    unsigned long long shared_bytes, seed;
    void** params;
};
// Runs launches[0..n) in order; returns -1, or the index of the first that failed.
extern "C" __attribute__((visibility("default"))) long long gpubp_native_replay(const gpubp_launch* launches,
                                                                               long long n) {
    for (long long i = 0; i < n; ++i) {
        const gpubp_launch& l = launches[i];
        if (l.entry(l.grid[0], l.grid[1], l.grid[2], l.block[0], l.block[1], l.block[2], l.shared_bytes, l.seed,
                    l.params))
            return i;
    }
    return -1;
}
// The OpenMP threads of the parallel regions the calling thread enters from now on (a per-thread
// setting: each of a sweep's worker threads takes its share of the cores).
extern "C" __attribute__((visibility("default"))) void gpubp_native_use_cores(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}
"""


class Launch(ctypes.Structure):
    _fields_ = [("entry", ctypes.c_void_p), ("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared_bytes", ctypes.c_ulonglong), ("seed", ctypes.c_ulonglong),
                ("params", ctypes.POINTER(ctypes.c_void_p))]


def native_code(file: str) -> str:
    """One kernel file's code for this backend: native_layer.h inserted before its first export."""
    code = K.source(file)
    first = _FIRST_EXPORT.search(code)
    if first is None:
        raise GpubpError(f"{file} exports no kernel")
    line = code.count("\n", 0, first.start()) + 1  # compiler messages keep counting the file's lines
    return (f'{code[:first.start()]}#line 1 "{LAYER_HEADER.name}"\n{LAYER_HEADER.read_text()}\n'
            f'#line {line} "{Path(file).stem}.cu"\n{code[first.start():]}')


def translation_unit(file: str) -> str:
    """The host translation unit: the emulator's runtime, the code, and an entry per kernel; the
    kernels that never cooperate in this code (native_layer.h's layer kernels among them) run
    serially, the others as the emulator runs them."""
    code = native_code(file)
    together = E.cooperative_kernels(code)
    entries = "".join(f"GPUBP_EMU_ENTRY({n}, {'true' if n in together else 'false'})\n"
                      for n in K.parse_signatures(code))
    return (f'{E.runtime_header()}\n{NATIVE_SWITCH}#line 1 "{Path(file).stem}.cu"\n{E.emulator_source(code)}\n'
            f'{entries}')


@functools.cache
def cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and features (a cache shared between
    machines must not hand one CPU a library built for another)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        keep = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))][:2]
        return "\n".join(keep) or platform.processor()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def cache_dir() -> Path:
    return cache_root() / "native"


def arch_flags(cxx: str) -> tuple[str, ...]:
    """The -march the libraries are built for: $GPUBP_NATIVE_ARCH when set (``x86-64-v3`` for any
    AVX2 machine, ``x86-64`` for SSE2 only: portable libraries, and the narrower vector paths
    tested on a wider CPU), else -march=native where the compiler takes it, else none."""
    arch = os.environ.get("GPUBP_NATIVE_ARCH", "").strip()
    return _probe_arch(cxx, f"-march={arch}" if arch else ARCH_FLAGS[0], bool(arch))


@functools.cache
def _probe_arch(cxx: str, flag: str, asked: bool) -> tuple[str, ...]:
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "probe.cpp", Path(tmp) / "probe"
        src.write_text(ARCH_PROBE)
        res = subprocess.run([cxx, flag, "-o", str(exe), str(src)], capture_output=True, text=True)
        runs = res.returncode == 0 and subprocess.run([str(exe)], capture_output=True).returncode == 0
    if res.returncode == 0 and runs:
        return (flag,)
    if not asked:
        return ()
    if res.returncode == 0:  # it compiled, for instructions this CPU lacks: a library would die of SIGILL
        raise BackendUnavailable(f"GPUBP_NATIVE_ARCH: {flag} uses instructions this CPU does not have: name an "
                                 f"older architecture (e.g. x86-64-v3, x86-64), or unset it for -march=native")
    lines = res.stderr.strip().splitlines() or ["no message"]
    why = next((line for line in lines if "error" in line), lines[0])
    raise BackendUnavailable(f"GPUBP_NATIVE_ARCH: {cxx} refuses {flag} ({why}): "
                             f"name an architecture it knows (e.g. x86-64-v3), or unset it for -march=native")


# Exits 1 when the target's vector extensions, as the compiler sees them, are more than this CPU has.
ARCH_PROBE = r"""
int main() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
#ifdef __AVX512FP16__
    if (!__builtin_cpu_supports("avx512fp16")) return 1;
#endif
#ifdef __AVX512F__
    if (!__builtin_cpu_supports("avx512f")) return 1;
#endif
#ifdef __AVX2__
    if (!__builtin_cpu_supports("avx2")) return 1;
#endif
#ifdef __FMA__
    if (!__builtin_cpu_supports("fma")) return 1;
#endif
#ifdef __AVX__
    if (!__builtin_cpu_supports("avx")) return 1;
#endif
#endif
    return 0;
}
"""


@functools.cache
def thread_flags(cxx: str) -> tuple[str, ...]:
    """-fopenmp where the compiler has it and its runtime loads (the layer kernels' large products
    then use every core), else nothing (they run on the calling thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = Path(tmp) / "probe.cpp", Path(tmp) / "probe.so"
        src.write_text("#include <omp.h>\nextern \"C\" int f() { return omp_get_max_threads(); }\n")
        res = subprocess.run([cxx, *OPENMP_FLAGS, "-shared", "-fPIC", "-o", str(lib), str(src)], capture_output=True)
        if res.returncode != 0:
            return ()
        try:
            ctypes.CDLL(str(lib))
        except OSError:  # the OpenMP runtime is not where the loader looks
            return ()
    return OPENMP_FLAGS


def build_unit(unit: str, cxx: str, stem: str) -> ctypes.CDLL:
    """Compile (or reuse) one translation unit with this backend's flags and load it."""
    flags = (*CXX_FLAGS, *arch_flags(cxx), *thread_flags(cxx))
    return E.compile_unit(unit, cxx, flags, cache_dir(), stem, f"{stem} for the native backend",
                          key_extra=(cpu_identity(),))


def probe() -> tuple[bool, str]:
    try:
        return True, f"our kernels compile for this CPU with {E.find_compiler()}"
    except BackendUnavailable as e:
        return False, str(e)


class NativeGraph:
    """The launches recorded by ``capture()``, replayed in order by one call into C."""

    def __init__(self, be) -> None:
        self.be, self.kernels, self.launches, self._keep, self._table = be, [], [], [], None
        self._pointers = {}  # each array's address holder, shared by its launches (E.pack_args)

    def add(self, kernel: E.Kernel, grid, block, shared_mem: int, args) -> None:
        holders, argv = E.pack_args(args, self._pointers)
        self._keep += [holders, argv, args]  # the arrays too: the graph holds their addresses
        self.kernels.append(kernel)
        self.launches.append(Launch(kernel.address, (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block),
                                    shared_mem, 0, argv))

    def launch(self) -> None:
        be = self.be
        be._count("graph_launches")
        if self._table is None:
            self._table = (Launch * len(self.launches))(*self.launches)
        # no lock: a launch's state is per OS thread (emulator_runtime.h), and ctypes lets go of the
        # GIL, so networks trained in threads replay their epochs on as many cores
        failed = be._replay(self._table, len(self.launches))
        if failed >= 0:
            raise self.kernels[failed].error()


class NativeBackend(E.EmulatedBackend):
    """NumPy arrays, aligned to 64 bytes; our kernels compiled for this CPU (see the module's docstring)."""

    name = "native"
    sm_count = 1  # cooperating kernels get grids of up to BLOCKS_PER_SM blocks
    graphs_by_default = True  # and so the own route by default (HostArrays.preferred_gemm)
    gathers_per_step = True  # a CPU's epoch, as on the numpy backend (the emulated one runs a GPU's)

    def __init__(self) -> None:
        super().__init__()
        flags = " ".join(arch_flags(self.compiler)) or "no -march"
        if thread_flags(self.compiler):
            flags += " -fopenmp"
        self.device = f"CPU ({os.cpu_count()} cores), our kernels compiled by {Path(self.compiler).name} {flags}"
        lib = build_unit(REPLAY_SOURCE, self.compiler, "replay")
        self._replay = lib.gpubp_native_replay
        self._replay.argtypes = (ctypes.POINTER(Launch), ctypes.c_longlong)
        self._replay.restype = ctypes.c_longlong
        self._use_cores = lib.gpubp_native_use_cores
        self._use_cores.argtypes, self._use_cores.restype = (ctypes.c_int,), None

    def use_cores(self, n: int) -> None:
        """The layer kernels' large products (native_layer.h) that this thread launches run on at most
        n OpenMP threads (two sweep threads that each opened a team of every core would put four
        threads on two cores)."""
        self._use_cores(max(1, int(n)))

    def load_kernel(self, file: str, name: str) -> E.Kernel:
        fn = self._entries.get(name)
        if fn is None:
            if file not in self._libs:
                self._libs[file] = build_unit(translation_unit(file), self.compiler, Path(file).stem)
            fn = self._entries[name] = E.Kernel(self._libs[file], name)
        return fn

    def geometry(self, file: str, name: str, n: int):
        """A 1-D launch: one host thread over all n items, unless the kernel cooperates."""
        if self._cooperates(file, name):
            return super().geometry(file, name, n)
        return (1, 1, 1), (1, 1, 1)

    def layer_launcher(self, name: str, grid, block):
        """The host launcher of layer kernel entry ``name``: native_layer.h's code computes the
        whole product in one call (the tile and grid are the GPU's business), so one 1 x 1 launch."""
        return lambda *args: self.launch_grid(name, (1, 1, 1), (1, 1, 1), 0, *args)

    @staticmethod
    @functools.cache
    def _cooperates(file: str, name: str) -> bool:
        return name in E.cooperative_kernels(native_code(file))

    def execute(self, file, name, grid, block, args, shared_mem=0) -> None:
        kernel = self.load_kernel(file, name)  # loaded before a graph records it
        if self.capturing:
            self._graph.add(kernel, grid, block, shared_mem, args)
        else:
            kernel(grid, block, args, shared_mem, 0)

    # -----------------------------------------------------------------------------------------
    # Graphs: the launches of an epoch, replayed by one C call
    # -----------------------------------------------------------------------------------------

    def graph_support(self, gemm: str) -> tuple[bool, str]:
        if gemm != "own":
            return False, ("the native backend replays its own kernels only, and the blas route's products "
                           "are NumPy's: use the own route (gemm='own')")
        return True, "the native backend records an epoch's launches and replays them in one call"

    def capture(self):
        return self._capturing_into(NativeGraph(self))

    def matmul(self, a, b, out, tf32=False):
        self._refuse_in_capture("a BLAS product")
        return super().matmul(a, b, out, tf32)

    def gemm(self, a, b, out, alpha, beta, tf32=False) -> None:
        self._refuse_in_capture("a BLAS product")
        super().gemm(a, b, out, alpha, beta, tf32)

    def _refuse_in_capture(self, what: str) -> None:
        if self.capturing:
            raise GpubpError(f"{what} during graph capture: a native graph replays kernel launches only, so "
                             f"the replay would not do it")

    def empty(self, shape, dtype):
        """An uninitialised array whose data starts on a 64-byte boundary (NumPy gives 16)."""
        self._refuse_in_capture("an allocation")
        self._count("allocs")
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        raw = np.empty(n + ALIGN, dtype=np.uint8)
        start = -raw.ctypes.data % ALIGN
        return raw[start:start + n].view(dtype).reshape(shape)


BACKEND = NativeBackend
