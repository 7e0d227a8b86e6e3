"""Our CUDA kernels: their sources, their signatures, and the launch path the CuPy and emulated
backends share.

Each ``kernels/*.cu`` file is one concern. For CuPy, NVRTC and the emulator alike, a file's code is
its text with every ``#include "x.cuh"`` of ours replaced by that header's text, so a changed
header can never run from a stale CuPy cache (CuPy keys its cache on the code string, not on
includes). Entry points are written once as templates and exported for float and double by the
GPUBP_EXPORT macro (kernels/gpubp.cuh); ``signatures()`` reads them by expanding our own GPUBP_*
macros, so the argument checks below come from the source itself.

``KernelBackend`` validates every launch against its signature, computes the grid, counts the
launch and hands it to the subclass's executor: CuPy's RawModule, or the emulator's host build.
The NumPy reference of every kernel is in gpubp.reference, under the kernel's name.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import GpubpError
from .base import Backend

BLOCK = 256  # threads per block for every 1-D kernel
BLOCKS_PER_SM = 8  # grid cap = BLOCKS_PER_SM * SM count; the grid-stride loop covers the rest
# Our options for NVRTC (CuPy adds its include paths, -ftz=true, the architecture and
# --device-as-default-execution-space; tests/test_kernels.py compiles with exactly that set).
NVRTC_OPTIONS = ("--std=c++17",)
DTYPE_SUFFIX = {np.dtype(np.float32): "_f32", np.dtype(np.float64): "_f64"}


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------

def kernel_dir() -> Path:
    """The .cu sources: gpubp/_kernels in an installed wheel, else kernels/ beside the package."""
    here = Path(__file__).resolve().parent.parent
    for d in (here / "_kernels", here.parent / "kernels"):
        if (d / "gpubp.cuh").is_file():
            return d
    raise GpubpError(f"CUDA kernel sources not found next to {here}: reinstall gpubp")


def kernel_files() -> list[str]:
    """The kernel source file names, e.g. ['argmax_hits.cu', 'difference_delta.cu', ...]."""
    return sorted(p.name for p in kernel_dir().glob("*.cu"))


_INCLUDE_RE = re.compile(r'^[ \t]*#include "([\w.]+\.cuh)"[ \t]*$', re.MULTILINE)


@functools.cache
def source(file: str) -> str:
    """The compilable code of one kernel file: each of our headers inlined once, where first included."""
    d = kernel_dir()
    seen: set[str] = set()

    def inline(match):
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        if not (d / name).is_file():
            raise GpubpError(f"{file} includes {name}, which is not in {d}")
        return _INCLUDE_RE.sub(inline, (d / name).read_text())

    text = (d / file).read_text()
    if not _INCLUDE_RE.search(text):
        raise GpubpError(f"{file} includes none of our headers (gpubp.cuh)")
    return _INCLUDE_RE.sub(inline, text)


# ---------------------------------------------------------------------------------------------
# Signatures: our GPUBP_* macros expanded (only to read them; the compilers expand them for real)
# ---------------------------------------------------------------------------------------------

_DEFINE_RE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(GPUBP_\w+)\(([^)]*)\)((?:[^\n]*\\\n)*[^\n]*)", re.MULTILINE)


def _split_args(text: str, start: int) -> tuple[list[str], int]:
    """The comma-separated arguments of a macro call whose '(' is at ``start``, and the index after ')'."""
    depth, args, cur = 0, [], start + 1
    for i in range(start, len(text)):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                args.append(text[cur:i].strip())
                return args, i + 1
        elif c == "," and depth == 1:
            args.append(text[cur:i].strip())
            cur = i + 1
    raise GpubpError("unbalanced parentheses in a GPUBP_ macro call")


def expand_macros(code: str) -> str:
    """``code`` with every call of a function-like GPUBP_* macro it defines expanded, as the C
    preprocessor would for our macros (parameters substituted, ## pasted, results rescanned). A macro
    defined twice takes its last definition, the one the preprocessor keeps where the first is under
    ``#ifndef GPUBP_NATIVE`` and the second is native_layer.h's (the native backend's build)."""
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", code, flags=re.DOTALL)  # a macro named in a comment is not a call
    macros = {}
    for name, params, body in _DEFINE_RE.findall(code):
        macros[name] = ([p.strip() for p in params.split(",")], body.replace("\\\n", " "))
    text = _DEFINE_RE.sub("", code)
    if not macros:
        return text
    call = re.compile(r"\b(" + "|".join(map(re.escape, macros)) + r")\s*\(")
    pos = 0
    while m := call.search(text, pos):
        params, body = macros[m.group(1)]
        args, end = _split_args(text, m.end() - 1)
        if len(args) != len(params):
            raise GpubpError(f"{m.group(1)} takes {len(params)} arguments, got {len(args)}")
        given = dict(zip(params, args))  # one pass, so an argument's text is never substituted again
        body = re.sub(r"\b(" + "|".join(map(re.escape, params)) + r")\b", lambda p, given=given: given[p.group(1)], body)
        body = re.sub(r"\s*##\s*", "", body)
        text = text[:m.start()] + body + text[end:]
        pos = m.start()  # rescan the expansion: it may call other macros
    return text


class Param(NamedTuple):
    name: str
    ctype: str  # "float", "double", "int", "unsigned int", "unsigned", "long long", "unsigned long long"
    pointer: bool

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_CTYPE_DTYPE[self.ctype])


