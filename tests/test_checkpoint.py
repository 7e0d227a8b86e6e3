"""Model files: round trip, atomic writes, and a clear error for every kind of bad file."""

import io
import json
import os
import zipfile

import numpy as np
import pytest
from helpers import assert_equal

from gpubp import Network, __version__, checkpoint
from gpubp.errors import GpubpError, ModelFileError

load = Network.load


@pytest.mark.parametrize("dtype,cost,activation", [("float32", "quadratic", "sigmoid"),
                                                   ("float64", "cross_entropy", "tanh"),
                                                   ("float32", "log_likelihood", "relu")])
def test_round_trip(tmp_path, dtype, cost, activation):
    net = Network([6, 5, 3], cost=cost, activation=activation, dtype=dtype, seed=2)
    X = np.random.default_rng(1).standard_normal((4, 6))
    path = tmp_path / "m.npz"
    net.save(path)
    back = Network.load(path)
    assert (back.sizes, back.cost.name, back.dtype) == (net.sizes, cost, np.dtype(dtype))
    assert (back.activation.name, back.init, back.seed) == (activation, net.init, 2)
    assert_equal(back.get_params(), net.get_params())
    assert_equal(back.feedforward(X), net.feedforward(X))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]  # no temp file left
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not the temp file's private 0600
    with np.load(path, allow_pickle=False) as z:  # loads without pickle
        assert str(z["format"]) == "gpubp-model" and int(z["version"]) == checkpoint.VERSION == 2
        meta = json.loads(str(z["meta"]))
    assert meta["gpubp_version"] == __version__ and meta["created"].endswith("+00:00")


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_optimizer_state_and_progress_are_saved(tmp_path, optimizer):
    rng = np.random.default_rng(3)
    X, y = rng.random((40, 6)), rng.integers(0, 3, 40)
    net = Network([6, 5, 3], seed=2, dtype="float64")
    net.sgd((X, y), epochs=2, mini_batch_size=8, eta=0.05, lmbda=1.0, optimizer=optimizer, monitor_training_cost=False)
    net.save(tmp_path / "m.npz")
    back = Network.load(tmp_path / "m.npz")
    assert back.epochs_trained == 2 and back.optimizer.config() == net.optimizer.config()
    for k, v in net.optimizer.state_arrays().items():
        assert_equal(back.optimizer.state_arrays()[k], v, what=k)
        assert optimizer == "sgd" or v.any()
    assert back.rng.bit_generator.state == net.rng.bit_generator.state


def test_save_replaces_atomically_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    net = Network([4, 2], seed=1)
    path = tmp_path / "m.npz"
    net.save(path)
    old = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(RuntimeError):
        Network([4, 2], seed=9).save(path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_save_to_a_missing_directory_is_clear(tmp_path):
    with pytest.raises(GpubpError, match="does not exist"):
        Network([4, 2]).save(tmp_path / "no" / "m.npz")


def npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def good_fields():
    """A version-1 file, as gpubp 0.1 wrote it: old files still load."""
    net = Network([4, 3, 2], seed=1)
    return dict(format=np.array("gpubp-model"), version=np.array(1), sizes=np.array([4, 3, 2]),
                cost=np.array("quadratic"), dtype=np.array("float32"), params=net.get_params())


@pytest.mark.parametrize("mutate,match", [
    (lambda f: f.pop("format"), "not a gpubp model file"),
    (lambda f: f.update(format=np.array("other")), "not a gpubp model file"),
    (lambda f: f.pop("params"), "missing params"),
    (lambda f: f.update(version=np.array(7)), "version 7; this gpubp reads versions 1, 2"),
    (lambda f: f.update(params=f["params"][:-1]), "inconsistent"),
    (lambda f: f.update(sizes=np.array([4, 0, 2])), "inconsistent"),
    (lambda f: f.update(sizes=np.array([784, 1_000_000, 10])), "need 795,000,010 parameters, the file holds 23"),
    (lambda f: f.update(sizes=np.array([784, 100_000_000, 10])), "at most 1,000,000,000"),
    (lambda f: f.update(cost=np.array("hinge")), "inconsistent"),
    (lambda f: f.update(dtype=np.array("int8")), "inconsistent"),
    (lambda f: f.update(params=np.full(23, np.nan, np.float32)), "NaN"),
    (lambda f: f.update(sizes=np.array([[4, 3, 2]])), "malformed"),
])
def test_bad_model_fields(tmp_path, mutate, match):
    fields = good_fields()
    mutate(fields)
    with pytest.raises(ModelFileError, match=match):
        load(npz(tmp_path / "bad.npz", **fields))


def test_bad_model_files(tmp_path):
    good = npz(tmp_path / "good.npz", **good_fields())
    old = load(good)
    assert old.sizes == [4, 3, 2] and old.activation.name == "sigmoid" and old.optimizer is None
    with pytest.raises(ModelFileError, match="does not exist"):
        load(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ModelFileError, match="not an .npz"):
        load(tmp_path / "text.npz")
    blob = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelFileError):
        load(tmp_path / "cut.npz")
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "pickle.npz", "w") as z:
        for k, v in good_fields().items():
            if k == "params":
                continue
            b = io.BytesIO()
            np.save(b, v)
            z.writestr(f"{k}.npy", b.getvalue())
        z.writestr("params.npy", buf.getvalue())
    with pytest.raises(ModelFileError):
        load(tmp_path / "pickle.npz")


