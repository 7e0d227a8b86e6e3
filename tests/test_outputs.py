"""Outputs survive the end of a run: a full disk loses only what could not be written, and says so."""

import errno
import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading

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


# ---------------------------------------------------------------------------------------------
# One file for two things, devices and streams, signals
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pair", [("--save", "--metrics-out"), ("--resume", "--metrics-out")])
def test_one_path_for_two_outputs_is_refused_before_training(capsys, tmp_path, tiny_dir, pair):
    from gpubp import Network

    shared = tmp_path / "x.npz"
    net = Network([10, 8, 10], seed=1)
    net.sgd((np.random.default_rng(0).random((30, 10)), np.arange(30) % 10), epochs=1, mini_batch_size=10, eta=1.0)
    net.save(shared)
    before = shared.read_bytes()
    code, out, err = run_cli(capsys, *tiny_train(tiny_dir, pair[0], str(shared), pair[1], str(shared)))
    one_line_error(code, err, f"{pair[0]} and {pair[1]} both name {shared}")
    assert shared.read_bytes() == before and out == ""


def test_one_path_for_the_bench_json_and_plot_is_refused(capsys, tmp_path, tiny_dir):
    argv = tiny_bench(tiny_dir, tmp_path)
    argv[argv.index("--plot") + 1] = str(tmp_path / "b.json")
    one_line_error(*run_cli(capsys, *argv)[::2], "--json and --plot both name")


def test_a_fifo_or_a_device_is_written_in_place_not_replaced(capsys, tmp_path, tiny_dir):
    fifo, null = tmp_path / "fifo", tmp_path / "null"
    os.mkfifo(fifo)
    null.symlink_to(os.devnull)
    got = queue.Queue()
    threading.Thread(target=lambda: got.put(fifo.read_bytes()), daemon=True).start()
    code, _, err = run_cli(capsys, *tiny_train(tiny_dir, "--save", str(null), "--metrics-out", str(fifo)))
    assert code == 0, err
    assert json.loads(got.get(timeout=30))["config"]["sizes"] == [10, 8, 10]  # the reader got the metrics
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.readlink(null) == os.devnull
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "null"]  # no temporary file left beside


def test_stdout_as_an_output_keeps_what_was_printed_around_it(tmp_path, tiny_dir):
    """/proc/self/fd/1 (what /dev/stdout links to) with stdout redirected to a regular file: the metrics
    are written through that descriptor, between the lines printed before and after, and the file stays."""
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        res = subprocess.run([sys.executable, "-m", "gpubp", *tiny_train(tiny_dir, "--metrics-out", "/proc/self/fd/1")],
                             stdout=f, stderr=subprocess.PIPE, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    assert text.startswith("test accuracy") and text.count("\n{\n") == 1, text[:300]
    assert json.loads(text[text.index("\n{\n"):])["config"]["sizes"] == [10, 8, 10]


def test_an_interrupt_while_the_outputs_are_written_waits_for_them(capsys, tmp_path, tiny_dir, monkeypatch,
                                                                   fast_bench):
    """uv run delivers one Ctrl-C twice, the second while outputs are written: they must still be whole."""
    from gpubp import Network
    from gpubp.bench import plot as bench_plot

    def interrupted(write):
        def during(*a, **k):
            os.kill(os.getpid(), signal.SIGINT)
            return write(*a, **k)
        return during

    monkeypatch.setattr(Network, "save", interrupted(Network.save))
    code, _, err = run_cli(capsys, *tiny_train(tiny_dir, "--save", str(tmp_path / "m.npz")))
    assert code == 0, err
    assert Network.load(tmp_path / "m.npz").epochs_trained == 1
    monkeypatch.setattr(bench_plot, "plot", interrupted(bench_plot.plot))
    code, _, err = run_cli(capsys, *tiny_bench(tiny_dir, tmp_path))
    assert code == 0, err
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "b.json").read_text())["cases"]


def train_process(tiny_dir, tmp_path, *extra, unbuffered=True):
    """gpubp train on the tiny data as a process of its own, stdout piped (not a terminal)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1" if unbuffered else ""}
    argv = [sys.executable, "-m", "gpubp", "train", "--data-dir", tiny_dir, "--no-verify", "--backend", "numpy",
            "--sizes", "10,8,10", "--seed", "1", "--epochs", "5000", *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)


def lines_of(stream) -> queue.Queue:
    """The lines of ``stream`` as they arrive, read by a thread of their own."""
    lines = queue.Queue()

    def read():
        for line in stream:
            lines.put(line)
    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_for(lines, prefix, timeout=60):
    while True:
        line = lines.get(timeout=timeout)
        if line.startswith(prefix):
            return line


def test_sigterm_keeps_the_finished_epochs_as_ctrl_c_does(tmp_path, tiny_dir):
    model, metrics = tmp_path / "m.npz", tmp_path / "run.json"
    p = train_process(tiny_dir, tmp_path, "--save", str(model), "--metrics-out", str(metrics))
    try:
        wait_for(lines_of(p.stdout), "epoch 2/")
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=60)[1]
    finally:
        p.kill()
    from gpubp import Network

    assert p.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("gpubp train: interrupted") and f"saved the model {model} and the metrics" in last
    done = json.loads(metrics.read_text())["interrupted"]["completed"]
    assert done >= 2 and Network.load(model).epochs_trained == done


def test_a_piped_train_prints_each_epoch_as_it_finishes(tmp_path, tiny_dir):
    p = train_process(tiny_dir, tmp_path, unbuffered=False)
    try:
        lines = lines_of(p.stdout)
        assert wait_for(lines, "gpubp train:", timeout=30).rstrip().endswith("seed 1")
        wait_for(lines, "epoch 1/", timeout=30)  # while the run goes on, not at its end
        assert p.poll() is None
    finally:
        p.kill()
        p.communicate()


def test_bench_on_a_cpu_times_the_native_backend_by_default_and_sets_the_blas_threads(capsys, tmp_path, tiny_dir,
                                                                                      fast_bench):
    from gpubp import sysinfo
    from gpubp.backends import cupy_status

    argv = tiny_bench(tiny_dir, tmp_path, "--threads", "1")
    del argv[argv.index("--backends"):argv.index("--backends") + 2]
    threads = sysinfo.blas()["threads"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    result = json.loads((tmp_path / "b.json").read_text())
    rows = {c["backend"] for c in result["cases"]}
    assert {"numpy", "native"} <= rows and (cupy_status()[0] or not any(r.startswith("cupy") for r in rows))
    assert result["threads"] == 1 and result["machine"]["blas"]["threads"] in (1, None)
    assert sysinfo.blas()["threads"] == threads  # put back afterwards