_CTYPE_DTYPE = {"float": np.float32, "double": np.float64, "int": np.int32, "unsigned int": np.uint32,
                "unsigned": np.uint32, "long long": np.int64, "unsigned long long": np.uint64}
_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')
_PARAM_RE = re.compile(r"^(?:const\s+)?(float|double|int|unsigned int|unsigned long long|unsigned|long long|T)"
                       r"\s*(\*)?\s*(?:__restrict__\s+)?(\w+)$")
_SUFFIX_TYPE = {"_f32": "float", "_f64": "double"}


def parse_signatures(code: str) -> dict[str, tuple[Param, ...]]:
    """{kernel name: parameters} for every ``extern "C" __global__`` function in ``code`` once our
    macros are expanded; T in an exported template's parameters is float for _f32, double for _f64."""
    return dict(_parse_signatures(code))  # a copy: the cached table is never handed out


@functools.lru_cache(maxsize=256)  # every backend instance reads the same few dozen sources
def _parse_signatures(code: str) -> dict[str, tuple[Param, ...]]:
    out = {}
    for name, params in _KERNEL_RE.findall(expand_macros(code)):
        parsed = []
        for raw in params.split(","):
            m = _PARAM_RE.match(" ".join(raw.split()))
            if not m:
                raise GpubpError(f"kernel {name}: cannot read parameter {raw.strip()!r}")
            ctype = m.group(1)
            if ctype == "T":
                ctype = _SUFFIX_TYPE.get(name[-4:])
                if ctype is None:
                    raise GpubpError(f"kernel {name}: a parameter of type T needs an _f32 or _f64 name")
            parsed.append(Param(m.group(3), ctype, bool(m.group(2))))
        out[name] = tuple(parsed)
    return out


@functools.cache
def signatures() -> dict[str, tuple[str, tuple[Param, ...]]]:
    """{kernel name: (file, parameters)} over every kernel file."""
    table = {}
    for f in kernel_files():
        for name, params in parse_signatures(source(f)).items():
            table[name] = (f, params)
    return table


def tolerance(file: str, dtype, kernel: str | None = None) -> tuple[float, float]:
    """(atol, rtol) that ``file``'s header promises for ``dtype`` against a float64 reference: the
    statement ``Tolerance <kernel or pattern> ...`` that names the kernel (``layer_*`` names a
    family), else the file's unnamed ``Tolerance ...`` statement."""
    name = np.dtype(dtype).name
    header = (kernel_dir() / file).read_text().split("#include")[0]
    named, unnamed = [], []
    for s in re.split(r"(?m)^// Tolerance", header)[1:]:  # each statement runs on until the next one
        m = re.match(r" ([\w*]+)[ :]", s)
        if m and m.group(1) != "vs":
            if kernel and fnmatch.fnmatchcase(kernel, m.group(1)):
                named.append(s)
        else:
            unnamed.append(s)
    for s in named or unnamed:
        m = re.search(rf"{name} atol=(\S+?) rtol=(\S+?)(?:[;\s]|$)", s)
        if m:
            return float(m.group(1)), float(m.group(2))
    raise GpubpError(f"{file} states no {name} tolerance{' for ' + kernel if kernel else ''} in its header")


def suffix(dtype) -> str:
    """Entry-name suffix of the kernel instance for ``dtype``: float32 -> '_f32', float64 -> '_f64'."""
    dt = np.dtype(dtype)
    if dt not in DTYPE_SUFFIX:
        raise GpubpError(f"dtype {dt} is not supported: use float32 or float64")
    return DTYPE_SUFFIX[dt]


