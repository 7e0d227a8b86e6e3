"""The emulated backend: our CUDA sources, compiled by the host C++ compiler, run on the CPU.

Each kernel file's code (the same string CuPy compiles) becomes one host translation unit:
gpubp/emulator_runtime.h (what CUDA would provide: blockIdx and friends, __syncthreads, warp
shuffles, atomics, checked shared memory, and the launchers), then the code with its
``__shared__`` declarations rewritten into the header's bounds-checked types, then one entry
per kernel. A kernel that never cooperates (found by following its entry point through the
functions it calls: ``cooperative_kernels``) runs serially, thread after thread; any other runs
each block's threads as fibers that meet at barriers, in a seeded shuffled order (the header
says how and why). Arrays are NumPy; arguments are passed exactly like cuLaunchKernel's
kernelParams (an array of pointers to each argument), so the argument order and types the
Python side packs are checked by the compiled signature. Builds are cached under
~/.cache/gpubp/emulated by the hash of the whole translation unit, runtime header included.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..cache import cache_root
from ..errors import BackendUnavailable, EmulatorError, GpubpError
from . import kernel as K
from .host import HostArrays

RUNTIME_HEADER = Path(__file__).with_name("emulator_runtime.h")  # the shim, scheduler and launchers
CXX_FLAGS = ("-std=c++17", "-O2", "-shared", "-fPIC", "-fno-fast-math", "-fvisibility=hidden")
EMULATED_SMS = 2  # a small "GPU": grids are capped at 2*BLOCKS_PER_SM blocks, so grid-stride loops loop
SEED_ENV = "GPUBP_EMULATOR_SEED"  # the default seed of the fibers' shuffled order


def find_compiler() -> str:
    """$CXX, else c++, g++ or clang++ on PATH; BackendUnavailable if there is none."""
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    raise BackendUnavailable("the emulated backend needs a C++ compiler: install g++ or set CXX")


# ---------------------------------------------------------------------------------------------
# The source transform and the translation unit
# ---------------------------------------------------------------------------------------------

# Comments and literals, blanked before any search so that text inside them is never rewritten.
_LEXEMES = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.DOTALL)
_SHARED_DECL = re.compile(r"(?:\b(?:extern|static|volatile)\s+)*\b__shared__\b[^;{}]*;")
_DECLARATOR = re.compile(r"\s*(.*?)\s*\b(\w+)\s*((?:\[[^\]]*\]\s*)*)", re.DOTALL)
_COOPERATION = re.compile(r"\b(?:__syncthreads\w*|__shared__|__syncwarp|__shfl\w*|atomic[A-Z]\w*)\b")


def _blank(code: str) -> str:
    """``code`` with comments and literals turned to spaces (newlines kept): same length, same lines."""
    return _LEXEMES.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), code)


def cooperative(code: str) -> bool:
    """Whether ``code`` names anything a serial walk of the threads cannot honour."""
    return _COOPERATION.search(_blank(code)) is not None


_FUNCTION = re.compile(r"\b(\w+)\s*\([^;{}()]*(?:\([^;{}()]*\)[^;{}()]*)*\)\s*(?:const\s*)?\{")
_NOT_FUNCTIONS = {"if", "for", "while", "switch", "return", "sizeof", "constexpr"}  # `if constexpr (...) {`


def _bodies(text: str) -> dict[str, str]:
    """{function name: the text of its bodies} for every function defined in ``text`` (overloads and
    template instances merged), found by matching braces."""
    bodies: dict[str, str] = {}
    for m in _FUNCTION.finditer(text):
        if m.group(1) in _NOT_FUNCTIONS:
            continue
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        bodies[m.group(1)] = bodies.get(m.group(1), "") + text[m.end():i]
    return bodies


def cooperative_kernels(code: str) -> set[str]:
    """The kernels in ``code`` that reach a barrier, shared memory, a warp call or an atomic through
    any chain of calls: they run as fibers; the others keep the fast serial walk (one activation
    file holds both an elementwise kernel and a tiled one)."""
    return set(_cooperative_kernels(code))  # a copy: the cached set is never handed out


@functools.lru_cache(maxsize=256)  # every backend instance builds (or finds) the same few dozen units
def _cooperative_kernels(code: str) -> frozenset[str]:
    text = K.expand_macros(_blank(code))
    bodies = _bodies(text)
    memo: dict[str, bool] = {}

    def coop(name: str, seen: frozenset) -> bool:
        if name not in memo:
            body = bodies.get(name, "")
            memo[name] = bool(_COOPERATION.search(body)) or any(
                coop(callee, seen | {name}) for callee in set(re.findall(r"\b\w+\b", body)) & bodies.keys()
                if callee not in seen and callee != name)
        return memo[name]

    return frozenset(name for name in K.parse_signatures(code) if coop(name, frozenset()))


def _split_declarators(text: str) -> list[str]:
    """``float a[4], *b`` -> ['float a[4]', ' *b']: commas inside (), [] or <> do not split."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([<"
        depth -= ch in ")]>"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def _rewrite_shared(statement: str) -> str | None:
    """One ``__shared__`` declaration for the emulator; None if it cannot be read (left as it is).

    ``__shared__ T a[N][M];`` -> ``static gpubp_emu::shared_array<T [N][M]> a{"a"};`` (checked);
    ``extern __shared__ T s[];`` -> ``static const gpubp_emu::dynamic_shared<T> s{"s"};`` (the
    launch's dynamic bytes, checked); ``__shared__ T x;`` -> ``static T x;``. Statics are one
    object for all threads, which is shared memory because blocks run one after another.
    """
    extern = re.search(r"\bextern\b", statement) is not None
    body = re.sub(r"\b(?:extern|static|__shared__)\b|__align__\s*\([^)]*\)", " ", statement.rstrip().rstrip(";"))
    body = " ".join(body.split())
    pieces = _split_declarators(body)
    first = _DECLARATOR.fullmatch(pieces[0])
    if not first or not first.group(1):
        return None
    base = first.group(1).rstrip("*& \t\n")
    out = []
    for i, piece in enumerate(pieces):
        m = first if i == 0 else _DECLARATOR.fullmatch(piece)
        if not m:
            return None
        stars = (m.group(1)[len(base):] if i == 0 else m.group(1)).strip()
        ctype, name, dims = f"{base}{stars}", m.group(2), "".join(m.group(3).split())
        if extern and dims == "[]":
            out.append(f'static const gpubp_emu::dynamic_shared<{ctype}> {name}{{"{name}"}};')
        elif dims and "[]" not in dims:
            out.append(f'static gpubp_emu::shared_array<{ctype} {dims}> {name}{{"{name}"}};')
        elif not dims and not extern:
            out.append(f"static {ctype} {name};")
        else:
            return None
    return " ".join(out)


