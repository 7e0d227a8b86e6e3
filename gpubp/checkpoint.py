"""Model files: one .npz (never pickled), written to a temporary file and renamed into place.

Version 2 holds a format tag, the version, ``meta`` (JSON: the gpubp version and time that wrote
it, the model's config, the optimizer's config, the epochs trained, the batch size, the shuffle's
RNG state) and arrays: ``params`` (every W[l] row-major, then every b[l]) and the optimizer's
state as ``optimizer_<name>``, every member stored uncompressed. Version 1 files (sizes, cost,
dtype, params) still load, as a sigmoid network with no optimizer state.

This module knows the file format, not the network: gpubp.network builds the contents and
checks them against the sizes they declare before it allocates anything.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np

from .errors import GpubpError, ModelFileError
from .fileio import atomic_path, provenance

FORMAT = "gpubp-model"
VERSION = 2
READS = (1, 2)


def save(path, meta: dict, arrays: dict) -> Path:
    """Write ``meta`` (JSON-able) and ``arrays`` to ``path`` atomically."""
    path = Path(path)
    if path.is_dir():
        raise GpubpError(f"cannot save the model to {path}: it is a directory")
    if not path.parent.is_dir():
        raise GpubpError(f"cannot save the model to {path}: directory {path.parent} does not exist")
    meta = {**{k: v for k, v in provenance().items() if k != "argv"}, **meta}  # which gpubp wrote it, and when
    members = {"format": np.array(FORMAT), "version": np.array(VERSION), "meta": np.array(json.dumps(meta)), **arrays}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **members)
    return path


def load(path) -> tuple[dict, dict]:
    """(meta, arrays) of the model file ``path``; ModelFileError if it is not a whole gpubp model."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory, not a model file: give the .npz that --save wrote")
    if not path.is_file():
        if path.exists():  # /dev/zero, a FIFO: reading one would never end, or block
            raise ModelFileError(f"{path} is not a regular file (a device, FIFO or socket): give the .npz that "
                                 f"--save wrote")
        raise ModelFileError(f"model file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a gpubp model: not an .npz (zip) archive")
    try:
        _check_members(path)
        with np.load(path, allow_pickle=False) as z:
            fields = {k: z[k] for k in z.files}
    except MemoryError:
        raise ModelFileError(f"{path} asks for more memory than there is: the file is damaged") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError, NotImplementedError) as e:
        # RuntimeError: an encrypted member; NotImplementedError: a zip feature (flag bits, version) zipfile lacks
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelFileError(f"{path} is not a readable gpubp model (.npz): {why}") from None
    if fields.get("format") is None or str(fields["format"]) != FORMAT:
        raise ModelFileError(f"{path} is not a gpubp model file (no '{FORMAT}' tag)")
    version = fields.get("version")
    version = int(version) if version is not None and version.shape == () and version.dtype.kind in "iu" else None
    if version not in READS:
        raise ModelFileError(f"{path} has model format version {version}; this gpubp reads versions "
                             f"{', '.join(map(str, READS))}")
    meta = _meta_v1(path, fields) if version == 1 else _meta_v2(path, fields)
    params = fields.get("params")
    if params is None or params.ndim != 1 or params.dtype.kind != "f":
        raise ModelFileError(f"{path} has no flat floating-point parameter vector: the file is damaged")
    if not np.isfinite(params).all():
        raise ModelFileError(f"{path} holds NaN or infinite parameters")
    dtype = meta["model"]["dtype"]
    if dtype in ("float32", "float64") and params.size and np.abs(params).max() > np.finfo(dtype).max:
        raise ModelFileError(f"{path} holds parameters as large as {np.abs(params).max():.3g}, beyond {dtype}'s "
                             f"range: the file is damaged")
    arrays = {k: v for k, v in fields.items() if k not in ("format", "version", "meta", "sizes", "cost", "dtype")}
    return meta, arrays


