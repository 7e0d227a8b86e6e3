"""Model files: one .npz (never pickled), written to a temporary file and renamed into place.

Contents: format tag, format version, sizes, cost name, dtype name, and the flat parameter
vector (every W[l] row-major, then every b[l]), which is all a Network needs.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .errors import GpubpError, ModelFileError
from .fileio import atomic_path

FORMAT = "gpubp-model"
VERSION = 1


def save(net, path) -> Path:
    """Write ``net`` to ``path`` atomically: a crash leaves the old file or none, never half of one."""
    path = Path(path)
    if path.is_dir():
        raise GpubpError(f"cannot save the model to {path}: it is a directory")
    if not path.parent.is_dir():
        raise GpubpError(f"cannot save the model to {path}: directory {path.parent} does not exist")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, format=np.array(FORMAT), version=np.array(VERSION), sizes=np.array(net.sizes, np.int64),
                 cost=np.array(net.cost.name), dtype=np.array(net.dtype.name), params=net.get_params())
    return path


def load(path, backend=None):
    """The Network stored in ``path``; ModelFileError if it is not a whole, consistent gpubp model."""
    from .network import Network

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a gpubp model: not an .npz (zip) archive")
    try:
        with np.load(path, allow_pickle=False) as z:
            fields = {k: z[k] for k in ("format", "version", "sizes", "cost", "dtype", "params") if k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelFileError(f"{path} is not a readable gpubp model (.npz): {why}") from None
    if fields.get("format") is None or str(fields["format"]) != FORMAT:
        raise ModelFileError(f"{path} is not a gpubp model file (no '{FORMAT}' tag)")
    missing = {"version", "sizes", "cost", "dtype", "params"} - fields.keys()
    if missing:
        raise ModelFileError(f"{path} is missing {', '.join(sorted(missing))}: the file is damaged")
    if int(fields["version"]) != VERSION:
        raise ModelFileError(f"{path} has model format version {int(fields['version'])}; this gpubp reads version {VERSION}")
    sizes, params = fields["sizes"], fields["params"]
    if sizes.ndim != 1 or sizes.dtype.kind not in "iu" or params.ndim != 1 or params.dtype.kind != "f":
        raise ModelFileError(f"{path} has malformed sizes or parameters")
    try:
        net = Network([int(s) for s in sizes], cost=str(fields["cost"]), backend=backend, dtype=str(fields["dtype"]))
        net.set_params(params)
    except GpubpError as e:
        raise ModelFileError(f"{path} is inconsistent: {e}") from None
    if not np.isfinite(params).all():
        raise ModelFileError(f"{path} holds NaN or infinite parameters")
    return net
