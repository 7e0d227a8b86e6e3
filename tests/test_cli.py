"""The command line: defaults, outputs, and one line + exit 2 for every bad input."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import one_line_error, run_cli


@pytest.mark.parametrize("argv,needle", [
    (["train", "--eta", "-1"], "--eta: must be > 0"),
    (["train", "--eta", "nan"], "--eta"),
    (["train", "--sizes", "784,x,10"], "comma-separated integers"),
    (["train", "--sizes", "784"], "two or more"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--backend", "tpu"], "invalid choice"),
    (["train", "--cost", "hinge"], "invalid choice"),
    (["train", "--activation", "swish"], "invalid choice"),
    (["train", "--optimizer", "rmsprop"], "invalid choice"),
    (["train", "--momentum", "0.5", "--data-dir", "."], "--momentum applies to --optimizer momentum, not sgd"),
    (["train", "--bogus"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
])
def test_bad_arguments(capsys, argv, needle):
    one_line_error(*run_cli(capsys, *argv)[::2], needle)


def test_missing_data_directory(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--data-dir", str(tmp_path / "none"), "--backend", "numpy")
    one_line_error(code, err, "does not exist", "--data-dir")


def test_outputs_are_checked_before_training(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--save", str(tmp_path / "no" / "m.npz"), "--data-dir", str(tmp_path))
    one_line_error(code, err, "directory", "does not exist")
    code, _, err = run_cli(capsys, "train", "--metrics-out", str(tmp_path), "--data-dir", str(tmp_path))
    one_line_error(code, err, "is a directory")


def test_evaluate_bad_model(capsys, tmp_path):
    (tmp_path / "m.npz").write_text("not a model")
    one_line_error(*run_cli(capsys, "evaluate", str(tmp_path / "m.npz"))[::2], "not an .npz")
    one_line_error(*run_cli(capsys, "evaluate", str(tmp_path / "x.npz"))[::2], "does not exist")


def test_cupy_backend_without_gpu_is_one_line(capsys):
    from gpubp.backends import cupy_status

    if cupy_status()[0]:
        pytest.skip("a GPU is present: the cupy backend is available")
    one_line_error(*run_cli(capsys, "train", "--backend", "cupy")[::2], "backend 'cupy' cannot run here")


@pytest.mark.slow
def test_train_save_metrics_and_evaluate(capsys, tmp_path, mnist_dir):
    model, metrics = tmp_path / "m.npz", tmp_path / "run.json"
    code, out, err = run_cli(capsys, "train", "--epochs", "2", "--sizes", "784,20,10", "--seed", "3",
                         "--data-dir", mnist_dir, "--save", str(model), "--metrics-out", str(metrics),
                         "--backend", "numpy")
    assert code == 0, err
    assert "epoch 1/2: validation accuracy" in out and "epoch 2/2" in out
    test_line = [l for l in out.splitlines() if l.startswith("test accuracy")]
    assert len(test_line) == 1
    m = json.loads(metrics.read_text())
    assert m["backend"] == "numpy" and m["config"]["sizes"] == [784, 20, 10] and m["config"]["eta"] == 3.0
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]  # as the console counts them
    assert m["config"]["optimizer"] == "sgd" and m["config"]["activation"] == "sigmoid" and m["config"]["seed"] == 3
    for e in m["epochs"]:
        assert e["seconds"] > 0 and 0.8 < e["validation_accuracy"] <= 1 and e["train_cost"] > 0
    assert 0.85 < m["test_accuracy"] <= 1
    assert f"{m['test_accuracy']:.4f}" in test_line[0]
    code, out, _ = run_cli(capsys, "evaluate", str(model), "--data-dir", mnist_dir)
    assert code == 0 and test_line[0] in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "run.json"]


def test_quiet_prints_only_the_result(capsys, tmp_path, mnist_dir):
    code, out, err = run_cli(capsys, "train", "--epochs", "1", "--sizes", "784,10,10", "--quiet",
                         "--data-dir", mnist_dir, "--backend", "numpy", "--seed", "1")
    assert code == 0 and err == ""
    assert out.strip().startswith("test accuracy") and len(out.strip().splitlines()) == 1


def test_no_train_cost_skips_the_pass(capsys, tmp_path, mnist_dir):
    metrics = tmp_path / "run.json"
    code, out, _ = run_cli(capsys, "train", "--epochs", "1", "--sizes", "784,10,10", "--no-train-cost",
                       "--data-dir", mnist_dir, "--backend", "numpy", "--metrics-out", str(metrics))
    assert code == 0 and "train cost" not in out and "epoch 1/1: validation accuracy" in out
    m = json.loads(metrics.read_text())
    assert m["epochs"][0]["train_cost"] is None and m["config"]["train_cost"] is False


@pytest.mark.slow
def test_relu_log_likelihood_momentum_trains_from_the_command_line(capsys, tmp_path, mnist_dir):
    metrics = tmp_path / "run.json"
    code, out, err = run_cli(capsys, "train", "--epochs", "1", "--sizes", "784,40,10", "--activation", "relu",
                         "--cost", "log_likelihood", "--optimizer", "momentum", "--momentum", "0.8", "--eta", "0.05",
                         "--lmbda", "2", "--data-dir", mnist_dir, "--backend", "numpy", "--metrics-out", str(metrics),
                         "--seed", "2")
    assert code == 0, err
    assert "activation='relu'" in out and "cost='log_likelihood'" in out
    m = json.loads(metrics.read_text())
    assert m["config"] | {"optimizer": "momentum", "momentum": 0.8, "eta": 0.05, "init": "he"} == m["config"]
    assert m["test_accuracy"] > 0.9


def test_sizes_must_fit_the_data(capsys, mnist_dir):
    one_line_error(*run_cli(capsys, "train", "--sizes", "785,30,10", "--data-dir", mnist_dir)[::2],
                   "must start with 784", "--sizes 785,30,10")


def test_info(capsys):
    code, out, _ = run_cli(capsys, "info", "--backend", "numpy")
    assert code == 0
    for needle in ("backend: numpy", "GPU:", f"NumPy {np.__version__}", "BLAS", "threads", "CuPy"):
        assert needle in out


def test_console_entry_point_runs_as_a_process(tmp_path):
    """The installed `gpubp` command: exit code 2 and one line, no traceback, from a real process."""
    env = {**os.environ, "GPUBP_BACKEND": "numpy"}
    p = subprocess.run([sys.executable, "-m", "gpubp", "evaluate", str(tmp_path / "none.npz")],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


# ---------------------------------------------------------------------------------------------
# Arguments are refused before the data loads, in one line that says what to do
# ---------------------------------------------------------------------------------------------

NO_DATA = ["--data-dir", "/nonexistent/gpubp-test"]  # an error about this would mean the data loaded first


@pytest.mark.parametrize("argv,needles", [
    (["train", "--seed", "-1"], ["argument --seed", ">= 0"]),
    (["train", "--seed", "x"], ["expected an integer, got 'x'"]),
    (["train", "--epochs", "x"], ["expected an integer, got 'x'"]),
    (["train", "--eta", "x"], ["expected a number, got 'x'"]),
    (["train", "--sizes", "784,100000000,10"],
     ["argument --sizes", "79,500,000,010 parameters", "at most 1,000,000,000"]),
    (["bench", "--batch-sizes", ","], ["argument --batch-sizes", "empty"]),
    (["bench", "--backends", " , "], ["argument --backends", "empty"]),
    (["train", "--bogus"], ["unrecognized arguments: --bogus", "see gpubp train --help"]),
])
def test_arguments_are_refused_before_the_data_loads(capsys, argv, needles):
    code, _, err = run_cli(capsys, *argv, *NO_DATA)
    one_line_error(code, err, *needles)
    assert "nonexistent" not in err


def test_huge_sizes_are_refused_before_anything_is_allocated(capsys):
    import tracemalloc

    tracemalloc.start()  # NumPy reports its allocations to tracemalloc
    try:
        code, _, err = run_cli(capsys, "train", "--sizes", "784,100000000,10", *NO_DATA)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line_error(code, err, "at most 1,000,000,000")
    assert peak < 50e6, f"{peak / 1e6:.0f} MB allocated before the refusal"  # the model would be 313 GB in float32


def test_evaluate_a_small_file_that_declares_a_huge_model(capsys, tmp_path):
    from gpubp import Network

    path = tmp_path / "huge.npz"
    Network([4, 3, 2], seed=1).save(path)
    with np.load(path) as z:
        fields = {k: z[k] for k in z.files}
    meta = json.loads(str(fields["meta"]))
    meta["model"]["sizes"] = [784, 100_000_000, 10]
    fields["meta"] = np.array(json.dumps(meta))
    np.savez(path, **fields)
    code, _, err = run_cli(capsys, "evaluate", str(path), *NO_DATA)
    one_line_error(code, err, str(path), "at most 1,000,000,000")


def test_evaluate_a_directory_says_so(capsys, tmp_path):
    one_line_error(*run_cli(capsys, "evaluate", str(tmp_path))[::2], f"{tmp_path} is a directory")


def test_version(capsys):
    from gpubp import __version__

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"gpubp {__version__}"


def _subcommands():
    import argparse

    from gpubp.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("command", ["train", "evaluate", "bench", "info", "plot"])
def test_help_shows_every_default(command):
    """Every option's help gives its default: the value itself, or words for what None means."""
    parser = _subcommands()[command]
    for a in parser._actions:
        if not a.option_strings or a.help == "==SUPPRESS==" or a.dest in ("help", "version"):
            continue
        if a.const is True or a.default is False:  # a flag: off unless given
            continue
        shown = a.help % {"default": a.default} if "%(default)" in (a.help or "") else (a.help or "")
        assert "default" in shown, f"{command} {a.option_strings[0]}: help does not say the default: {a.help!r}"
        if a.default is not None:
            value = ",".join(map(str, a.default)) if isinstance(a.default, list) else str(a.default)
            assert value in shown, f"{command} {a.option_strings[0]}: default {value} not in {shown!r}"