def emulator_source(code: str) -> str:
    """``code`` with every ``__shared__`` declaration rewritten for the emulator, lines kept in place."""
    blank = _blank(code)
    out, last = [], 0
    for m in _SHARED_DECL.finditer(blank):
        line_start = blank.rfind("\n", 0, m.start()) + 1
        new = None if blank[line_start:m.start()].lstrip().startswith("#") else _rewrite_shared(m.group())
        if new is not None:
            out += [code[last:m.start()], new, "\n" * m.group().count("\n")]
            last = m.end()
    return "".join(out) + code[last:]


@functools.cache
def runtime_header() -> str:
    return RUNTIME_HEADER.read_text()


def translation_unit(code: str, stem: str) -> str:
    """The host translation unit for CUDA ``code``: runtime header + rewritten code + one entry per kernel.

    ``#line`` makes compiler messages and __syncthreads line numbers count lines of ``code``.
    """
    together = cooperative_kernels(code)
    entries = "".join(f"GPUBP_EMU_ENTRY({n}, {'true' if n in together else 'false'})\n"
                      for n in K.parse_signatures(code))
    return f'{runtime_header()}\n#line 1 "{stem}.cu"\n{emulator_source(code)}\n{entries}'


def emulator_code(file: str) -> str:
    """The host translation unit for one kernel file."""
    return translation_unit(K.source(file), Path(file).stem)


