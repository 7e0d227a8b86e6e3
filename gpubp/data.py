"""MNIST: IDX parsing, the Nielsen split, and a verified download into a local cache.

Where the four files are looked for: ``data_dir`` (``--data-dir``), else $GPUBP_DATA_DIR, else
~/.cache/gpubp/mnist, which is filled by downloading from public mirrors in turn. Each file is
checked by the MD5 of its *decompressed* bytes, so a re-packed gzip still verifies. Downloads
go to a temporary file beside the target and are renamed only once verified. A cached file that
is unreadable, damaged or wrong is downloaded again; a user's directory is never written to, so a
bad file there is an error that names it.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import stat
import sys
import urllib.request
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .cache import cache_root
from .errors import DataError
from .fileio import atomic_path

# name -> MD5 of the decompressed IDX bytes
MNIST_FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# Tried in turn; the original site refuses most downloads, so it is last.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)
VALIDATION_ROWS = 10_000  # the last 10k training images are Nielsen's validation set
N_CLASSES = 10  # digits 0-9; the MNIST-format sets --no-verify is for (Fashion-MNIST, KMNIST) also have 10


class _Damaged(DataError):
    """A file that cannot be parsed whole (truncated, not gzip, not IDX), as opposed to an unreadable one."""


class _WrongFile(DataError):
    """A file that parses but is not the official MNIST file (its MD5 differs)."""


class _DownloadFailed(DataError):
    """No mirror gave a verified copy; ``reason`` says why without the advice, for callers that add their own."""

    def __init__(self, name: str, reason: str, advice: str):
        super().__init__(f"could not download {name}: {reason} ({advice})")
        self.reason = reason


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ---------------------------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------------------------

MAX_DIMS = 32  # NumPy's limit before 2.0; an MNIST-format file has 1 (labels) or 3 (images)
_CHUNK = 1 << 16  # bytes of compressed input fed to zlib at a time


def idx_length(head, name: str = "IDX data") -> int | None:
    """The exact byte length the IDX header at the start of ``head`` declares, or None while ``head``
    is too short to hold the header; _Damaged at once for a bad magic number, type code or rank."""
    if len(head) >= 2 and (head[0] != 0 or head[1] != 0):
        raise _Damaged(f"{name} is not an IDX file (bad magic number)")
    if len(head) < 4:
        return None
    code, ndim = head[2], head[3]
    if code not in _IDX_TYPES:
        raise _Damaged(f"{name} has unknown IDX type code 0x{code:02x}")
    if ndim == 0 or ndim > MAX_DIMS:
        raise _Damaged(f"{name} declares {ndim} dimensions: gpubp reads 1 to {MAX_DIMS}")
    header = 4 + 4 * ndim
    if len(head) < header:
        return None
    dims = np.frombuffer(bytes(head[4:header]), dtype=">u4")
    # Exact integer arithmetic: np.prod would wrap in int64 (2^31 * 2^31 * 4 == 0) and let a
    # bare header through. Compared before anything is allocated, so a huge header fails fast.
    return header + math.prod(int(d) for d in dims) * np.dtype(_IDX_TYPES[code]).itemsize


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """The array in IDX bytes: checks the magic, the type code, the dimensions and the exact length."""
    expected = idx_length(data, name)
    if expected is None:
        if len(data) < 4:
            raise _Damaged(f"{name} is not an IDX file (bad magic number)")
        raise _Damaged(f"{name} is truncated inside its header")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise _Damaged(f"{name} is {what}: {len(data)} bytes, expected {expected} for shape {dims}")
    dtype = np.dtype(_IDX_TYPES[data[2]])
    return np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def read_bytes(path: Path) -> bytes:
    """The bytes of an IDX file, decompressed if it is gzip."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gunzip_idx(raw, str(path))
    except (zlib.error, EOFError) as e:
        raise _Damaged(f"{path} is not a complete gzip file ({e})") from None


def gunzip_idx(raw: bytes, name: str) -> bytes:
    """Every gzip member of ``raw`` decompressed and joined, as gzip.decompress does, but never more
    than the IDX header at the start declares (plus one piece), so a small file cannot ask for
    unbounded memory, and a bad magic number stops it at once; in time linear in the file (CPython's
    gzip.decompress copies the rest of the input at each member: quadratic for many of them)."""
    view, out, pos, limit = memoryview(raw), bytearray(), 0, None
    d, pending = None, b""  # d: the member being decompressed, None between members
    while True:
        if not pending:
            if pos >= len(raw):
                break
            pending = view[pos:pos + _CHUNK]
            pos += len(pending)
        if d is None:
            if pending[0] == 0:  # zero padding after the last member, which gzip tolerates, and nothing else
                if bytes(pending).strip(b"\0") or raw.count(0, pos) != len(raw) - pos:
                    raise EOFError("data after the last member is neither a member nor zero padding")
                break
            d = zlib.decompressobj(wbits=31)  # 31: one gzip member
        out += d.decompress(pending, 4 * _CHUNK)
        pending = d.unconsumed_tail
        if limit is None:
            limit = idx_length(out, name)
        if limit is not None and len(out) > limit:
            raise _Damaged(f"{name} is longer than its header says: more than {limit} bytes decompressed")
        if d.eof:
            d, pending = None, d.unused_data
    if d is not None:
        raise EOFError("the compressed data ends before the end of its stream")
    return bytes(out)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# ---------------------------------------------------------------------------------------------