def grid_size(n: int, sm_count: int) -> int:
    """Blocks for n threads: ceil(n / BLOCK), capped at BLOCKS_PER_SM * sm_count (grid-stride loops)."""
    return max(1, min(-(-n // BLOCK), BLOCKS_PER_SM * sm_count))


@functools.cache
def tiles() -> dict[str, dict[str, int]]:
    """The layer kernels' tile shapes, read from kernels/layer.cuh: {"TileSmall": {"BM": 16, ...}, ...}."""
    text = (kernel_dir() / "layer.cuh").read_text()
    found = {name: dict((k, int(v)) for k, v in re.findall(r"(\w+) = (\d+)", body))
             for name, body in re.findall(r"struct (Tile\w+) \{\s*static constexpr int ([^;]+);", text)}
    if not {"TileSmall", "TileLarge", "TileOutput"} <= found.keys():
        raise GpubpError("kernels/layer.cuh does not define TileSmall, TileLarge and TileOutput")
    return found


def layer_launch(M: int, N: int, tile: str) -> tuple[tuple, tuple]:
    """(grid, block) of a layer kernel computing an M x N product with ``tile``: a block per tile."""
    t = tiles()[tile]
    threads = (t["BM"] // t["TM"]) * (t["BN"] // t["TN"])
    return (-(-N // t["BN"]), -(-M // t["BM"]), 1), (threads, 1, 1)


LAYER_TILES = {"s": "TileSmall", "l": "TileLarge"}  # the kernels' name suffix -> the tile in layer.cuh


def layer_tile(M: int, N: int, sm_count: int) -> str:
    """"l" (TileLarge) when its tiles still give every SM two blocks, else "s" (TileSmall): a wide
    product wants big tiles for reuse, a skinny one wants many blocks."""
    big = tiles()["TileLarge"]
    blocks = -(-M // big["BM"]) * -(-N // big["BN"])
    return "l" if blocks >= 2 * sm_count else "s"


def widest_fused_softmax() -> int:
    """The widest output layer whose softmax a layer_output kernel fuses: a TileOutput block holds
    whole rows of outputs (a row's maximum and sum need every output of the row)."""
    return tiles()["TileOutput"]["BN"]


# CUDA's launch limits (every GPU since sm_30): threads per block, block and grid dimensions, and
# dynamic shared memory without opting in through cudaFuncSetAttribute (which we never do).
MAX_BLOCK_THREADS = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_DYNAMIC_SHARED = 48 * 1024


def launch_dims(what: str, dims, limits) -> tuple[int, int, int]:
    """``dims`` (1 to 3 positive ints) as an (x, y, z) tuple within ``limits``, else GpubpError."""
    if type(dims) is tuple and len(dims) == 3:  # the usual case, checked without building anything
        x, y, z = dims
        if type(x) is int and type(y) is int and type(z) is int \
                and 1 <= x <= limits[0] and 1 <= y <= limits[1] and 1 <= z <= limits[2]:
            return dims
    dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
        raise GpubpError(f"{what} must be 1 to 3 integers (x, y, z), got {dims!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    if not all(1 <= d <= lim for d, lim in zip(dims, limits)):
        raise GpubpError(f"{what} {dims} is outside CUDA's limits: each of (x, y, z) from 1 to {limits}")
    return dims


# ---------------------------------------------------------------------------------------------
# The launch path shared by the CuPy and emulated backends
# ---------------------------------------------------------------------------------------------

class KernelBackend(Backend):
    """A backend that runs our CUDA kernels. Subclasses set ``xp`` and ``sm_count`` and give the
    two executor methods: ``load_kernel(file, name)`` compiles or loads one kernel, and
    ``execute(file, name, grid, block, args, shared_mem=0)`` executes one launch (grid and block
    are 3-tuples). Everything before them (argument checks, grid sizes, counting) is here."""

    compiles_kernels = True
    sm_count = 1

    def load_kernel(self, file: str, name: str):
        raise NotImplementedError(f"{type(self).__name__} does not compile kernels")

    def execute(self, file: str, name: str, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not launch kernels")

    def warmup(self) -> float:
        """Compile (or load from cache) every kernel now, outside any clock; returns the seconds taken."""
        t0 = time.perf_counter()
        for name, (file, _) in signatures().items():
            self.load_kernel(file, name)
        self.synchronize()
        return time.perf_counter() - t0

    def kernel(self, stem: str, dtype):
        """The launcher of kernel ``stem`` for ``dtype``: ``k(n, *args)`` runs it over n work items."""
        name = stem + suffix(dtype)
        if name not in signatures():
            raise GpubpError(f"no kernel named {name!r} in {kernel_dir()}")
        return functools.partial(self.launch, name)

    def layer_entry(self, stem: str, M: int, N: int, dtype) -> tuple[str, tuple, tuple]:
        """(entry name, grid, block) of layer kernel ``stem`` for an M x N product in ``dtype``:
        a kernel exported once per tile (layer_forward_<act>, layer_delta_<act>, layer_update) gets
        the tile that suits the product (``layer_tile``), an output layer's (layer_output_<cost>)
        its one tile, TileOutput; then a block per tile."""
        sfx = suffix(dtype)
        if all(f"{stem}_{t}{sfx}" in signatures() for t in LAYER_TILES):
            t = layer_tile(M, N, self.sm_count)
            name, tile = f"{stem}_{t}{sfx}", LAYER_TILES[t]
        else:
            name, tile = stem + sfx, "TileOutput"
        if name not in signatures():
            raise GpubpError(f"no layer kernel named {name!r} in {kernel_dir()}")
        return (name, *layer_launch(M, N, tile))

    def layer_kernel(self, stem: str, M: int, N: int, dtype):
        """The launcher ``k(*args)`` of layer kernel ``stem`` (kernels/layer.cuh) for an M x N
        product in ``dtype``, its entry, tile and grid chosen once (``layer_entry``); ``args`` are
        the kernel's own."""
        return self.layer_launcher(*self.layer_entry(stem, M, N, dtype))

    def layer_launcher(self, name: str, grid, block):
        """Layer kernel entry ``name`` bound to its ``grid`` of ``block``s: ``k(*args)`` launches it."""
        return lambda *args: self.launch_grid(name, grid, block, 0, *args)

    def launch(self, name: str, n: int, *args) -> None:
        """Launch 1-D kernel ``name`` over ``n`` work items (grid-stride), after checking ``args``."""
        file, packed = self._checked(name, args)
        if n <= 0:
            return
        if not self.capturing:
            self._count("launches")
        self.execute(file, name, *self.geometry(file, name, n), packed)

    def geometry(self, file: str, name: str, n: int):
        """(grid, block) of a 1-D launch over n items: blocks of BLOCK threads, at most BLOCKS_PER_SM
        per SM, a grid-stride loop covering the rest."""
        return (grid_size(n, self.sm_count), 1, 1), (BLOCK, 1, 1)

    def launch_grid(self, name: str, grid, block, shared_mem: int, *args) -> None:
        """Launch kernel ``name`` on an explicit ``grid`` of ``block``s, each (x, y, z) (missing
        trailing sizes are 1), with ``shared_mem`` bytes of dynamic shared memory per block, after
        checking ``args`` and the geometry against CUDA's limits."""
        file, packed = self._checked(name, args)
        grid, block = launch_dims("grid", grid, MAX_GRID), launch_dims("block", block, MAX_BLOCK)
        if block[0] * block[1] * block[2] > MAX_BLOCK_THREADS:
            raise GpubpError(f"block {block} has more than {MAX_BLOCK_THREADS} threads")
        if isinstance(shared_mem, bool) or not isinstance(shared_mem, (int, np.integer)) \
                or not 0 <= shared_mem <= MAX_DYNAMIC_SHARED:
            raise GpubpError(f"shared_mem must be 0 to {MAX_DYNAMIC_SHARED} bytes, got {shared_mem!r}")
        if not self.capturing:
            self._count("launches")
        self.execute(file, name, grid, block, packed, shared_mem=int(shared_mem))

    def _checked(self, name: str, args: tuple) -> tuple[str, tuple]:
        if name not in signatures():
            raise GpubpError(f"no kernel named {name!r} in {kernel_dir()}")
        file, params = signatures()[name]
        if len(args) != len(params):
            raise GpubpError(f"kernel {name} takes {len(params)} arguments, got {len(args)}")
        ndarray = self.xp.ndarray
        # an array of exactly the right dtype object, C-contiguous, passes as it is (the usual case,
        # 10 of a launch's arguments during a capture); everything else takes _check's full path
        return file, tuple(a if p.pointer and type(a) is ndarray and a.dtype is p.dtype and a.flags.c_contiguous
                           else self._check(name, p, a) for p, a in zip(params, args))

    def _check(self, name: str, p: Param, a):
        if p.pointer:
            if not isinstance(a, self.xp.ndarray):
                raise GpubpError(f"kernel {name}: {p.name} must be a {self.name} array, got {type(a).__name__}")
            if a.dtype != p.dtype:
                raise GpubpError(f"kernel {name}: {p.name} must be {p.dtype}, got {a.dtype}")
            if not a.flags.c_contiguous:
                raise GpubpError(f"kernel {name}: {p.name} must be C-contiguous (got strides {a.strides})")
            return a
        if isinstance(a, (np.ndarray, self.xp.ndarray)) and getattr(a, "ndim", 0) != 0:
            raise GpubpError(f"kernel {name}: {p.name} is a scalar, got an array")
        if p.dtype.kind in "iu" and not isinstance(a, (int, np.integer)):
            raise GpubpError(f"kernel {name}: {p.name} must be an integer, got {a!r}")
        return p.dtype.type(a)