def cache_dir() -> Path:
    return cache_root() / "emulated"


def build_code(code: str, cxx: str, stem: str = "kernels") -> ctypes.CDLL:
    """Compile (or reuse) CUDA ``code`` for the emulator with compiler ``cxx`` and load it.

    ``stem`` names the library and the source in compiler messages. Run a kernel with ``Kernel``.
    """
    return compile_unit(translation_unit(code, stem), cxx, CXX_FLAGS, cache_dir(), stem, f"{stem}.cu for the emulator")


def compile_unit(unit: str, cxx: str, flags, where: Path, stem: str, what: str, key_extra=()) -> ctypes.CDLL:
    """Compile (or reuse) a C++ translation unit into a shared library under ``where``, named by
    ``stem`` and the hash of the compiler, the flags, ``key_extra`` and the code, and load it;
    ``what`` names it in the one-line error a failed compile raises."""
    key = hashlib.sha256("\0".join((cxx, *flags, *key_extra, unit)).encode()).hexdigest()[:24]
    out = where / f"{stem}-{key}.so"
    if not out.exists():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with _building(out):
                if not out.exists():  # built by another process while this one waited
                    _compile(unit, cxx, flags, out, stem, what)
        except OSError as e:  # a read-only or full cache, or a file where its directory should be
            raise BackendUnavailable(f"cannot write the kernel cache {where} ({e.strerror or e}): set "
                                     f"XDG_CACHE_HOME to a writable directory with free space") from None
    return ctypes.CDLL(str(out))


@contextlib.contextmanager
def _building(out: Path):
    """Held while ``out`` is built: processes sharing the cache (parallel test workers, sweeps) that
    need the same library wait for one build instead of each compiling it (a lock on ``out``.lock,
    released by the system if the builder dies)."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: each process builds, and os.replace keeps the result whole
        yield
        return
    with open(out.with_name(out.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _compile(unit: str, cxx: str, flags, out: Path, stem: str, what: str) -> None:
    """``unit`` compiled into the library ``out``, which appears whole or not at all."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / (stem + ".cpp")
        src.write_text(unit)
        lib = Path(tmp) / out.name
        res = subprocess.run([cxx, *flags, "-o", str(lib), str(src)], capture_output=True, text=True)
        if res.returncode != 0:
            first = next((line for line in res.stderr.splitlines() if "error" in line), res.stderr.strip())
            raise BackendUnavailable(f"{cxx} could not compile {what}: {first}")
        os.replace(lib, out)  # atomic: a concurrent build never sees half a library


def build(file: str, cxx: str) -> ctypes.CDLL:
    """Compile (or reuse) the shared library for one kernel file with compiler ``cxx`` and load it."""
    return build_code(K.source(file), cxx, Path(file).stem)


# ---------------------------------------------------------------------------------------------
# Launching
# ---------------------------------------------------------------------------------------------

_CTYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
           np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
           np.dtype(np.uint32): ctypes.c_uint32, np.dtype(np.uint64): ctypes.c_uint64}
_ENTRY_ARGTYPES = (*[ctypes.c_uint] * 6, ctypes.c_ulonglong, ctypes.c_ulonglong, ctypes.POINTER(ctypes.c_void_p))
# A library's runtime state (fibers, the running kernel, the error text) is global, and ctypes
# lets go of the GIL during a call: one launch at a time.
LAUNCH_LOCK = threading.Lock()


