"""Outputs survive the end of a run: a full disk loses only what could not be written, and says so."""

import errno
import json
import subprocess

import numpy as np
import pytest
from helpers import one_line_error, run_cli

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def disk_full(*args, **kwargs):
    """A write that finds the disk full (monkeypatched over np.savez or json.dump)."""
    raise ENOSPC


def tiny_train(tiny_dir, *extra):
    return ["train", "--data-dir", tiny_dir, "--no-verify", "--sizes", "10,8,10", "--epochs", "1",
            "--backend", "numpy", "--seed", "1", "--quiet", *extra]


def test_a_full_disk_at_the_model_still_writes_the_metrics(capsys, tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setattr(np, "savez", disk_full)
    model, metrics = tmp_path / "m.npz", tmp_path / "run.json"
    code, out, err = run_cli(capsys, *tiny_train(tiny_dir, "--save", str(model), "--metrics-out", str(metrics)))
    one_line_error(code, err, f"did not write the model {model} (No space left on device)",
                   f"wrote the metrics {metrics}")
    assert out.startswith("test accuracy")
    assert 0 < json.loads(metrics.read_text())["test_accuracy"] <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no model, no temporary file


def test_a_full_disk_at_the_metrics_still_writes_the_model(capsys, tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setattr(json, "dump", disk_full)
    model, metrics = tmp_path / "m.npz", tmp_path / "run.json"
    code, _, err = run_cli(capsys, *tiny_train(tiny_dir, "--save", str(model), "--metrics-out", str(metrics)))
    one_line_error(code, err, f"did not write the metrics {metrics} (No space left on device)",
                   f"wrote the model {model}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 48 KiB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip() or p.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_real_full_disk(capsys, small_tmpfs, tiny_dir):
    """A 250 KB model does not fit in 48 KiB; the 1 KB metrics do, and nothing half-written is left."""
    model, metrics = small_tmpfs / "m.npz", small_tmpfs / "run.json"
    code, _, err = run_cli(capsys, *tiny_train(tiny_dir, "--sizes", "10,3000,10", "--save", str(model),
                                           "--metrics-out", str(metrics)))
    one_line_error(code, err, f"did not write the model {model} (No space left on device)",
                   f"wrote the metrics {metrics}")
    assert json.loads(metrics.read_text())["config"]["sizes"] == [10, 3000, 10]
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["run.json"]


def last_line(err):
    """The bench logs each case on stderr; its error is the last line, and the only one that says error."""
    assert "Traceback" not in err and err.count("error") == 1, err
    return err.strip().splitlines()[-1]


def tiny_bench(tiny_dir, tmp_path, *extra):
    return ["bench", "--data-dir", tiny_dir, "--no-verify", "--backends", "numpy", "--sizes", "10,8,10",
            "--batch-sizes", "10,100", "--steps", "2", "--repeats", "1", "--json", str(tmp_path / "b.json"),
            "--plot", str(tmp_path / "b.png"), *extra]


@pytest.fixture
def fast_bench(monkeypatch):
    import gpubp.bench

    monkeypatch.setattr(gpubp.bench, "gemm_rate", lambda dtype: 100.0)  # the 2048^3 product takes a second


def test_a_full_disk_at_the_bench_json_keeps_the_table_and_the_plot(capsys, tmp_path, tiny_dir, fast_bench,
                                                                    monkeypatch):
    monkeypatch.setattr(json, "dump", disk_full)
    code, out, err = run_cli(capsys, *tiny_bench(tiny_dir, tmp_path))
    line = last_line(err)
    assert code == 2 and "| numpy | 10,8,10 | 10 |" in out
    assert f"did not write the JSON {tmp_path / 'b.json'} (No space left on device)" in line
    assert f"wrote the plot {tmp_path / 'b.png'}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png"]


def provenance_ok(doc, *argv):
    from datetime import datetime, timedelta, timezone

    from gpubp import __version__

    created = datetime.fromisoformat(doc["created"])
    assert created.tzinfo is not None and created.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - created) < timedelta(minutes=5)
    assert doc["gpubp_version"] == __version__ and doc["argv"] == ["gpubp", *argv]


def test_json_outputs_say_which_gpubp_wrote_them_when_and_how(capsys, tmp_path, tiny_dir, fast_bench):
    argv = tiny_train(tiny_dir, "--metrics-out", str(tmp_path / "run.json"))
    assert run_cli(capsys, *argv)[0] == 0
    provenance_ok(json.loads((tmp_path / "run.json").read_text()), *argv)
    argv = tiny_bench(tiny_dir, tmp_path)
    assert run_cli(capsys, *argv)[0] == 0
    provenance_ok(json.loads((tmp_path / "b.json").read_text()), *argv)
