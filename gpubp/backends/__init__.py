"""Backends by name: one module per backend, one line each in REGISTRY.

A backend module defines ``BACKEND`` (its class) and ``probe() -> (usable, one-line reason)``,
and imports nothing heavy until the class is made, so listing or probing a backend is cheap.
``get_backend("auto")`` takes the first backend of AUTO_ORDER whose probe says yes, and keeps
the reason, so "why am I on the CPU?" always has an answer.
"""

from __future__ import annotations

import importlib
import os

from ..errors import BackendUnavailable, GpubpError
from .base import Backend, Counters

# name -> module under gpubp.backends; adding a backend is one file and one line here.
REGISTRY = {"numpy": "numpy", "cupy": "cupy", "emulated": "emulated", "native": "native"}
AUTO_ORDER = ("cupy", "numpy")  # what "auto" tries, best first
BACKEND_NAMES = ("auto", *REGISTRY)
ENV_VAR = "GPUBP_BACKEND"

__all__ = ["BACKEND_NAMES", "REGISTRY", "Backend", "Counters", "cupy_status", "get_backend", "names_with", "probe",
           "reset"]

_instances: dict[str, Backend] = {}


def _module(name: str):
    return importlib.import_module(f".{REGISTRY[name]}", __name__)


def probe(name: str) -> tuple[bool, str]:
    """(usable, one-line reason) for backend ``name``, without making it."""
    return _module(name).probe()


def names_with(attribute: str, last: str = "or") -> str:
    """The registered backends whose class has ``attribute`` true, for messages: "a, b or c"
    (``last`` joins the last two)."""
    names = [n for n in REGISTRY if getattr(_module(n).BACKEND, attribute)]
    return ", ".join(names[:-1]) + f" {last} " + names[-1] if len(names) > 1 else "".join(names)


def cupy_status() -> tuple[bool, str]:
    """(usable, reason) for the GPU: CuPy imports AND a CUDA device answers."""
    return probe("cupy")


def get_backend(name: str | Backend | None = None) -> Backend:
    """The backend called ``name`` ("auto" or one of REGISTRY); default from $GPUBP_BACKEND.

    "auto" takes CuPy only when it imports and a CUDA device answers, else NumPy; ``.reason``
    says why. A named backend that cannot run here raises BackendUnavailable naming the cause.
    """
    if isinstance(name, Backend):
        return name
    from_env = not name and bool(os.environ.get(ENV_VAR))
    key = (name or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if key not in BACKEND_NAMES:
        where = f"${ENV_VAR}={key!r}" if from_env else repr(key)
        raise GpubpError(f"unknown backend {where}: choose one of {', '.join(BACKEND_NAMES)}")
    reason = f"asked for {key}" + (f" by ${ENV_VAR}" if from_env else "")
    if key == "auto":
        key, reason = _auto()
    if key not in _instances:
        ok, why = probe(key)
        if not ok:
            others = ", ".join(n for n in REGISTRY if n != key)
            raise BackendUnavailable(f"backend {key!r} cannot run here: {why}; use one of {others}")
        _instances[key] = _module(key).BACKEND()
    be = _instances[key]
    be.reason = reason
    return be


def reset() -> None:
    """Forget the backends made so far and every cached probe (after CuPy or a driver changed, and in tests)."""
    _instances.clear()
    for name in REGISTRY:
        cache_clear = getattr(_module(name).probe, "cache_clear", None)
        if cache_clear is not None:
            cache_clear()


def _auto() -> tuple[str, str]:
    """The first usable backend of AUTO_ORDER and why; NumPy always answers."""
    skipped = []
    for cand in AUTO_ORDER:
        ok, why = probe(cand)
        if ok:
            return cand, "auto: " + "; ".join(skipped + [why])
        skipped.append(f"{cand} not used: {why}")
    raise BackendUnavailable("no backend can run here: " + "; ".join(skipped))