def forged(path, header_shape=None, compress=False):
    """A model file whose params.npy header declares ``header_shape`` over the real 23 values."""
    fields = good_fields()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for k, v in fields.items():
            b = io.BytesIO()
            if k == "params" and header_shape is not None:
                np.lib.format.write_array_header_1_0(b, {"descr": "<f4", "fortran_order": False, "shape": header_shape})
                b.write(v.astype("<f4").tobytes())
            else:
                np.save(b, v)
            z.writestr(f"{k}.npy", b.getvalue())
    return path


def test_a_forged_array_header_cannot_ask_for_memory(tmp_path):
    """A 3 KB file whose params header declares 100 GB: refused before np.load allocates anything."""
    path = forged(tmp_path / "liar.npz", header_shape=(25_000_000_000,))
    assert path.stat().st_size < 4000
    with pytest.raises(ModelFileError, match=r"params.npy declares 100,000,000,000 bytes .* holds 92"):
        load(path)


def test_compressed_members_are_refused(tmp_path):
    """Stored (uncompressed) members bound every array by the file's own size; deflate would not."""
    with pytest.raises(ModelFileError, match="compressed"):
        load(forged(tmp_path / "zipped.npz", compress=True))


def test_a_zip_directory_that_lies_about_sizes_is_refused(tmp_path):
    """Header and zip directory agree on 4 GB of parameters, in a 3 KB file: the members cannot hold
    more than the file does, so it is refused before np.load reserves 4 GB."""
    n = 1_000_000_000  # float32: 4e9 bytes, within the 32-bit sizes of a plain zip directory
    path = forged(tmp_path / "m.npz", header_shape=(n,))
    blob = bytearray(path.read_bytes())
    at = blob.find(b"PK\x01\x02")
    while blob[at + 46:at + 46 + int.from_bytes(blob[at + 28:at + 30], "little")] != b"params.npy":
        at = blob.find(b"PK\x01\x02", at + 4)
    header = 128  # write_array_header_1_0 pads the header to 128 bytes here
    blob[at + 20:at + 28] = (4 * n + header).to_bytes(4, "little") * 2  # compressed and uncompressed size
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="more than the file"):
        load(path)


# ---------------------------------------------------------------------------------------------
# Hostile model files: each kind of mutation ends in ModelFileError from the API and in one line,
# exit 2, from the command line
# ---------------------------------------------------------------------------------------------

