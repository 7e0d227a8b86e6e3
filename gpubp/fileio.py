"""Writing files so that nothing is ever half-written: a temporary file beside the target,
renamed over it only when the write finished."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; when the block succeeds it is renamed to ``path``
    (atomically, on the same file system), when it raises it is removed and ``path`` is untouched.

    A ``path`` that is a stream, a device or a descriptor (/dev/null, /dev/stdout, a FIFO) is written
    in place, not renamed over (that would replace the device with a regular file, or cut the
    descriptor off from its file): the block writes a temporary file elsewhere, whose bytes go to
    ``path`` when the block succeeds. A symbolic link to a regular file is followed, so the file it
    names is replaced and the link stays."""
    path = Path(path)
    fd = _descriptor(path)
    if fd is not None or is_stream(path):
        with tempfile.TemporaryDirectory(prefix="gpubp-") as d:  # whole first, then written in one go
            tmp = Path(d) / path.name
            yield tmp
            sys.stdout.flush()  # the stream may be our own stdout: what was printed comes first
            sys.stderr.flush()
            with open(tmp, "rb") as src, open(os.dup(fd), "ab") if fd is not None else open(path, "ab") as dst:
                shutil.copyfileobj(src, dst)  # a dup shares the descriptor's offset with what prints after
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


def _descriptor(path) -> int | None:
    """The descriptor of this process that ``path`` names (/dev/stdout, /dev/fd/1, /proc/self/fd/1), or
    None. Its file may be a regular one (stdout redirected to it): renaming over that would cut the
    descriptor off, and opening the path anew would write at an offset of its own."""
    path, ours = str(path), ("/proc/self/fd/", f"/proc/{os.getpid()}/fd/")
    for _ in range(40):  # links in a chain, as the kernel allows
        for prefix in ours:
            if path.startswith(prefix) and path[len(prefix):].isdigit():
                return int(path[len(prefix):])
        if not os.path.islink(path):
            return None
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    return None


def in_place(path) -> bool:
    """Whether ``path`` is written in place by atomic_path: a stream, a device or a descriptor of ours."""
    return is_stream(path) or _descriptor(path) is not None


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one regular file (or would: the same path, links resolved)."""
    if a is None or b is None or in_place(a) or in_place(b):
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
