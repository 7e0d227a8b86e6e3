"""Where gpubp keeps what it makes once and reuses: compiled kernels and the downloaded MNIST."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$XDG_CACHE_HOME/gpubp, else ~/.cache/gpubp."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "gpubp"