def saved_fields(tmp_path):
    """The members of a real version-2 file (trained an epoch, momentum state, RNG state)."""
    net = Network([4, 3, 2], seed=1)
    rng = np.random.default_rng(0)
    net.sgd((rng.random((20, 4)), np.arange(20) % 2), epochs=1, mini_batch_size=5, eta=0.5, optimizer="momentum")
    net.save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as z:
        return {k: z[k] for k in z.files}


def with_meta(change):
    """A mutation of the meta JSON: ``change(meta)`` edits the parsed dict, or returns new JSON text."""
    def mutate(fields):
        meta = json.loads(str(fields["meta"]))
        text = change(meta)
        fields["meta"] = np.array(text if isinstance(text, str) else json.dumps(meta))
    return mutate


def set_in(*keys_and_value):
    *keys, value = keys_and_value

    def change(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
        return json.dumps(meta).replace('"INF"', "Infinity")
    return change


FIELD_MUTATIONS = {
    # (A) a version that int() cannot read
    "version-string": lambda f: f.update(version=np.array("two")),
    "version-nan": lambda f: f.update(version=np.array(np.nan)),
    "version-shape-2": lambda f: f.update(version=np.array([2, 2])),
    # (B) meta values out of range (item 9: a negative epoch count), and parameters beyond float32
    "sizes-infinity": with_meta(set_in("model", "sizes", ["INF", 3, 2])),
    "seed-infinity": with_meta(set_in("model", "seed", "INF")),
    "epochs-infinity": with_meta(set_in("epochs_trained", "INF")),
    "batch-infinity": with_meta(set_in("mini_batch_size", "INF")),
    "epochs-negative": with_meta(set_in("epochs_trained", -3)),
    "batch-negative": with_meta(set_in("mini_batch_size", -5)),
    "rng-negative": with_meta(set_in("rng", "state", "state", -1)),
    "rng-2^200": with_meta(set_in("rng", "state", "state", 2**200)),
    "gemm-unknown": with_meta(set_in("model", "gemm", "fast")),
    "params-1e300": lambda f: f.update(params=np.full(f["params"].shape, 1e300)),
    # (C) meta nested deeper than the JSON reader recurses
    "meta-nested": with_meta(lambda meta: "[" * 100_000 + "]" * 100_000),
}


def zip_with(fields, path, **info_attrs):
    """``fields`` as a stored .npz whose members' ZipInfo carry ``info_attrs`` (flag bits, versions)."""
    with zipfile.ZipFile(path, "w") as z:
        for k, v in fields.items():
            b = io.BytesIO()
            np.save(b, v)
            info = zipfile.ZipInfo(f"{k}.npy")
            z.writestr(info, b.getvalue())
            for attr, value in info_attrs.items():  # in the central directory, written at close
                setattr(info, attr, value)
    return path


ZIP_MUTATIONS = {  # (D) zip directory flags that zipfile refuses in its own words
    "encrypted": {"flag_bits": 0x1},
    "flag-bit-5": {"flag_bits": 0x20},
    "flag-bit-6": {"flag_bits": 0x40},
    "version-6.4": {"extract_version": 64},
}


def cli_one_line(capsys, path):
    from helpers import one_line_error, run_cli

    one_line_error(*run_cli(capsys, "evaluate", str(path))[::2], str(path))


@pytest.mark.parametrize("name", list(FIELD_MUTATIONS) + list(ZIP_MUTATIONS))
def test_fuzzed_model_files_end_in_one_line(capsys, tmp_path, name):
    fields = saved_fields(tmp_path)
    path = tmp_path / "bad.npz"
    if name in ZIP_MUTATIONS:
        zip_with(fields, path, **ZIP_MUTATIONS[name])
    else:
        FIELD_MUTATIONS[name](fields)
        np.savez(path, **fields)
    with pytest.raises(ModelFileError):
        load(path)
    cli_one_line(capsys, path)


def test_a_device_or_a_fifo_is_not_a_model_file(capsys, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    for path in (os.devnull, "/dev/zero", tmp_path / "fifo"):
        with pytest.raises(ModelFileError, match="not a regular file"):
            load(path)
        cli_one_line(capsys, path)
