"""The emulated backend: our CUDA sources, compiled by the host C++ compiler, run on the CPU.

Each kernel file's code (the same string CuPy compiles) is compiled with a small shim that
defines what CUDA would provide (blockIdx, threadIdx, blockDim, gridDim, __global__, ...)
and a launcher per kernel that walks the grid serially, one (block, thread) at a time. Arrays
are NumPy; arguments are passed exactly like cuLaunchKernel's kernelParams (an array of
pointers to each argument), so the argument order and types the Python side packs are checked
by the compiled signature. Builds are cached under ~/.cache/gpubp/emulated by source hash.

Kernels must not use __syncthreads, shared memory or atomics: a serial walk cannot honour them.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..data import cache_root
from ..errors import BackendUnavailable
from . import kernel as K

SHIM = r"""
// gpubp emulator shim: what the CUDA compiler would provide, for a serial walk on the host.
#include <math.h>
#include <stddef.h>
#include <utility>
struct dim3 { unsigned x, y, z; };
static dim3 blockIdx, threadIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
"""

LAUNCHER = r"""
namespace gpubp_emu {
template <typename... A, size_t... I>
static void call(void (*k)(A...), void** p, std::index_sequence<I...>) {
    k(*static_cast<A*>(p[I])...);
}
template <typename... A>
static void launch(void (*k)(A...), const unsigned* grid, const unsigned* block, void** p) {
    gridDim = dim3{grid[0], 1, 1};
    blockDim = dim3{block[0], 1, 1};
    for (unsigned b = 0; b < grid[0]; ++b)
        for (unsigned t = 0; t < block[0]; ++t) {
            blockIdx = dim3{b, 0, 0};
            threadIdx = dim3{t, 0, 0};
            call(k, p, std::index_sequence_for<A...>{});
        }
}
}  // namespace gpubp_emu
"""

CXX_FLAGS = ("-std=c++17", "-O2", "-shared", "-fPIC", "-fno-fast-math")
EMULATED_SMS = 2  # a small "GPU": grids are capped at 2*BLOCKS_PER_SM blocks, so grid-stride loops loop


def find_compiler() -> str:
    """$CXX, else c++, g++ or clang++ on PATH; BackendUnavailable if there is none."""
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    raise BackendUnavailable("the emulated backend needs a C++ compiler: install g++ or set CXX")


def emulator_code(file: str) -> str:
    """The host translation unit for one kernel file: shim + the CUDA code + one launcher per kernel."""
    names = K.parse_signatures(K.source(file))
    entries = "".join(
        f'extern "C" void gpubp_emu_{n}(const unsigned* g, const unsigned* b, void** p) '
        f"{{ gpubp_emu::launch({n}, g, b, p); }}\n"
        for n in names
    )
    return SHIM + K.source(file) + LAUNCHER + entries


def cache_dir() -> Path:
    return cache_root() / "emulated"


def build(file: str, cxx: str) -> ctypes.CDLL:
    """Compile (or reuse) the shared library for one kernel file with compiler ``cxx`` and load it."""
    code = emulator_code(file)
    key = hashlib.sha256("\0".join((cxx, *CXX_FLAGS, code)).encode()).hexdigest()[:24]
    out = cache_dir() / f"{Path(file).stem}-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            src = Path(tmp) / (Path(file).stem + ".cpp")
            src.write_text(code)
            lib = Path(tmp) / out.name
            res = subprocess.run([cxx, *CXX_FLAGS, "-o", str(lib), str(src)], capture_output=True, text=True)
            if res.returncode != 0:
                first = next((line for line in res.stderr.splitlines() if "error" in line), res.stderr.strip())
                raise BackendUnavailable(f"{cxx} could not compile {file} for the emulator: {first}")
            os.replace(lib, out)  # atomic: a concurrent build never sees half a library
    return ctypes.CDLL(str(out))


_CTYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
           np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64}


def probe() -> tuple[bool, str]:
    try:
        return True, f"the emulator compiles with {find_compiler()}"
    except BackendUnavailable as e:
        return False, str(e)


class EmulatedBackend(K.KernelBackend):
    """NumPy arrays; every custom kernel launch runs the CUDA source on the CPU."""

    name = "emulated"
    xp = np
    sm_count = EMULATED_SMS

    def __init__(self) -> None:
        super().__init__()
        self.compiler = find_compiler()
        self.device = f"CPU emulating a {EMULATED_SMS}-SM GPU with {Path(self.compiler).name}"
        self._libs: dict[str, ctypes.CDLL] = {}
        self._entries: dict[str, object] = {}

    def load_kernel(self, file: str, name: str):
        """The host entry point of kernel ``name``, building its file's library on first use."""
        fn = self._entries.get(name)
        if fn is None:
            if file not in self._libs:
                self._libs[file] = build(file, self.compiler)
            fn = getattr(self._libs[file], f"gpubp_emu_{name}")
            fn.argtypes = (ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                           ctypes.POINTER(ctypes.c_void_p))
            fn.restype = None
            self._entries[name] = fn
        return fn

    def execute(self, file, name, grid, block, args, shared_mem=0) -> None:
        if grid[1:] != (1, 1) or block[1:] != (1, 1) or shared_mem:
            raise BackendUnavailable(f"kernel {name}: the serial emulator runs 1-D launches without shared memory")
        fn = self.load_kernel(file, name)
        # kernelParams: one pointer per argument, pointing at the argument's value.
        holders = [ctypes.c_void_p(a.ctypes.data) if isinstance(a, np.ndarray) else _CTYPES[a.dtype](a)
                   for a in args]
        argv = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        fn((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), argv)


BACKEND = EmulatedBackend
