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


def _openblas_threads():
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.split()[-1].lower()}
    except OSError:
        return None
    for lib in libs:
        try:
            dll = ctypes.CDLL(lib)
        except OSError:
            continue
        for sym in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
            fn = getattr(dll, sym, None)
            if fn is not None:
                return int(fn())
    return None


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
        name = rt.getDeviceProperties(0)["name"]
        out["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        pass
    return out


def machine() -> dict:
    """One dict describing this machine and its numerical libraries."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": blas(), **cuda()}