# Finding, downloading and loading MNIST
# ---------------------------------------------------------------------------------------------

def _find(directory: Path, name: str) -> Path | None:
    """``name``.gz or ``name`` in ``directory``. Path.is_file raises on EACCES (before Python 3.14)."""
    try:
        return next((c for c in (directory / f"{name}.gz", directory / name) if c.is_file()), None)
    except OSError as e:
        raise DataError(f"cannot look for {name} in {directory} ({e.strerror or e}): check its permissions") from None


def download(name: str, directory: Path, mirrors=None, log=None, timeout: float = 60.0) -> Path:
    """Fetch ``name``.gz into ``directory`` from the first mirror that serves a verified copy.

    A network failure moves on to the next mirror; a checksum mismatch downloads once more,
    then fails; a local write failure (directory, temporary file, disk) fails at once with
    advice about the cache. Nothing but a verified file is ever left under the final name.
    """
    mirrors = list(mirrors or _mirrors())
    log = log or (lambda msg: print(msg, file=sys.stderr))
    with _writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{name}.gz"
    failures, mismatches = [], 0
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{name}.gz"
        while True:
            log(f"downloading {url}")
            try:
                _fetch_verified(url, final, name, timeout)
                return final
            except _Mismatch as e:
                mismatches += 1
                if mismatches >= 2:
                    raise _DownloadFailed(name, f"{url} failed its MD5 check twice (got {e})",
                                          "the mirror may be corrupt: try again later or pass --data-dir") from None
            except _NetworkError as e:
                failures.append(f"{url}: {e}")
                log(f"  failed ({e}); trying the next mirror")
                break
    raise _DownloadFailed(name, "; ".join(failures),
                          f"check your connection, or put the four MNIST files ({', '.join(MNIST_FILES)}, each "
                          f"may be .gz) in a directory and set GPUBP_DATA_DIR to it, or pass --data-dir")


class _Mismatch(Exception):
    """A download that arrived whole but is not the file we asked for."""


class _NetworkError(Exception):
    """A mirror that failed to serve the file. Deliberately not an OSError, so that every OSError
    escaping a download is a local one (directory, temporary file, disk)."""


def _fetch_verified(url: str, final: Path, name: str, timeout: float) -> None:
    """Download into a temporary file beside ``final``, renamed over it only if its MD5 matches."""
    with _writing(final.parent), atomic_path(final) as tmp:
        _fetch(url, tmp, timeout)
        try:
            got = md5(read_bytes(tmp))
        except DataError as e:  # not gzip, or a truncated one
            got = f"unreadable ({e})"
        if got != MNIST_FILES[name]:
            raise _Mismatch(got)


def _fetch(url: str, dest: Path, timeout: float) -> None:
    """Stream ``url`` into ``dest``; a connection that drops before Content-Length is an error."""
    with open(dest, "wb") as out, _from_network(urllib.request.urlopen, url, timeout=timeout) as resp:
        size, total = resp.headers.get("Content-Length"), 0
        while chunk := _from_network(resp.read, 1 << 20):
            out.write(chunk)
            total += len(chunk)
        if size is not None and size.isdigit() and total != int(size):
            raise _NetworkError(f"connection dropped after {total} of {size} bytes")


def _from_network(call, *args, **kwargs):
    """call(*args, **kwargs), its failures re-raised as _NetworkError: URLError, HTTPError, timeouts
    and resets are OSErrors, a bad status line an HTTPException, a malformed URL a ValueError."""
    try:
        return call(*args, **kwargs)
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise _NetworkError(getattr(e, "reason", None) or e) from None


