"""IDX parsing, MD5 verification, the download path against a local server, and the Nielsen split."""

import errno
import gzip
import hashlib
import http.server
import os
import re
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_equal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpubp import data as D
from gpubp import fileio
from gpubp.errors import DataError


def idx_bytes(arr: np.ndarray, code=0x08) -> bytes:
    dt = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    return struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(dt).tobytes()


GOOD = idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))


def test_parse_good_idx_of_several_types():
    a = D.parse_idx(GOOD)
    assert a.shape == (2, 3, 4) and a.dtype == np.uint8 and a[1, 2, 3] == 23
    f = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    assert_equal(D.parse_idx(idx_bytes(f, 0x0D)), f)
    i = np.array([-5, 70000], dtype=np.int32)
    assert_equal(D.parse_idx(idx_bytes(i, 0x0C)), i)


@pytest.mark.parametrize("blob,match", [
    (GOOD[:-1], "truncated"),
    (GOOD[:6], "truncated inside its header"),
    (GOOD + b"\0", "longer than"),
    (b"\x01" + GOOD[1:], "bad magic"),
    (GOOD[:2] + b"\x07" + GOOD[3:], "type code 0x07"),
    (b"", "bad magic"),
])
def test_parse_bad_idx_says_what_is_wrong(blob, match):
    with pytest.raises(DataError, match=match):
        D.parse_idx(blob)


def test_huge_declared_shape_fails_fast_without_allocating():
    # 10^12 one-byte elements declared, 8 bytes present: the length check must come first
    blob = struct.pack(">BBBB3I", 0, 0, 0x08, 3, 10**4, 10**4, 10**4) + bytes(8)
    with pytest.raises(DataError, match="truncated.*expected 1000000000016"):
        D.parse_idx(blob, "huge")


