"""Writing files so that nothing is ever half-written: a temporary file beside the target,
renamed over it only when the write finished."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; when the block succeeds it is renamed to ``path``
    (atomically, on the same file system), when it raises it is removed and ``path`` is untouched.

    A ``path`` that is a stream or a device (/dev/null, /dev/stdout, a FIFO) is yielded as it is and
    written in place: renaming over it would replace the device with a regular file. A symbolic link
    to a regular file is followed, so the file it names is replaced and the link stays."""
    path = Path(path)
    if is_stream(path):
        sys.stdout.flush()  # the stream may be our own stdout: what was printed comes first
        yield path
        return
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result gets the usual mode
        yield Path(tmp)
        _fsync(tmp)  # a full disk can surface only here (delayed allocation, network file systems)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def is_stream(path) -> bool:
    """Whether ``path`` exists (through links) and is neither a regular file nor a directory."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one regular file (or would: the same path, links resolved)."""
    if a is None or b is None or is_stream(a) or is_stream(b):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def provenance(argv=None) -> dict:
    """What every JSON output starts with: the gpubp version, when (ISO 8601, UTC) and the command line."""
    from datetime import datetime, timezone

    from .version import __version__

    return {"gpubp_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "argv": list(argv) if argv is not None else None}


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temp file + rename)."""
    import json

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