@contextmanager
def _writing(directory: Path):
    """An OSError inside is the local file system's (network errors arrive as _NetworkError)."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        if isinstance(e, FileExistsError) or (os.path.exists(directory) and not os.path.isdir(directory)):
            reason = f"{directory} is a file, not a directory"
        raise DataError(f"the download cache {directory} cannot be written ({reason}): set XDG_CACHE_HOME "
                        f"to a writable directory, or pass --data-dir with a directory holding the four "
                        f"MNIST files") from None


def _mirrors():
    """$GPUBP_MNIST_MIRRORS (comma-separated; spaces around the commas allowed), else MIRRORS."""
    env = [m.strip() for m in os.environ.get("GPUBP_MNIST_MIRRORS", "").split(",")]
    return [m for m in env if m] or MIRRORS


def resolve_dir(data_dir=None) -> tuple[Path, bool]:
    """(directory, may_download): --data-dir, then $GPUBP_DATA_DIR, then the download cache."""
    directory, origin = _resolve(data_dir)
    return directory, origin is None


def _resolve(data_dir) -> tuple[Path, str | None]:
    """(directory, where it came from: "--data-dir", "$GPUBP_DATA_DIR", or None for the cache)."""
    if data_dir:
        return Path(data_dir).expanduser(), "--data-dir"
    if os.environ.get("GPUBP_DATA_DIR"):
        return Path(os.environ["GPUBP_DATA_DIR"]).expanduser(), "$GPUBP_DATA_DIR"
    return cache_root() / "mnist", None


def _check_user_dir(directory: Path, origin: str) -> None:
    """A user-given directory must exist and be one; the advice names the way it was given."""
    fix = ("pass --data-dir the directory that holds the four MNIST files" if origin == "--data-dir" else
           "set GPUBP_DATA_DIR to the directory that holds the four MNIST files, or unset it to download them")
    try:
        if stat.S_ISDIR(directory.stat().st_mode):
            return
        what = "is a file, not a directory"
    except (FileNotFoundError, NotADirectoryError):
        what = "does not exist"
    except OSError as e:  # EACCES on a parent: Path.is_dir would raise it, os.path.isdir would say "missing"
        what, fix = f"cannot be read ({e.strerror or e})", "check the permissions of it and its parents"
    raise DataError(f"data directory {directory} (from {origin}) {what}: {fix}")


def load_idx_files(data_dir=None, verify=True, log=None) -> dict[str, np.ndarray]:
    """{name: array} for the four MNIST IDX files, verified by MD5 unless verify=False."""
    return {name: array for name, (_, array) in _load_files(data_dir, verify, log).items()}


def _load_files(data_dir, verify, log) -> dict[str, tuple[Path, np.ndarray]]:
    """{name: (path, array)}: the paths are kept so that later checks can name the file."""
    directory, origin = _resolve(data_dir)
    if origin is not None:
        _check_user_dir(directory, origin)
    files = {}
    for name in MNIST_FILES:
        path = _find(directory, name)
        if origin is None:
            path, array = _load_cached(path, name, directory, verify, log)
        elif path is None:
            raise DataError(f"{name}(.gz) not found in {directory} (from {origin}): put the four MNIST files there")
        else:
            array = _load_user_file(path, verify)
        files[name] = (path, array)
    return files


# The arrays of files read and checked in this process, by path and by what the file system says of
# the file (device, inode, size, modification and change times): loading MNIST again in one process
# (the tests, a notebook, commands run in-process) skips the gunzip and the MD5, a third of a second.
# Any write to a file changes its times, so a changed file is read again.
_CHECKED: dict[tuple[str, str, str | None], tuple[tuple, np.ndarray]] = {}


def _read_checked(path: Path, name: str, verify: bool) -> np.ndarray:
    """The array in ``path`` (a copy the caller owns). Parsed before the MD5 check, so a truncated
    official file is called damaged rather than "not the official file"."""
    try:
        st = path.stat()
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except OSError:
        stamp = None  # read_bytes says what is wrong
    key = (str(path), name, MNIST_FILES.get(name) if verify else None)  # the MD5 it was checked against
    hit = _CHECKED.get(key)
    if stamp is not None and hit is not None and hit[0] == stamp:
        return hit[1].copy()
    data = read_bytes(path)
    array = parse_idx(data, str(path))
    if verify and md5(data) != MNIST_FILES[name]:
        raise _WrongFile(f"{path} failed its MD5 check: it is not the official MNIST file")
    if stamp is not None:
        _CHECKED.pop(key, None)
        _CHECKED[key] = (stamp, array.copy())
        while len(_CHECKED) > 8:  # the four MNIST files of two directories
            _CHECKED.pop(next(iter(_CHECKED)))
    return array


def _load_user_file(path: Path, verify: bool) -> np.ndarray:
    """A file in the user's own directory: never downloaded over, so the error says how to fix it."""
    name = path.name.removesuffix(".gz")
    try:
        return _read_checked(path, name, verify)
    except _Damaged as e:
        raise DataError(f"{e}: the file is damaged or truncated; replace it with a good copy") from None
    except _WrongFile as e:
        raise DataError(f"{e}: replace it with the official file, or use --no-verify for other "
                        f"MNIST-format data sets") from None