def pack_args(args, pointers: dict | None = None) -> tuple[list, ctypes.Array]:
    """cuLaunchKernel's kernelParams for ``args``: the values' holders (keep them alive while the
    pointers are used) and the array of one pointer per argument, pointing at its value.

    pointers: a graph's {id(array): (array, its address's holder)}, so that the launches of one
    capture share one holder an array (an address never changes; the entry keeps the array, and so
    its id, alive) instead of asking NumPy for it at each launch (2 us an array). None: this launch's own."""
    pointers = {} if pointers is None else pointers
    holders = []
    for a in args:
        if isinstance(a, np.ndarray):
            kept = pointers.get(id(a))
            if kept is None or kept[0] is not a:
                kept = pointers[id(a)] = (a, ctypes.c_void_p(a.ctypes.data))
            holders.append(kept[1])
        else:
            holders.append(_CTYPES[a.dtype](a))
    return holders, (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])


class Kernel:
    """One kernel of a built library, called like a CUDA launch.

    ``kernel(grid, block, args, shared_mem=0, seed=0)``: grid and block are (x, y, z); args are
    arrays (passed by pointer) and NumPy scalars (passed by value as their dtype), in the
    kernel's order; shared_mem is the dynamic shared-memory bytes per block; seed picks the
    fibers' shuffled order. A broken rule inside the kernel raises EmulatorError; the library
    stays usable.
    """

    def __init__(self, lib: ctypes.CDLL, name: str) -> None:
        self.name = name
        try:
            self.entry = getattr(lib, f"gpubp_emu_{name}")  # the host entry point, with CUDA's launch arguments
        except AttributeError:
            raise GpubpError(f"the emulator library has no kernel named {name!r}") from None
        self.entry.argtypes = _ENTRY_ARGTYPES
        self.entry.restype = ctypes.c_int
        self.address = ctypes.cast(self.entry, ctypes.c_void_p)  # for a native graph's table
        self._error = lib.gpubp_emu_error
        self._error.restype = ctypes.c_char_p

    def error(self) -> EmulatorError:
        """The library's account of the broken rule that failed its last launch."""
        return EmulatorError(self._error().decode(errors="replace"))

    def __call__(self, grid, block, args, shared_mem: int = 0, seed: int = 0) -> None:
        _holders, argv = pack_args(args)  # the values argv points at, alive until the call returns
        with LAUNCH_LOCK:
            if self.entry(*grid, *block, shared_mem, seed & 0xFFFFFFFFFFFFFFFF, argv):
                raise self.error()


def _default_seed() -> int:
    text = os.environ.get(SEED_ENV, "0")
    try:
        return int(text, 0)
    except ValueError:
        raise GpubpError(f"${SEED_ENV} must be an integer, got {text!r}") from None


def probe() -> tuple[bool, str]:
    try:
        return True, f"the emulator compiles with {find_compiler()}"
    except BackendUnavailable as e:
        return False, str(e)


class RecordedGraph:
    """The emulator's stand-in for a CUDA graph: the kernel launches and products made while it was
    captured, in order, each bound to the same arrays and scalars; ``launch()`` replays them all, as
    cudaGraphLaunch replays a graph's nodes (a kernel's thread order is drawn anew at each replay,
    as a GPU schedules anew)."""

    def __init__(self, be) -> None:
        self.be, self.nodes = be, []

    def launch(self) -> None:
        self.be._count("graph_launches")
        for node in self.nodes:
            node()