def test_a_model_that_does_not_fit_the_data_names_the_file(capsys, tmp_path, tiny_dir):
    from gpubp import Network

    model = tmp_path / "wide.npz"
    Network([784, 5, 10], seed=1).save(model)
    code, _, err = run_cli(capsys, "evaluate", str(model), "--data-dir", tiny_dir, "--no-verify")
    one_line_error(code, err, str(model), "784", "10 pixels", "t10k-images-idx3-ubyte")
    code, _, err = run_cli(capsys, "train", "--sizes", "11,5,10", "--data-dir", tiny_dir, "--no-verify")
    one_line_error(code, err, "--sizes 11,5,10", "10 pixels", "train-images-idx3-ubyte")


def test_a_bad_label_names_its_file(capsys, tmp_path):
    from helpers import idx_file, write_mnist_like

    d = write_mnist_like(tmp_path / "d", n_train=10_020, n_test=20)
    idx_file(d / "t10k-labels-idx1-ubyte", np.full(20, 12))
    code, _, err = run_cli(capsys, "train", "--sizes", "10,5,10", "--data-dir", str(d), "--no-verify", "--epochs", "1")
    one_line_error(code, err, str(d / "t10k-labels-idx1-ubyte"), "label 12")


def test_test_images_of_another_shape_fail_before_any_epoch(capsys, tmp_path):
    """Items 4/5/7 of the issue: 28x29 test images under --no-verify fail at load time, naming both files."""
    from helpers import write_mnist_like

    d = write_mnist_like(tmp_path / "d", n_train=10_020, n_test=20, shape=(28, 28), test_shape=(28, 29))
    code, out, err = run_cli(capsys, "train", "--data-dir", str(d), "--no-verify", "--epochs", "1", "--backend", "numpy")
    one_line_error(code, err, "28x28", "28x29", "train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
    assert "epoch" not in out


# ---------------------------------------------------------------------------------------------
# Training that goes nowhere, diverges or stops early says so
# ---------------------------------------------------------------------------------------------

def tiny_train(tiny_dir, *extra):
    return ["train", "--data-dir", tiny_dir, "--no-verify", "--sizes", "10,8,10", "--backend", "numpy", "--seed", "1",
            *extra]


def test_a_run_at_chance_exits_0_with_one_warning_line_each(capsys, tiny_dir):
    code, out, err = run_cli(capsys, *tiny_train(tiny_dir, "--eta", "1e9", "--epochs", "3", "--quiet"))
    assert code == 0 and out.startswith("test accuracy")
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(l.startswith("gpubp train: warning: ") for l in lines), err
    assert "validation accuracy at chance" in lines[0] and "eta=1e+09 is probably too large" in lines[0]
    assert "training cost has not moved" in lines[1]


def test_a_huge_lmbda_diverges_naming_eta_and_lmbda(capsys, tiny_dir):
    code, out, err = run_cli(capsys, *tiny_train(tiny_dir, "--lmbda", "100000", "--epochs", "3"))
    one_line_error(code, err, "training diverged", "in epoch 1 with eta=3 and lmbda=100000",
                   "lmbda is the likely cause")
    assert "epoch 1/3:" not in out  # the message's epoch is the one the progress line would have shown


def test_early_stopping_restores_and_records_the_best_epoch(capsys, tmp_path, tiny_dir):
    metrics = tmp_path / "run.json"
    code, out, err = run_cli(capsys, *tiny_train(tiny_dir, "--epochs", "30", "--eta", "30", "--early-stopping", "2",
                                             "--metrics-out", str(metrics)))
    assert code == 0, err
    m = json.loads(metrics.read_text())
    accs = [e["validation_accuracy"] for e in m["epochs"]]
    assert m["stopped_early"] and m["best_epoch"] == 1 + accs.index(max(accs))
    assert m["best_validation_accuracy"] == max(accs)
    assert m["restored_best"] == (m["best_epoch"] != m["epochs"][-1]["epoch"])
    if m["restored_best"]:
        assert f"restored the weights of epoch {m['best_epoch']}" in out


def test_evaluate_a_file_with_a_forged_array_header_is_one_line(capsys, tmp_path):
    from test_checkpoint import forged

    path = forged(tmp_path / "liar.npz", header_shape=(25_000_000_000,))
    one_line_error(*run_cli(capsys, "evaluate", str(path), *NO_DATA)[::2], str(path), "declares 100,000,000,000 bytes")


@pytest.mark.parametrize("argv,needle", [
    (["--gemm", "own", "--backend", "numpy"], "gemm='own' runs our layer kernels"),
    (["--graph", "--backend", "numpy"], "a graph was asked for but cannot be captured: the numpy backend has no"),
    (["--tf32", "--dtype", "float64", "--backend", "numpy"], "tf32 is a float32 format"),
])
def test_routes_and_modes_that_cannot_run_fail_before_the_data_loads(capsys, tmp_path, argv, needle):
    one_line_error(*run_cli(capsys, "train", *argv, "--data-dir", str(tmp_path / "absent"))[::2], needle)


def test_a_graph_with_tf32_from_the_command_line(capsys, tmp_path, tiny_dir):
    """--graph and --tf32 reach training and the metrics: the first epoch captured, the second replayed
    (the own route's graphs are tested through the Python API)."""
    metrics = tmp_path / "run.json"
    code, out, err = run_cli(capsys, "train", "--epochs", "2", "--sizes", "10,12,10", "--backend", "emulated",
                             "--graph", "--tf32", "--batch-size", "100", "--data-dir", tiny_dir, "--no-verify",
                             "--metrics-out", str(metrics), "--no-train-cost", "--seed", "1")
    assert code == 0, err
    assert "each epoch is one captured graph" in out and "(graph)" in out
    m = json.loads(metrics.read_text())
    assert m["config"]["graph"] is True and m["config"]["gemm"] == "blas" and m["config"]["tf32"] is True
    assert [e["mode"] for e in m["epochs"]] == ["graph", "graph"] and m["test_accuracy"] > 0.3


@pytest.mark.parametrize("backend", ["native", "emulated"])
def test_a_kernel_cache_that_cannot_be_written_is_one_line(tmp_path, tiny_dir, backend):
    """XDG_CACHE_HOME under a regular file (as read-only or full, for root too): exit 2, one line."""
    (tmp_path / "file").write_text("in the way")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "file" / "cache")}
    res = subprocess.run([sys.executable, "-m", "gpubp", "train", "--backend", backend, "--data-dir", tiny_dir,
                          "--no-verify", "--sizes", "10,8,10", "--epochs", "1", "--quiet"],
                         capture_output=True, text=True, env=env, timeout=300)
    one_line_error(res.returncode, res.stderr, "cannot write the kernel cache", "XDG_CACHE_HOME")


