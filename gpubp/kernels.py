"""Our CUDA kernels: their sources, their signatures, their NumPy references, and one launch path.

Each ``kernels/*.cu`` file is one concern. For CuPy, NVRTC and the emulator alike, a file's code
is its text with ``#include "gpubp.cuh"`` replaced by the header's text, so a changed header can
never run from a stale CuPy cache (CuPy keys its cache on the code string, not on includes).

The NumPy functions below are the references: the NumPy backend runs them, and every kernel is
tested against them (and they against float64 formulas). ``KernelBackend`` is the launch path
shared by the CuPy and emulated backends: it validates arguments against the signature parsed
from the source, computes the grid, counts the launch, and hands it to an executor.
"""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import GpubpError

HEADER = "gpubp.cuh"
BLOCK = 256  # threads per block for every kernel
BLOCKS_PER_SM = 8  # grid cap = BLOCKS_PER_SM * SM count; the grid-stride loop covers the rest
# Our options for NVRTC (CuPy adds its include paths, -ftz=true, the architecture and
# --device-as-default-execution-space; tests/test_kernels.py compiles with exactly that set).
NVRTC_OPTIONS = ("--std=c++17",)


# ---------------------------------------------------------------------------------------------
# Sources and signatures
# ---------------------------------------------------------------------------------------------

def kernel_dir() -> Path:
    """The .cu sources: gpubp/_kernels in an installed wheel, else kernels/ beside the package."""
    here = Path(__file__).resolve().parent
    for d in (here / "_kernels", here.parent / "kernels"):
        if (d / HEADER).is_file():
            return d
    raise GpubpError(f"CUDA kernel sources not found next to {here}: reinstall gpubp")


def kernel_files() -> list[str]:
    """The kernel source file names, e.g. ['argmax_hits.cu', 'bias_sigmoid.cu', ...]."""
    return sorted(p.name for p in kernel_dir().glob("*.cu"))


@functools.cache
def source(file: str) -> str:
    """The compilable code of one kernel file: the shared header inlined in place of its #include."""
    d = kernel_dir()
    header = (d / HEADER).read_text()
    text = (d / file).read_text()
    include = f'#include "{HEADER}"'
    if include not in text:
        raise GpubpError(f"{file} does not include {HEADER}")
    return text.replace(include, header, 1)


class Param(NamedTuple):
    name: str
    ctype: str  # "float", "double", "int", "long long"
    pointer: bool

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_CTYPE_DTYPE[self.ctype])


_CTYPE_DTYPE = {"float": np.float32, "double": np.float64, "int": np.int32, "long long": np.int64}
_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')
_PARAM_RE = re.compile(r"^(?:const\s+)?(float|double|int|long long)\s*(\*)?\s*(?:__restrict__\s+)?(\w+)$")


def kernel_names(code: str) -> list[str]:
    """The names of the ``extern "C" __global__`` functions in ``code``, in order."""
    return [name for name, _ in _KERNEL_RE.findall(code)]


def parse_signatures(code: str) -> dict[str, tuple[Param, ...]]:
    """{kernel name: parameters} for every ``extern "C" __global__`` function in ``code``."""
    out = {}
    for name, params in _KERNEL_RE.findall(code):
        parsed = []
        for raw in params.split(","):
            m = _PARAM_RE.match(" ".join(raw.split()))
            if not m:
                raise GpubpError(f"kernel {name}: cannot read parameter {raw.strip()!r}")
            parsed.append(Param(m.group(3), m.group(1), bool(m.group(2))))
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


def tolerance(file: str, dtype) -> tuple[float, float]:
    """(atol, rtol) that ``file``'s header promises for ``dtype`` against a float64 reference."""
    name = np.dtype(dtype).name
    m = re.search(rf"{name} atol=(\S+?) rtol=(\S+?)(?:[;\s]|$)", (kernel_dir() / file).read_text())
    if not m:
        raise GpubpError(f"{file} states no {name} tolerance in its header")
    return float(m.group(1)), float(m.group(2))


def suffix(dtype) -> str:
    """Entry-name suffix of the kernel instance for ``dtype``: float32 -> '_f32', float64 -> '_f64'."""
    dt = np.dtype(dtype)
    if dt == np.float32:
        return "_f32"
    if dt == np.float64:
        return "_f64"
    raise GpubpError(f"dtype {dt} is not supported: use float32 or float64")


# ---------------------------------------------------------------------------------------------
# NumPy references (the NumPy backend runs these; every kernel must match them)
# ---------------------------------------------------------------------------------------------

def sigmoid(z, out=None):
    """sigma(z) = 0.5 + 0.5*tanh(z/2), elementwise: equal to 1/(1+exp(-z)) and never overflows."""
    out = np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def sigmoid_prime_from_activation(a):
    """sigma'(z) from the stored activation a = sigma(z): a*(1-a)."""
    return a * (1 - a)


def bias_sigmoid(Z, b):
    """Z (m, n) <- sigma(Z + b), b (n,) broadcast over rows; in place. Kernel: bias_sigmoid.cu."""
    np.add(Z, b, out=Z)
    sigmoid(Z, out=Z)


def output_delta(cost, D, A, Y, scale, work=None):
    """D <- scale*(A-Y)*A*(1-A) (quadratic) or scale*(A-Y) (cross_entropy). Kernel: output_delta.cu."""
    np.subtract(A, Y, out=D)
    if cost == "quadratic":
        work = np.subtract(1, A, out=work)
        work *= A
        D *= work
    elif cost != "cross_entropy":
        raise GpubpError(f"unknown cost {cost!r}")
    D *= scale