class EmulatedBackend(HostArrays, K.KernelBackend):
    """NumPy arrays; every custom kernel launch runs the CUDA source on the CPU.

    ``seed`` (default $GPUBP_EMULATOR_SEED, else 0) fixes the order in which a block's threads
    run between barriers; each launch gets its own order, from the seed and a launch counter
    that setting the seed restarts.
    """

    name = "emulated"
    xp = np
    sm_count = EMULATED_SMS
    gathers_per_step = False  # it runs a GPU's epoch, whose one gather of the whole set is a kernel to prove

    def __init__(self) -> None:
        super().__init__()
        self.compiler = find_compiler()
        self.device = f"CPU emulating a {EMULATED_SMS}-SM GPU with {Path(self.compiler).name}"
        self._libs: dict[str, ctypes.CDLL] = {}
        self._entries: dict[str, Kernel] = {}
        self.seed = _default_seed()
        self._captures = threading.local()

    # A capture belongs to the thread that opened it: the backend is one object per process, and
    # another thread's launches, copies and allocations meanwhile run as usual (as work on another
    # CUDA stream is not captured), rather than landing in this thread's graph.
    @property
    def _graph(self):
        return getattr(self._captures, "graph", None)

    @property
    def capturing(self) -> bool:
        return self._graph is not None

    @contextmanager
    def _capturing_into(self, graph):
        if self.capturing:
            raise GpubpError("a capture is already in progress")
        self._captures.graph = graph
        try:
            yield graph
        finally:
            self._captures.graph = None

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed, self._launch_index = int(value), 0

    def load_kernel(self, file: str, name: str) -> Kernel:
        """The host entry point of kernel ``name``, building its file's library on first use."""
        fn = self._entries.get(name)
        if fn is None:
            if file not in self._libs:
                self._libs[file] = build(file, self.compiler)
            fn = self._entries[name] = Kernel(self._libs[file], name)
        return fn

    def execute(self, file, name, grid, block, args, shared_mem=0) -> None:
        kernel = self.load_kernel(file, name)  # loaded before a graph records it, as CUDA requires

        def run():
            self._launch_index += 1
            seed = self._seed * 0x9E3779B97F4A7C15 + self._launch_index  # the C side mixes it per block
            kernel(grid, block, args, shared_mem, seed)

        self._record_or_run(run)

    # -----------------------------------------------------------------------------------------
    # Graphs: what a CUDA stream capture does, on the host, with CUDA's rules enforced
    # -----------------------------------------------------------------------------------------

    def graph_support(self, gemm: str) -> tuple[bool, str]:
        return True, "the emulator records a graph's launches and products and replays them"

    def capture(self):
        return self._capturing_into(RecordedGraph(self))

    def _record_or_run(self, work) -> None:
        if self.capturing:
            self._graph.nodes.append(work)
        else:
            work()

    def _refuse_in_capture(self, what: str) -> None:
        if self.capturing:
            raise GpubpError(f"{what} during graph capture: CUDA forbids it (the graph would bake in the "
                             f"wrong address, or the stream would have to wait)")

    def matmul(self, a, b, out, tf32=False):
        if not self.capturing:
            return super().matmul(a, b, out, tf32)
        self._record_or_run(lambda: self.product(a, b, out, None, None, tf32))
        return out

    def gemm(self, a, b, out, alpha, beta, tf32=False) -> None:
        if not self.capturing:
            return super().gemm(a, b, out, alpha, beta, tf32)
        self._record_or_run(lambda: self.product(a, b, out, alpha, beta, tf32))

    def gemm_plan(self, a, b, out):
        """A plan whose calls during a capture are recorded, through ``gemm``, as products are."""
        plan, b0 = super().gemm_plan(a, b, out), b

        def run(alpha, beta, b=None):
            if self.capturing:
                return self.gemm(a, b0 if b is None else b, out, alpha, beta)
            plan(alpha, beta, b)
        return run

    def empty(self, shape, dtype):
        self._refuse_in_capture("an allocation")
        return super().empty(shape, dtype)

    def to_host(self, a):
        self._refuse_in_capture("a device-to-host copy")
        return super().to_host(a)

    def to_device(self, a, dtype=None):
        self._refuse_in_capture("a host-to-device copy")
        return super().to_device(a, dtype)

    def upload(self, dst, host) -> None:
        self._refuse_in_capture("a host-to-device copy")
        super().upload(dst, host)

    def synchronize(self) -> None:
        self._refuse_in_capture("a synchronization")
        super().synchronize()


BACKEND = EmulatedBackend