def test_what_was_silently_accepted_is_said(capsys, tiny_dir):
    code, out, err = run_cli(capsys, *tiny_train(tiny_dir, "--epochs", "1", "--batch-size", "1000000"))
    assert code == 0 and "warning: batch size 1,000,000 is not less than the 2,000 training images" in err
    one_line_error(*run_cli(capsys, "train", "--epochs", "99999999999999999999")[::2], "at most 1,000,000")
    one_line_error(*run_cli(capsys, "sweep", "--eta", "0.5,,1")[::2], "'0.5,,1' has an empty entry")


def test_sweep_names_the_backend_that_ran_and_a_piped_one_says_it_is_alive(capsys, tiny_dir, monkeypatch):
    import gpubp.cli

    monkeypatch.delenv("GPUBP_BACKEND", raising=False)
    monkeypatch.setattr(gpubp.cli, "HEARTBEAT_SECONDS", 0.0)
    code, _, err = run_cli(capsys, "sweep", "--data-dir", tiny_dir, "--no-verify", "--sizes", "10,8,10",
                           "--epochs", "2", "--seeds", "1-2")
    assert code == 0, err
    assert "models, on backend numpy (" in err.splitlines()[0]
    assert "gpubp sweep: group 1/1 finished epoch 2/2," in err  # stderr is not a terminal here


def test_train_and_evaluate_say_how_long_they_took(capsys, tmp_path, tiny_dir):
    code, out, _ = run_cli(capsys, *tiny_train(tiny_dir, "--epochs", "1", "--save", str(tmp_path / "m.npz")))
    assert code == 0 and re.search(r"^total \d+\.\d s$", out, re.M), out
    code, out, _ = run_cli(capsys, "evaluate", str(tmp_path / "m.npz"), "--data-dir", tiny_dir, "--no-verify")
    assert code == 0 and re.search(r"^test accuracy .* in \d+\.\d\d s$", out, re.M), out


def test_the_seed_a_run_drew_is_printed_and_repeats_the_run(capsys, tiny_dir):
    argv = ["train", "--data-dir", tiny_dir, "--no-verify", "--sizes", "10,8,10", "--backend", "numpy", "--epochs", "1"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    seed = re.search(r"^gpubp train: .*, seed (\d+)$", out, re.M)
    assert seed, out
    again = run_cli(capsys, *argv, "--seed", seed.group(1))[1]
    test_line = [line for line in out.splitlines() if line.startswith("test accuracy")]
    assert test_line and test_line == [line for line in again.splitlines() if line.startswith("test accuracy")]