def _check_members(path: Path) -> None:
    """Before np.load allocates anything: every member is stored uncompressed (as np.savez writes it)
    and together they hold no more than the file does, and each .npy header declares exactly the
    bytes its member holds. So no array can be larger than the file, and a small file cannot ask
    for huge memory with a forged header or zip directory."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                raise ModelFileError(f"{path}: {info.filename} is compressed, and gpubp writes model files "
                                     f"uncompressed: it was not written by gpubp (re-save it with Network.save)")
        if sum(i.file_size for i in infos) > path.stat().st_size:
            raise ModelFileError(f"{path}: its zip directory declares {sum(i.file_size for i in infos):,} bytes "
                                 f"of members, more than the file's {path.stat().st_size:,}: the file is damaged")
        for info in infos:
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in read:
                    raise ModelFileError(f"{path}: {info.filename} has .npy format {version}, which gpubp "
                                         f"does not write")
                shape, _, dtype = read[version](f)
                declared = math.prod(shape) * dtype.itemsize  # exact: Python integers
                held = info.file_size - f.tell()
            if declared != held:
                raise ModelFileError(f"{path}: {info.filename} declares {declared:,} bytes of {dtype} {shape} but "
                                     f"holds {held:,}: the file is damaged")


def _meta_v2(path, fields) -> dict:
    try:
        meta = json.loads(str(fields["meta"]), parse_constant=_not_a_number, parse_float=_finite)
        model = meta["model"]
        if not isinstance(model, dict) or not {"sizes", "cost", "dtype"} <= model.keys():
            raise KeyError("model")
    except RecursionError:
        raise ModelFileError(f"{path} has a model description nested too deeply to read: the file is damaged") from None
    except (KeyError, ValueError, TypeError) as e:
        raise ModelFileError(f"{path} has no readable model description ({e}): the file is damaged") from None
    why = _bad_meta(meta)
    if why:
        raise ModelFileError(f"{path} is inconsistent: {why}")
    return meta


def _not_a_number(text):
    raise ValueError(f"{text} is not a number gpubp writes")


def _finite(text) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _count(value, lo) -> bool:
    """A whole number >= lo (JSON's true and false are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo


def _bad_meta(meta) -> str:
    """What in a version-2 ``meta`` is out of range, or ""; checked before any of it is used, so
    nothing later meets a negative epoch count, a huge integer or an RNG state that does not fit."""
    model = meta["model"]
    sizes = model["sizes"]
    if not isinstance(sizes, list) or not all(_count(s, 1) for s in sizes):
        return f"sizes {str(sizes)[:60]} are not positive whole numbers"
    if model.get("seed") is not None and not _count(model["seed"], 0):
        return f"seed {str(model['seed'])[:40]} is not a whole number >= 0"
    if "epochs_trained" in meta and not _count(meta["epochs_trained"], 0):
        return f"epochs trained {str(meta['epochs_trained'])[:40]} is not a whole number >= 0"
    if meta.get("mini_batch_size") is not None and not _count(meta["mini_batch_size"], 1):
        return f"batch size {str(meta['mini_batch_size'])[:40]} is not a whole number >= 1"
    if meta.get("optimizer") is not None and not isinstance(meta["optimizer"], dict):
        return "the optimizer's description is not a mapping"
    if meta.get("rng"):
        try:  # the state must fit the generator it names (128-bit words for PCG64)
            np.random.default_rng(0).bit_generator.state = meta["rng"]
        except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as e:
            return f"the shuffle's random state is unusable ({str(e)[:80]})"
    return ""


def _meta_v1(path, fields) -> dict:
    missing = {"sizes", "cost", "dtype", "params"} - fields.keys()
    if missing:
        raise ModelFileError(f"{path} is missing {', '.join(sorted(missing))}: the file is damaged")
    sizes = fields["sizes"]
    if sizes.ndim != 1 or sizes.dtype.kind not in "iu":
        raise ModelFileError(f"{path} has malformed sizes")
    return {"model": {"sizes": [int(s) for s in sizes], "cost": str(fields["cost"]), "dtype": str(fields["dtype"])}}