def test_declared_size_that_overflows_int64_is_not_accepted():
    # 2^31 * 2^31 * 4 = 2^64 wraps to 0 in int64: a bare header must not pass as an empty array
    blob = struct.pack(">BBBB3I", 0, 0, 0x08, 3, 2**31, 2**31, 4)
    with pytest.raises(DataError, match="truncated"):
        D.parse_idx(blob, "wrapped")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_corruption_raises_only_the_documented_error(data):
    blob = bytearray(GOOD)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        if kind == "flip" and blob:
            blob[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del blob[pos:pos + data.draw(st.integers(1, 8))]
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        arr = D.parse_idx(bytes(blob))
    except DataError:
        return
    assert arr.size * arr.dtype.itemsize + 4 + 4 * arr.ndim == len(blob)  # accepted only if self-consistent


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_corrupt_gzip_files_raise_data_error(tmp_path_factory, junk):
    p = tmp_path_factory.mktemp("gz") / "x.gz"
    p.write_bytes(gzip.compress(GOOD)[: len(junk) % 40] + junk)  # a cut gzip stream, then junk
    data = p.read_bytes()
    try:
        arr = D.parse_idx(D.read_bytes(p), str(p))
    except DataError as e:
        assert str(p) in str(e)  # the one-line error names the file
        return
    # accepted only when the bytes are no gzip at all and happen to be a whole, consistent IDX file
    assert data[:2] != b"\x1f\x8b" and arr.size * arr.dtype.itemsize + 4 + 4 * arr.ndim == len(data)


# ---------------------------------------------------------------------------------------------
# A small MNIST-format data set, with its checksums patched in, served from 127.0.0.1
# ---------------------------------------------------------------------------------------------

def tiny_mnist(n_train=10_050, n_test=30):
    rng = np.random.default_rng(0)
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        files[f"{prefix}-images-idx3-ubyte"] = idx_bytes(rng.integers(0, 256, (n, 2, 3), dtype=np.uint8))
        files[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(rng.integers(0, 10, n, dtype=np.uint8))
    return files


@pytest.fixture
def tiny(monkeypatch):
    files = tiny_mnist()
    monkeypatch.setattr(D, "MNIST_FILES", {k: hashlib.md5(v).hexdigest() for k, v in files.items()})
    return files


class Server:
    """Serves /<name>.gz from a dict; ``mode`` per name: good, corrupt, corrupt-once, drop, missing."""

    def __init__(self, files):
        self.files, self.mode, self.hits = files, {}, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                name = self.path.strip("/").removesuffix(".gz")
                outer.hits.append(name)
                mode = outer.mode.get(name, "good")
                if name not in outer.files or mode == "missing":
                    self.send_error(404)
                    return
                body = gzip.compress(outer.files[name], mtime=0)
                if mode == "corrupt" or (mode == "corrupt-once" and outer.hits.count(name) == 1):
                    body = gzip.compress(outer.files[name][:-1] + b"\x99", mtime=0)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "drop":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection drops mid-file
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        # serve_forever looks for shutdown() every poll_interval (0.5 s by default: half a second a test)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def leftovers(d: Path):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


NAME = "t10k-labels-idx1-ubyte"


def test_download_good_file(tiny, tmp_path):
    with Server(tiny) as s:
        path = D.download(NAME, tmp_path, mirrors=[s.url], log=lambda m: None)
    assert path == tmp_path / f"{NAME}.gz"
    assert D.read_bytes(path) == tiny[NAME]
    assert leftovers(tmp_path) == [f"{NAME}.gz"]


def test_download_moves_to_the_next_mirror(tiny, tmp_path):
    with Server(tiny) as bad, Server(tiny) as good:
        bad.mode[NAME] = "missing"
        D.download(NAME, tmp_path, mirrors=[bad.url, good.url], log=lambda m: None)
    assert bad.hits == [NAME] and good.hits == [NAME]
    assert leftovers(tmp_path) == [f"{NAME}.gz"]


def test_corrupt_file_is_downloaded_once_more_then_fails(tiny, tmp_path):
    with Server(tiny) as s:
        s.mode[NAME] = "corrupt"
        with pytest.raises(DataError, match="MD5 check twice"):
            D.download(NAME, tmp_path, mirrors=[s.url], log=lambda m: None)
        assert s.hits == [NAME, NAME]
    assert leftovers(tmp_path) == []


def test_one_corrupt_download_is_retried(tiny, tmp_path):
    with Server(tiny) as s:
        s.mode[NAME] = "corrupt-once"
        D.download(NAME, tmp_path, mirrors=[s.url], log=lambda m: None)
        assert s.hits == [NAME, NAME]
    assert leftovers(tmp_path) == [f"{NAME}.gz"]


def test_dropped_connection_leaves_nothing_half_written(tiny, tmp_path):
    with Server(tiny) as s:
        s.mode[NAME] = "drop"
        with pytest.raises(DataError, match="could not download"):
            D.download(NAME, tmp_path, mirrors=[s.url], log=lambda m: None)
    assert leftovers(tmp_path) == []


def test_unreachable_mirror_is_a_clear_error(tiny, tmp_path):
    with Server(tiny) as s:
        url = s.url
    with pytest.raises(DataError, match="could not download.*--data-dir") as e:
        D.download(NAME, tmp_path, mirrors=[url], log=lambda m: None, timeout=5)
    assert "set GPUBP_DATA_DIR" in str(e.value) and all(name in str(e.value) for name in D.MNIST_FILES)


def test_load_mnist_fills_the_cache_by_download_then_reuses_it(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("GPUBP_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with Server(tiny) as s:
        monkeypatch.setenv("GPUBP_MNIST_MIRRORS", s.url)
        d = D.load_mnist(log=lambda m: None)
        assert sorted(s.hits) == sorted(tiny)
        D.load_mnist(log=lambda m: None)  # second load: from the cache
        assert len(s.hits) == 4
        # a damaged cached file is replaced by a fresh download
        cached = tmp_path / "gpubp" / "mnist" / "t10k-images-idx3-ubyte.gz"
        cached.write_bytes(gzip.compress(b"junk"))
        D.load_mnist(log=lambda m: None)
        assert len(s.hits) == 5
    X, y = d["train"]
    assert X.shape == (10_050 - 10_000, 6) and X.dtype == np.float32 and 0 <= X.min() and X.max() <= 1
    assert d["validation"][0].shape == (10_000, 6) and d["test"][0].shape == (30, 6)
    assert y.dtype == np.int64
    raw = D.parse_idx(tiny["train-images-idx3-ubyte"])
    assert_equal(d["validation"][0][-1] * 255, raw[-1].ravel().astype(np.float32))


def test_explicit_directory_is_verified_and_never_downloaded(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUBP_MNIST_MIRRORS", "http://127.0.0.1:9/")
    for name, blob in tiny.items():
        (tmp_path / name).write_bytes(blob)  # uncompressed files are accepted too
    assert D.load_mnist(tmp_path)["test"][0].shape == (30, 6)
    (tmp_path / NAME).write_bytes(tiny[NAME][:-1] + b"\x05")
    with pytest.raises(DataError, match="MD5.*--no-verify"):
        D.load_mnist(tmp_path)
    assert D.load_mnist(tmp_path, verify=False)["test"][1][-1] == 5
    (tmp_path / NAME).unlink()
    with pytest.raises(DataError, match="not found in"):
        D.load_mnist(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        D.load_mnist(tmp_path / "nowhere")


def test_a_file_loaded_again_is_read_again_once_it_changed(tiny, tmp_path):
    """A process keeps the files it checked, by what the file system says of them: a file rewritten
    in place (same size, its modification time put back) is read again, and no caller's changes to
    the arrays it got reach the next load."""
    for name, blob in tiny.items():
        (tmp_path / name).write_bytes(blob)
    last = int(D.parse_idx(tiny[NAME])[-1])
    other = (last + 1) % 10
    first = D.load_mnist(tmp_path, verify=False)
    first["test"][1][:] = other  # the caller's own arrays
    assert D.load_mnist(tmp_path, verify=False)["test"][1][-1] == last
    st = os.stat(tmp_path / NAME)
    (tmp_path / NAME).write_bytes(tiny[NAME][:-1] + bytes([other]))
    os.utime(tmp_path / NAME, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert D.load_mnist(tmp_path, verify=False)["test"][1][-1] == other


def test_data_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUBP_DATA_DIR", str(tmp_path / "env"))
    assert D.resolve_dir(tmp_path / "arg") == (tmp_path / "arg", False)
    assert D.resolve_dir(None) == (tmp_path / "env", False)
    monkeypatch.delenv("GPUBP_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert D.resolve_dir(None) == (tmp_path / "gpubp" / "mnist", True)


def test_real_mnist_split(mnist):
    X, y = mnist["train"]
    assert X.shape == (50_000, 784) and mnist["validation"][0].shape == (10_000, 784)
    assert mnist["test"][0].shape == (10_000, 784)
    assert X.dtype == np.float32 and X.min() == 0.0 and X.max() == 1.0
    assert list(y[:5]) == [5, 0, 4, 1, 9] and list(mnist["test"][1][:5]) == [7, 2, 1, 0, 4]


# ---------------------------------------------------------------------------------------------
# Damaged files: the download cache heals itself; a user's directory gets a clear message
# ---------------------------------------------------------------------------------------------

TRAIN_IMAGES = "train-images-idx3-ubyte"


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """The download cache under tmp_path (no $GPUBP_DATA_DIR), with no mirror reachable by default."""
    monkeypatch.delenv("GPUBP_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "empty-mirror").mkdir()
    monkeypatch.setenv("GPUBP_MNIST_MIRRORS", (tmp_path / "empty-mirror").as_uri() + "/")
    return tmp_path / "xdg" / "gpubp" / "mnist"


def file_mirror(files, d: Path) -> str:
    d.mkdir()
    for name, blob in files.items():
        (d / f"{name}.gz").write_bytes(gzip.compress(blob, mtime=0))
    return d.as_uri() + "/"


def fill(d: Path, files, gz=True):
    d.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        if gz:
            (d / f"{name}.gz").write_bytes(gzip.compress(blob, mtime=0))
        else:
            (d / name).write_bytes(blob)


def halve(p: Path):
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_gzip_in_the_cache_is_downloaded_again(tiny, cache, tmp_path, monkeypatch, verify):
    fill(cache, tiny)
    halve(cache / f"{TRAIN_IMAGES}.gz")
    monkeypatch.setenv("GPUBP_MNIST_MIRRORS", file_mirror(tiny, tmp_path / "mirror"))
    d = D.load_mnist(verify=verify, log=lambda m: None)
    assert d["train"][0].shape == (50, 6)
    assert D.read_bytes(cache / f"{TRAIN_IMAGES}.gz") == tiny[TRAIN_IMAGES]


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_idx_in_the_cache_is_downloaded_again(tiny, cache, tmp_path, monkeypatch, verify):
    fill(cache, tiny, gz=False)
    halve(cache / TRAIN_IMAGES)
    monkeypatch.setenv("GPUBP_MNIST_MIRRORS", file_mirror(tiny, tmp_path / "mirror"))
    assert D.load_mnist(verify=verify, log=lambda m: None)["train"][0].shape == (50, 6)
    assert D.read_bytes(cache / f"{TRAIN_IMAGES}.gz") == tiny[TRAIN_IMAGES]


def test_damaged_cache_file_with_no_mirror_says_delete_it(tiny, cache):
    fill(cache, tiny)
    halve(cache / f"{TRAIN_IMAGES}.gz")
    with pytest.raises(DataError) as e:
        D.load_mnist(log=lambda m: None)
    msg = str(e.value)
    assert str(cache / f"{TRAIN_IMAGES}.gz") in msg and "\n" not in msg
    assert "truncated" in msg and "delete it" in msg
    assert (cache / f"{TRAIN_IMAGES}.gz").exists()  # a failed download leaves it for the user to see


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("verify", [True, False])
def test_damaged_file_in_a_user_directory_says_replace_it(tiny, cache, tmp_path, gz, verify):
    user = tmp_path / "user"
    fill(user, tiny, gz=gz)
    damaged = user / (f"{TRAIN_IMAGES}.gz" if gz else TRAIN_IMAGES)
    halve(damaged)
    with pytest.raises(DataError) as e:
        D.load_mnist(user, verify=verify)
    msg = str(e.value)
    assert str(damaged) in msg and "truncated" in msg and "replace it" in msg
    assert "--no-verify" not in msg  # a truncated official file is not "another data set"
    assert not cache.exists()  # a user directory never triggers a download


def test_wrong_file_in_a_user_directory_names_it_and_both_ways_out(tiny, tmp_path):
    fill(tmp_path, tiny)
    bad = tmp_path / f"{NAME}.gz"
    bad.write_bytes(gzip.compress(tiny[NAME][:-1] + b"\x05"))
    with pytest.raises(DataError, match=re.escape(str(bad)) + ".*MD5.*replace it.*--no-verify"):
        D.load_mnist(tmp_path)


# ---------------------------------------------------------------------------------------------
# A cache that cannot be written is the local disk's fault, not the network's
# ---------------------------------------------------------------------------------------------

def assert_unwritable(e, directory, reason):
    msg = str(e.value)
    assert f"{directory} cannot be written ({reason})" in msg and "\n" not in msg
    assert "XDG_CACHE_HOME" in msg and "--data-dir" in msg and "connection" not in msg


@pytest.fixture
def mirrored(tiny, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUBP_MNIST_MIRRORS", file_mirror(tiny, tmp_path / "mirror"))
    return cache


def _raise(err):
    def fail(*a, **k):
        raise OSError(err, os.strerror(err))
    return fail


class _FullDisk:
    """What open(..., "wb") returns on a disk that fills up at the first write."""

    def __init__(self, *a, **k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, chunk):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["mkdir", "mkstemp", "write", "replace"])
def test_injected_write_failure_is_a_cache_error_not_a_network_one(mirrored, monkeypatch, where):
    err = errno.ENOSPC if where == "write" else errno.EROFS
    if where == "mkdir":
        monkeypatch.setattr(Path, "mkdir", _raise(err))
    elif where == "mkstemp":
        monkeypatch.setattr(fileio.tempfile, "mkstemp", _raise(err))
    elif where == "write":
        monkeypatch.setattr(D, "open", _FullDisk, raising=False)  # data.py's open() only
    else:
        mirrored.mkdir(parents=True)
        monkeypatch.setattr(fileio.os, "replace", _raise(err))
    with pytest.raises(DataError) as e:
        D.load_mnist(log=lambda m: None)
    monkeypatch.undo()
    assert_unwritable(e, mirrored, os.strerror(err))
    assert [p for p in leftovers(mirrored) if p.endswith(".part")] == []


def test_cache_under_a_regular_file_is_a_clear_error(mirrored, tmp_path, monkeypatch):
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-dir"))
    with pytest.raises(DataError) as e:
        D.load_mnist(log=lambda m: None)
    assert_unwritable(e, tmp_path / "not-a-dir" / "gpubp" / "mnist", "Not a directory")


def test_cache_directory_that_is_a_file_is_a_clear_error(mirrored):
    mirrored.parent.mkdir(parents=True)
    mirrored.write_text("")
    with pytest.raises(DataError) as e:
        D.load_mnist(log=lambda m: None)
    assert_unwritable(e, mirrored, f"{mirrored} is a file, not a directory")


def test_read_only_existing_cache_is_not_blamed_on_the_network(mirrored, monkeypatch):
    mirrored.mkdir(parents=True)
    mirrored.chmod(0o555)
    try:
        (mirrored / "probe").touch()  # root ignores the mode bits: simulate what the mode would do
        (mirrored / "probe").unlink()
        monkeypatch.setattr(fileio.tempfile, "mkstemp", _raise(errno.EACCES))
    except PermissionError:
        pass
    try:
        with pytest.raises(DataError) as e:
            D.load_mnist(log=lambda m: None)
    finally:
        mirrored.chmod(0o755)
    assert_unwritable(e, mirrored, "Permission denied")


def test_garbled_http_reply_is_a_network_failure(tiny, tmp_path):
    # http.client raises BadStatusLine (an HTTPException, not an OSError) for a reply like this one
    srv = socket.create_server(("127.0.0.1", 0))

    def answer():
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/"
    with Server(tiny) as good:
        D.download(NAME, tmp_path, mirrors=[url, good.url], log=lambda m: None)
    t.join(5)
    srv.close()
    assert leftovers(tmp_path) == [f"{NAME}.gz"]


# ---------------------------------------------------------------------------------------------
# Messages that say where the directory came from, and name the file that is wrong
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def user_dir(tiny, tmp_path, monkeypatch):
    """A --no-verify style directory holding the tiny set; no $GPUBP_DATA_DIR, no mirror."""
    monkeypatch.delenv("GPUBP_DATA_DIR", raising=False)
    monkeypatch.setenv("GPUBP_MNIST_MIRRORS", "http://127.0.0.1:9/")
    d = tmp_path / "user"
    fill(d, tiny, gz=False)
    return d


def test_data_dir_that_is_a_file_says_so_and_names_the_flag(user_dir):
    f = user_dir / NAME
    with pytest.raises(DataError, match=re.escape(f"{f} (from --data-dir) is a file, not a directory")):
        D.load_mnist(f)


def test_gpubp_data_dir_that_is_a_file_names_the_variable(user_dir, monkeypatch):
    f = user_dir / NAME
    monkeypatch.setenv("GPUBP_DATA_DIR", str(f))
    with pytest.raises(DataError) as e:
        D.load_mnist()
    msg = str(e.value)
    assert f"{f} (from $GPUBP_DATA_DIR) is a file, not a directory" in msg and "--data-dir" not in msg


def test_missing_gpubp_data_dir_names_the_variable_not_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUBP_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as e:
        D.load_mnist()
    msg = str(e.value)
    assert f"{tmp_path / 'nowhere'} (from $GPUBP_DATA_DIR) does not exist" in msg
    assert "GPUBP_DATA_DIR" in msg.split(":", 1)[1] and "--data-dir" not in msg


def test_missing_data_dir_names_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUBP_DATA_DIR", str(tmp_path))  # --data-dir wins over the variable
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nowhere'} (from --data-dir) does not exist")):
        D.load_mnist(tmp_path / "nowhere")


def test_missing_file_names_the_directory_and_where_it_came_from(user_dir, monkeypatch):
    (user_dir / NAME).unlink()
    monkeypatch.setenv("GPUBP_DATA_DIR", str(user_dir))
    with pytest.raises(DataError, match=re.escape(f"{NAME}(.gz) not found in {user_dir} (from $GPUBP_DATA_DIR)")):
        D.load_mnist()


def write_idx(path: Path, arr, code=0x08):
    path.write_bytes(idx_bytes(np.asarray(arr), code))


def test_label_out_of_range_names_the_file(user_dir, tiny):
    labels = D.parse_idx(tiny[NAME]).copy()
    labels[5] = 11
    write_idx(user_dir / NAME, labels)
    with pytest.raises(DataError) as e:
        D.load_mnist(user_dir, verify=False)
    msg = str(e.value)
    assert str(user_dir / NAME) in msg and "11" in msg and "index 5" in msg and "0 to 9" in msg


def test_images_and_labels_that_do_not_pair_up_name_both_files(user_dir, tiny):
    write_idx(user_dir / NAME, D.parse_idx(tiny[NAME])[:-1])
    with pytest.raises(DataError) as e:
        D.load_mnist(user_dir, verify=False)
    msg = str(e.value)
    assert str(user_dir / "t10k-images-idx3-ubyte") in msg and str(user_dir / NAME) in msg
    assert "30 images" in msg and "29 labels" in msg


def test_test_images_of_another_shape_are_caught_at_load_time(user_dir):
    write_idx(user_dir / "t10k-images-idx3-ubyte", np.zeros((30, 2, 4), np.uint8))
    with pytest.raises(DataError) as e:
        D.load_mnist(user_dir, verify=False)
    msg = str(e.value)
    assert str(user_dir / "t10k-images-idx3-ubyte") in msg and str(user_dir / TRAIN_IMAGES) in msg
    assert "2x3" in msg and "2x4" in msg


# ---------------------------------------------------------------------------------------------
# Under --no-verify any MNIST-format file is accepted: what load_mnist must still refuse
# ---------------------------------------------------------------------------------------------

T10K_IMAGES = "t10k-images-idx3-ubyte"


@pytest.mark.parametrize("files,match", [
    ({T10K_IMAGES: (np.zeros((0, 2, 3)), 0x08), NAME: (np.zeros(0), 0x08)}, "holds no images"),
    ({TRAIN_IMAGES: (np.zeros((10_050, 0, 3)), 0x08), T10K_IMAGES: (np.zeros((30, 0, 3)), 0x08)}, "0x3 pixels"),
    ({NAME: (np.full(30, 3.5), 0x0D)}, "float32 labels: MNIST-format labels are integers"),
    ({T10K_IMAGES: (np.full((30, 2, 3), 0.5), 0x0D)}, "float32 pixels: MNIST-format images are unsigned bytes"),
    ({T10K_IMAGES: (np.full((30, 2, 3), 300), 0x0C)}, "int32 pixels: MNIST-format images are unsigned bytes"),
])
def test_inconsistent_no_verify_files_are_refused_naming_the_file(user_dir, files, match):
    for name, (arr, code) in files.items():
        write_idx(user_dir / name, arr, code)
    with pytest.raises(DataError, match=match) as e:
        D.load_mnist(user_dir, verify=False)
    assert str(user_dir / next(iter(files))) in str(e.value)


def test_mirror_list_tolerates_spaces_and_empty_entries(tiny, tmp_path, monkeypatch):
    good = file_mirror(tiny, tmp_path / "mirror")
    monkeypatch.setenv("GPUBP_MNIST_MIRRORS", f" {(tmp_path / 'none').as_uri()}/ , , {good} ")
    D.download(NAME, tmp_path / "a", log=lambda m: None)
    monkeypatch.setenv("GPUBP_MNIST_MIRRORS", " , ")  # names no mirror: the built-in list is used
    monkeypatch.setattr(D, "MIRRORS", (good,))
    D.download(NAME, tmp_path / "b", log=lambda m: None)
    assert D.read_bytes(tmp_path / "a" / f"{NAME}.gz") == D.read_bytes(tmp_path / "b" / f"{NAME}.gz") == tiny[NAME]


def _stat_denied(monkeypatch, under: str):
    """os.stat as a non-root user sees it for paths starting with ``under`` (root ignores modes)."""
    real = os.stat

    def stat(p, *a, **k):
        if str(p).startswith(under):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(p))
        return real(p, *a, **k)
    monkeypatch.setattr(os, "stat", stat)


@pytest.mark.parametrize("inside", [False, True])
def test_data_dir_that_cannot_be_searched_is_a_one_line_error(user_dir, monkeypatch, inside):
    _stat_denied(monkeypatch, f"{user_dir}{os.sep}" if inside else str(user_dir))  # its files, or itself too
    with pytest.raises(DataError) as e:
        D.load_mnist(user_dir, verify=False)
    monkeypatch.undo()
    assert str(user_dir) in str(e.value) and "Permission denied" in str(e.value)


# ---------------------------------------------------------------------------------------------
# Hostile IDX and gzip files: bounded memory, linear time, one error
# ---------------------------------------------------------------------------------------------

def test_more_dimensions_than_numpy_takes_is_a_data_error():
    """(E) 65 dimensions of 1 and one byte: consistent, yet NumPy cannot reshape to it."""
    blob = struct.pack(">BBBB", 0, 0, 0x08, 65) + struct.pack(">65I", *[1] * 65) + b"\x07"
    with pytest.raises(DataError, match="65 dimensions"):
        D.parse_idx(blob, "deep")


def test_decompression_stops_at_what_the_header_declares(tmp_path):
    """(F) a header that declares 8 bytes, then 64 MiB of zeros: refused after at most a few hundred
    KiB have been decompressed, and a bad magic number is refused before the rest is read."""
    import tracemalloc

    zeros = bytes(64 << 20)
    bomb, bad_magic = tmp_path / "bomb.gz", tmp_path / "magic.gz"
    bomb.write_bytes(gzip.compress(idx_bytes(np.arange(8, dtype=np.uint8)) + zeros, compresslevel=1))
    bad_magic.write_bytes(gzip.compress(b"\x01" + zeros, compresslevel=1))
    del zeros
    for path, match in ((bomb, "longer than its header says"), (bad_magic, "bad magic")):
        tracemalloc.start()
        try:
            with pytest.raises(DataError, match=match):
                D.parse_idx(D.read_bytes(path), str(path))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20, f"{path.name}: {peak:,} bytes at the peak"


def test_many_gzip_members_take_work_linear_in_the_file(tmp_path, monkeypatch):
    """(G) the bytes handed to zlib grow as the number of members does (gzip.decompress copies the
    rest of the file at each member: quadratic), and the members join as gzip.decompress joins them."""
    handed = [0]
    real = D.zlib.decompressobj

    class Counting:
        def __init__(self, *a, **k):
            self.d = real(*a, **k)

        def decompress(self, data, *a):
            handed[0] += len(data)
            return self.d.decompress(data, *a)

        def __getattr__(self, name):
            return getattr(self.d, name)

    monkeypatch.setattr(D.zlib, "decompressobj", Counting)
    pieces = b"".join(gzip.compress(GOOD[i:i + 3]) for i in range(0, len(GOOD), 3))
    work = []
    for empty in (20_000, 40_000):
        path = tmp_path / f"members-{empty}.gz"
        path.write_bytes(pieces + gzip.compress(b"") * empty + bytes(10))  # zero padding, as gzip allows
        handed[0] = 0
        assert D.read_bytes(path) == GOOD
        work.append(handed[0])
    assert 0 < work[1] < 2.2 * work[0], work
