"""What machine and libraries a run used: for `gpubp info`, benchmark records and bug reports."""

from __future__ import annotations

import os
import platform

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas() -> dict:
    """NumPy's BLAS: name, version and threads (threadpoolctl when installed, else the library itself)."""
    info = {"name": "unknown", "version": None, "threads": None}
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info.update(name=cfg.get("name", "unknown"), version=cfg.get("version"))
    except Exception:
        pass
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                info["threads"] = pool.get("num_threads")
                break
    except ImportError:
        info["threads"] = _openblas_threads()
    return info


def _openblas_libraries() -> list:
    """Every OpenBLAS loaded in this process (NumPy and SciPy each bring their own), as ctypes libraries."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.split()[-1].lower()})
    except OSError:
        return []
    libs = []
    for path in paths:
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    return libs


def _openblas_call(lib, name, *args):
    """OpenBLAS's ``name`` (openblas_get_num_threads, ...) under whichever symbol this build exports, or None."""
    import ctypes

    for sym in (f"scipy_{name}64_", f"{name}64_", name):
        fn = getattr(lib, sym, None)
        if fn is not None:
            return fn(*(ctypes.c_int(a) for a in args))
    return None


def _openblas_threads():
    for lib in _openblas_libraries():
        n = _openblas_call(lib, "openblas_get_num_threads")
        if n is not None:
            return int(n)
    return None


def set_blas_threads(n: int) -> int | None:
    """Set the threads of every OpenBLAS in this process to ``n`` (threadpoolctl's way when it is
    installed); returns the count before, or None when no BLAS here can be told (then nothing changed)."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        before, told = _openblas_threads(), False
        for lib in _openblas_libraries():
            told |= _openblas_call(lib, "openblas_set_num_threads", n) is not None
        return before if told else None
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    if not pools:
        return None
    threadpool_limits(limits=n, user_api="blas")
    return pools[0].get("num_threads")


# gpubp is installed from a clone, not from a package index, so the hints name the clone's commands.
GPU_INSTALL_HINT = ("from the clone: uv run --extra cuda13 gpubp ... or pip install -e '.[cuda13]'; "
                    "with a CUDA 12 driver, --extra cuda12 or '.[cuda12]'")


def first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def gpu_name(runtime, device: int) -> str:
    """The name of CUDA device ``device`` from CuPy's runtime module (bytes or str by CuPy version)."""
    name = runtime.getDeviceProperties(device)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def driver_installed() -> bool:
    """Whether the NVIDIA driver's library (libcuda) can be loaded at all."""
    import ctypes

    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(lib)
            return True
        except OSError:
            continue
    return False


def explain_cuda_error(e: BaseException) -> str:
    """Why CUDA did not answer, in words: CUDA says 'driver version is insufficient' also when there
    is no driver at all, so that case is told apart first."""
    msg = first_line(e)
    if "NoDevice" in msg or "no CUDA-capable device" in msg:
        return f"no CUDA device found ({msg})"
    if not driver_installed():
        return "no NVIDIA driver is installed (libcuda cannot be loaded)"
    if "InsufficientDriver" in msg:
        return f"the NVIDIA driver is older than this CuPy's CUDA runtime ({msg}); update the driver or use cuda12"
    return f"no usable NVIDIA driver ({msg})"


def cuda() -> dict:
    """CuPy, CUDA runtime and driver versions and GPU name, where they can be had."""
    out = {"cupy": None, "cuda_runtime": None, "cuda_driver": None, "gpu": None}
    try:
        import cupy
    except Exception:
        return out
    out["cupy"] = cupy.__version__
    rt = cupy.cuda.runtime
    for key, call in (("cuda_runtime", rt.runtimeGetVersion), ("cuda_driver", rt.driverGetVersion)):
        try:
            v = int(call())
            out[key] = f"{v // 1000}.{v % 1000 // 10}" if v else None
        except Exception:
            pass
    try:
        out["gpu"] = gpu_name(rt, 0)
    except Exception:
        pass
    return out


def machine() -> dict:
    """One dict describing this machine and its numerical libraries."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": blas(), **cuda()}