def _load_cached(path: Path | None, name: str, directory: Path, verify: bool, log) -> tuple[Path, np.ndarray]:
    """(path, array) of a cached file; a missing, unreadable, damaged or wrong one is replaced by a
    verified download."""
    if path is not None:
        try:
            return path, _read_checked(path, name, verify)
        except DataError as e:
            problem = f"{e}: the cached file is damaged or truncated" if isinstance(e, _Damaged) else str(e)
    try:
        fresh = download(name, directory, log=log)
    except _DownloadFailed as e:
        if path is None:
            raise
        raise DataError(f"{problem}, and a fresh copy could not be downloaded ({e.reason}): delete it and "
                        f"run again when a mirror is reachable, or pass --data-dir with the four MNIST files") from None
    return fresh, _read_checked(fresh, name, verify)


def load_mnist(data_dir=None, verify=True, log=None) -> dict:
    """Nielsen's split of MNIST: {"train": (X, y) 50k, "validation": (X, y) 10k, "test": (X, y) 10k}.

    X is float32 in [0, 1], shape (m, rows*cols) (784 for MNIST); y is int64 labels.
    verify=False accepts any directory with the same four IDX names (e.g. Fashion-MNIST).
    """
    files = _load_files(data_dir, verify, log)
    _check_same_image_shape(files["train-images-idx3-ubyte"], files["t10k-images-idx3-ubyte"])
    sets = {split: _pair(files[f"{prefix}-images-idx3-ubyte"], files[f"{prefix}-labels-idx1-ubyte"])
            for split, prefix in (("train", "train"), ("test", "t10k"))}
    X, y = sets["train"]
    if len(X) <= VALIDATION_ROWS:
        raise DataError(f"{files['train-images-idx3-ubyte'][0]} has {len(X)} images: at least {VALIDATION_ROWS + 1} "
                        f"are needed to hold out a {VALIDATION_ROWS}-image validation set")
    cut = len(X) - VALIDATION_ROWS
    return {"train": (X[:cut], y[:cut]), "validation": (X[cut:], y[cut:]), "test": sets["test"]}


# Checks that matter under verify=False, where any MNIST-format file is accepted: each error names
# the file, since by the time training runs nobody remembers which file a shape came from.

def _pair(image_file: tuple[Path, np.ndarray], label_file: tuple[Path, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(X float32 (m, pixels) in [0, 1], y int64 (m,)) from one images file and its labels file."""
    (ipath, images), (lpath, labels) = image_file, label_file
    _check_images(ipath, images)
    _check_labels(lpath, labels)
    if len(images) != len(labels):
        raise DataError(f"{ipath} has {len(images)} images but {lpath} has {len(labels)} labels: "
                        f"they must pair up one to one")
    X = images.reshape(len(images), -1).astype(np.float32)
    X /= np.float32(255.0)
    return X, labels.astype(np.int64)


def _check_images(path: Path, images: np.ndarray) -> None:
    """load_mnist promises X in [0, 1], so pixels must be bytes; an empty set would fail later, far away."""
    if images.ndim != 3:
        raise DataError(f"{path} holds an array of shape {images.shape}: "
                        f"MNIST-format images are (count, rows, columns)")
    if images.dtype != np.uint8:
        raise DataError(f"{path} holds {images.dtype} pixels: MNIST-format images are unsigned bytes (IDX type 0x08)")
    if len(images) == 0:
        raise DataError(f"{path} holds no images: it needs at least one")
    if images.shape[1] * images.shape[2] == 0:
        raise DataError(f"{path} holds images of {images.shape[1]}x{images.shape[2]} pixels: they need at least one")


def _check_labels(path: Path, labels: np.ndarray) -> None:
    if labels.ndim != 1:
        raise DataError(f"{path} holds an array of shape {labels.shape}: MNIST-format labels are one-dimensional")
    if labels.dtype.kind not in "iu":  # a float label would be truncated (3.7 -> 3) or, if NaN, garbage
        raise DataError(f"{path} holds {labels.dtype} labels: MNIST-format labels are integers (IDX type 0x08)")
    bad = np.flatnonzero((labels < 0) | (labels >= N_CLASSES))
    if bad.size:
        raise DataError(f"{path} has label {labels[bad[0]]} at index {bad[0]} ({bad.size} out of range in all): "
                        f"MNIST-format labels are 0 to {N_CLASSES - 1} ({N_CLASSES} classes)")


def _check_same_image_shape(train: tuple[Path, np.ndarray], test: tuple[Path, np.ndarray]) -> None:
    """The network's input width comes from the training images; test images of another shape
    would otherwise be found only after training, by a failed product."""
    (tr_path, tr), (te_path, te) = train, test
    if tr.ndim == te.ndim == 3 and tr.shape[1:] != te.shape[1:]:
        raise DataError(f"{tr_path} holds {tr.shape[1]}x{tr.shape[2]} images but {te_path} holds "
                        f"{te.shape[1]}x{te.shape[2]}: the training and test images must have the same shape")