def hidden_delta(G, A, work=None):
    """G <- G * A*(1-A), in place (G = delta W from the GEMM). Kernel: hidden_delta.cu."""
    work = np.subtract(1, A, out=work)
    work *= A
    G *= work


def sgd_update(p, g, n_weights, decay, step, work=None):
    """p[:nw] <- decay*p[:nw] - step*g[:nw]; p[nw:] <- p[nw:] - step*g[nw:]. Kernel: sgd_update.cu."""
    if decay != 1:
        p[:n_weights] *= decay
    if step == 1:
        p -= g
    else:
        p -= np.multiply(g, step, out=work)


def one_hot(labels, Y):
    """Y (m, c) <- one-hot rows of int labels (m,). Kernel: one_hot.cu."""
    Y[...] = 0
    Y[np.arange(len(labels)), labels] = 1


def argmax_hits(A, labels, hits):
    """hits (m,) int32 <- argmax of each row of A == label. Kernel: argmax_hits.cu."""
    hits[...] = np.argmax(A, axis=1) == labels


# ---------------------------------------------------------------------------------------------
# The launch path shared by the CuPy and emulated backends
# ---------------------------------------------------------------------------------------------

def grid_size(n: int, sm_count: int) -> int:
    """Blocks for n threads: ceil(n / BLOCK), capped at BLOCKS_PER_SM * sm_count (grid-stride loops)."""
    return max(1, min(-(-n // BLOCK), BLOCKS_PER_SM * sm_count))


# CUDA's launch limits (every GPU since sm_30): threads per block, block and grid dimensions, and
# dynamic shared memory without opting in through cudaFuncSetAttribute (which we never do).
MAX_BLOCK_THREADS = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_DYNAMIC_SHARED = 48 * 1024


def launch_dims(what: str, dims, limits) -> tuple[int, int, int]:
    """``dims`` (1 to 3 positive ints) as an (x, y, z) tuple within ``limits``, else GpubpError."""
    dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
        raise GpubpError(f"{what} must be 1 to 3 integers (x, y, z), got {dims!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    if not all(1 <= d <= lim for d, lim in zip(dims, limits)):
        raise GpubpError(f"{what} {dims} is outside CUDA's limits: each of (x, y, z) from 1 to {limits}")
    return dims


class KernelBackend:
    """Mixin for backends that run our kernels. Subclasses set ``xp``, ``sm_count`` and ``_run``.

    ``_function(file, name)`` compiles or loads one kernel and ``_run(file, name, grid, block,
    args, shared_mem)`` executes one launch (grid and block are (x, y, z) tuples, shared_mem the
    dynamic shared-memory bytes per block): CuPy through RawModule, the emulator through the
    host-compiled source. Everything before them is shared.
    """

    sm_count = 1

    def warmup(self) -> float:
        """Compile (or load from cache) every kernel now, outside any clock; returns the seconds taken."""
        t0 = time.perf_counter()
        for name, (file, _) in signatures().items():
            self._function(file, name)
        self.synchronize()
        return time.perf_counter() - t0

    def launch(self, name: str, n: int, *args) -> None:
        """Launch kernel ``name`` over ``n`` threads' worth of work, after checking ``args``."""
        file, packed = self._checked(name, args)
        if n <= 0:
            return
        self._count("launches")
        self._run(file, name, (grid_size(n, self.sm_count), 1, 1), (BLOCK, 1, 1), packed)

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
        self._count("launches")
        self._run(file, name, grid, block, packed, shared_mem=int(shared_mem))

    def _checked(self, name: str, args) -> tuple[str, tuple]:
        """(file, args packed as the signature says) for kernel ``name``, or GpubpError."""
        if name not in signatures():
            raise GpubpError(f"no kernel named {name!r} in {kernel_dir()}")
        file, params = signatures()[name]
        if len(args) != len(params):
            raise GpubpError(f"kernel {name} takes {len(params)} arguments, got {len(args)}")
        return file, tuple(self._check(name, p, a) for p, a in zip(params, args))

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
        if p.dtype.kind == "i" and not isinstance(a, (int, np.integer)):
            raise GpubpError(f"kernel {name}: {p.name} must be an integer, got {a!r}")
        return p.dtype.type(a)

    def _kernel(self, stem: str, dtype) -> str:
        return stem + suffix(dtype)

    # The fused operations (same meaning as the NumPy references above).
    def bias_sigmoid(self, Z, b):
        self.launch(self._kernel("bias_sigmoid", Z.dtype), Z.size, Z, b, Z.shape[0], Z.shape[1])

    def output_delta(self, cost, D, A, Y, scale):
        if cost not in ("quadratic", "cross_entropy"):
            raise GpubpError(f"unknown cost {cost!r}")
        self.launch(self._kernel(f"output_delta_{cost}", A.dtype), A.size, D, A, Y, A.size, scale)

    def hidden_delta(self, G, A):
        self.launch(self._kernel("hidden_delta", A.dtype), A.size, G, A, A.size)

    def sgd_update(self, p, g, n_weights, decay, step):
        self.launch(self._kernel("sgd_update", p.dtype), p.size, p, g, p.size, n_weights, decay, step)

    def one_hot(self, labels, Y):
        self.launch(self._kernel("one_hot", Y.dtype), Y.size, Y, labels, Y.shape[0], Y.shape[1])

    def argmax_hits(self, A, labels, hits):
        self.launch(self._kernel("argmax_hits", A.dtype), A.shape[0], hits, A, labels, A.shape[0], A.shape[1])
