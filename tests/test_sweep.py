"""Sweeps: a Stack of K models trains each model exactly as its own network would (bit for bit on
NumPy, within the backends' tolerance on the kernels), a step's device work does not grow with K,
and `gpubp sweep` reports, writes and plots every run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_close, assert_equal, backends

from gpubp import Network, get_backend
from gpubp.errors import GpubpError
from gpubp.optimizers import ModelOptimizers, make_optimizer
from gpubp.sweeps import grid, groups, normalize, parse_seeds, sweep, table, train_group
from gpubp.sweeps.stack import Stack

BACKENDS = backends()
TOL = {"float64": 1e-10, "float32": 1e-4}  # relative, as tests/test_emulated.py
COMBOS = [("quadratic", "sigmoid", "sgd", [0.5, 0.2, 0.1]), ("log_likelihood", "relu", "momentum", [0.1, 0.05, 0.2]),
          ("cross_entropy", "tanh", "adam", [0.01, 0.003, 0.02])]


def same_params(got, expected, backend, dtype, what):
    """Bit for bit on NumPy (the same BLAS calls on the same numbers); within TOL elsewhere (a GPU
    folds plain SGD's update into BP4 for one network, never for a stack)."""
    got, expected = np.asarray(got), np.asarray(expected)
    if backend == "numpy":
        assert_equal(got, expected, what=what)
        return
    rel = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert rel <= TOL[dtype], f"{what}: relative difference {rel:.3e} > {TOL[dtype]:g}"
    assert_close(got, expected, rtol=TOL[dtype], atol=TOL[dtype] * np.abs(expected).max(), what=what)


def mnist_rows(mnist, n=300):
    return {k: (X[:n], y[:n]) for k, (X, y) in mnist.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cost,activation,optimizer,etas", COMBOS)
def test_each_model_of_a_stack_trains_as_its_own_network(backend, dtype, cost, activation, optimizer, etas):
    """Three models, each its own seed, eta and lambda; two epochs of 8-row batches with a partial last
    one, driven through the public API as gpubp.sweeps drives it: weights and optimizer state equal."""
    rng = np.random.default_rng(31)
    X, y = rng.random((45, 20)), rng.integers(0, 5, 45)
    seeds, lmbdas = [3, 4, 5], [0.0, 1.0, 2.5]
    alone = []
    for s, e, lm in zip(seeds, etas, lmbdas):
        net = Network([20, 9, 7, 5], cost=cost, activation=activation, backend=backend, dtype=dtype, seed=s)
        net.sgd((X, y), epochs=2, mini_batch_size=8, eta=e, lmbda=lm, optimizer=optimizer, momentum=0.8,
                monitor_training_cost=False)
        alone.append((net.get_params(), net.optimizer.state_arrays()))
    stack = Stack([20, 9, 7, 5], seeds, cost=cost, activation=activation, backend=backend, dtype=dtype)
    hyper = {"momentum": 0.8} if optimizer == "momentum" else {}
    opt = ModelOptimizers([make_optimizer(optimizer, eta=e, lmbda=lm, n=45, **hyper) for e, lm in zip(etas, lmbdas)])
    Xd, xp = stack.to_device(X), stack.xp
    Yd = stack.one_hot(stack.labels(y))
    for _ in range(2):
        perms = stack.be.to_device(np.stack([r.permutation(45) for r in stack.rngs]))
        for k in range(0, 45, 8):
            stack.step(xp.take(Xd, perms[:, k:k + 8], axis=0), xp.take(Yd, perms[:, k:k + 8], axis=0), opt)
    got = stack.get_params()
    for i, (params, state) in enumerate(alone):
        same_params(got[i], params, backend, dtype, f"model {i} ({optimizer}) vs its own network")
        for name in ("velocity", "m", "v"):
            if name in state:
                same_params(stack.be.to_host(opt.state[name][i]), state[name], backend, dtype, f"model {i} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("stack", [True, False], ids=["stack", "networks"])
def test_a_sweep_group_equals_gpubp_train_on_mnist(mnist, backend, dtype, stack):
    """network2's setup on 300 MNIST rows: seeds x eta x lambda in one group equal separate trainings,
    weights, every epoch's validation accuracy and the test accuracy (eta <= 0.5: at eta 3, cross-
    entropy training is chaotic and one rounding apart grows to a different network, on any backend),
    whether the group trains as one Stack or as eight networks in three threads."""
    data = mnist_rows(mnist)
    runs = grid([1, 2], etas=[0.1, 0.5], lmbdas=[0.0, 5.0], sizes=[784, 20, 10], cost="cross_entropy", epochs=2,
                dtype=dtype)
    group = train_group(runs, data, backend=backend, keep_params=True, stack=stack, threads=3)
    assert group["size"] == 8 and len(group["runs"]) == 8
    assert group["stacked"] is stack and group["threads"] == (1 if stack else 3)
    for res in group["runs"]:
        r = res["run"]
        net = Network(r["sizes"], cost=r["cost"], backend=backend, dtype=dtype, seed=r["seed"])
        h = net.sgd(data["train"], epochs=2, mini_batch_size=10, eta=r["eta"], lmbda=r["lmbda"],
                    evaluation_data=data["validation"], monitor_training_cost=False)
        same_params(res["params"], net.get_params(), backend, dtype, f"run {r['seed']}, {r['eta']}, {r['lmbda']}")
        if backend == "numpy":
            assert [e["validation_accuracy"] for e in res["history"]] == [e["validation_accuracy"] for e in h]
            assert res["test_accuracy"] == net.evaluate(*data["test"])
        best = max(e["validation_accuracy"] for e in res["history"])
        assert res["best_validation_accuracy"] == best
        assert res["history"][res["best_epoch"] - 1]["validation_accuracy"] == best


@pytest.mark.parametrize("backend", ["emulated", pytest.param("cupy", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_stack_step_costs_the_same_launches_for_any_k(backend, optimizer):
    """Per step: L bias kernels, one output delta, L-1 hidden deltas and one update; 4L-1 batched GEMMs;
    nothing allocated, copied or waited for, for 1 model as for 5."""
    be = get_backend(backend)
    counts = {}
    for K in (1, 5):
        stack = Stack([784, 30, 10], list(range(K)), backend=be)
        rng = np.random.default_rng(0)
        X = be.to_device(rng.random((K, 10, 784)), np.float32)
        Y = be.to_device(np.eye(10)[rng.integers(0, 10, (K, 10))], np.float32)
        opt = ModelOptimizers([make_optimizer(optimizer, eta=0.1 + k, lmbda=1.0, n=100) for k in range(K)])
        stack.step(X, Y, opt)  # the first step makes the workspaces
        with be.counters() as c:
            stack.step(X, Y, opt)
        counts[K] = c.as_dict()
    L = 2
    assert counts[1] == counts[5]
    assert counts[5]["launches"] == 2 * L + 1 and counts[5]["gemms"] == 4 * L - 1
    assert [counts[5][k] for k in ("h2d", "d2h", "syncs", "allocs")] == [0, 0, 0, 0]


@pytest.mark.parametrize("backend", ["emulated", pytest.param("cupy", marks=pytest.mark.gpu)])
def test_a_group_returns_nothing_to_the_host_inside_an_epoch(backend):
    """Per epoch: the K permutations go up in one copy, one sync stops the clock, and one
    copy comes back (the validation accuracy and the finiteness check, summed on the device)."""
    be = get_backend(backend)
    rng = np.random.default_rng(0)
    X, y = rng.random((250, 20)), rng.integers(0, 4, 250)
    data = {"train": (X, y), "validation": (X[:50], y[:50]), "test": (X[:50], y[:50])}
    counts = {}
    for epochs in (1, 3):
        with be.counters() as c:
            train_group(grid([1, 2, 3], sizes=[20, 8, 4], epochs=epochs, eta=1.0), data, backend=be, stack=True)
        counts[epochs] = c
    assert counts[3].h2d - counts[1].h2d == 2 and counts[3].syncs - counts[1].syncs == 2
    assert counts[3].d2h - counts[1].d2h == 2 and counts[3].allocs == counts[1].allocs
    # per epoch: 25 steps of one gather and 2L + 1 = 5 kernels; an evaluation of one fill, L = 2 bias
    # kernels, and K = 3 argmax counts and parameter sums
    assert counts[3].launches - counts[1].launches == 2 * (25 * 6 + 1 + 2 + 3 + 3)


@pytest.mark.parametrize("backend", ["numpy", "emulated"])
def test_measure_models_is_each_networks_measure(backend):
    rng = np.random.default_rng(2)
    X, y = rng.random((23, 12)), rng.integers(0, 4, 23)
    stack = Stack([12, 6, 4], [7, 8, 9], cost="log_likelihood", backend=backend, dtype="float64")
    lmbdas = [0.0, 2.0, 5.0]
    for k, m in enumerate(stack.measure(X, y, lmbda=lmbdas)):
        alone = stack.network(k).measure(X, y, lmbda=lmbdas[k])
        assert m["correct"] == alone["correct"] and m["cost"] == pytest.approx(alone["cost"], rel=1e-12)
    assert stack.network(1).get_params().tolist() == Network([12, 6, 4], seed=8, dtype="float64").get_params().tolist()


def test_grid_groups_and_seeds():
    assert parse_seeds("1-4,9") == [1, 2, 3, 4, 9] and parse_seeds("3") == [3]
    for bad in ("1-x", "2,2", "-1", ""):
        with pytest.raises(GpubpError, match="seeds"):
            parse_seeds(bad)
    runs = grid([1, 2, 3], etas=[0.1, 0.5], lmbdas=[0, 5], sizes=[784, 30, 10])
    assert [(r["eta"], r["lmbda"], r["seed"]) for r in runs[:4]] == [(0.1, 0, 1), (0.1, 0, 2), (0.1, 0, 3), (0.1, 5, 1)]
    assert grid([1])[0]["eta"] == 3.0  # None: sgd's default, written out
    other = grid([1], sizes=[784, 50, 10])
    plan = groups(runs + other, group_size=5)
    assert [len(g) for g in plan] == [5, 5, 2, 1]  # a shape of its own is a group of its own
    with pytest.raises(GpubpError, match="unknown run settings"):
        normalize({"seed": 1, "etta": 0.1})
    with pytest.raises(GpubpError, match="eta must be > 0"):
        grid([1], etas=[-1.0])
    with pytest.raises(GpubpError, match="same run twice"):
        sweep(runs[:1] * 2, data={})
    with pytest.raises(GpubpError, match="optimizer kind"):
        ModelOptimizers([make_optimizer("sgd"), make_optimizer("adam")])


def test_groups_in_two_threads_give_the_same_runs():
    """Two groups at once, each in its thread, on NumPy: the same results as one after the other (each
    thread has its own scratch buffers: shared ones would mix the two groups' updates)."""
    rng = np.random.default_rng(5)
    X, y = rng.random((300, 300)).astype(np.float32), rng.integers(0, 4, 300)
    data = {"train": (X, y), "validation": (X[:100], y[:100]), "test": (X[100:200], y[100:200])}
    # big enough that NumPy lets go of the GIL in the updates (shared scratch made this fail here)
    runs = grid([1, 2, 3, 4], etas=[0.2], sizes=[300, 64, 4], epochs=2, optimizer="momentum", lmbdas=[1.0],
                batch_size=5)
    outcomes = []
    for threads in (1, 2, 2):
        res = sweep(runs, data=data, group_size=2, threads=threads, progress=False)
        outcomes.append([(r["run"]["seed"], r["test_accuracy"], [h["validation_accuracy"] for h in r["history"]])
                         for r in res["runs"]])
    assert outcomes[0] == outcomes[1] == outcomes[2]


def test_a_diverging_model_is_reported_and_the_others_train_on():
    rng = np.random.default_rng(0)
    X, y = rng.random((60, 8)).astype(np.float32), rng.integers(0, 3, 60)
    data = {"train": (X, y), "validation": (X, y), "test": (X, y)}
    runs = grid([1], etas=[0.5, 1e200], sizes=[8, 5, 3], epochs=2, dtype="float64", activation="relu",
                cost="log_likelihood")
    res = sweep(runs, data=data, progress=False)  # no NumPy overflow warning escapes (warnings are errors here)
    by_eta = {r["run"]["eta"]: r for r in res["runs"]}
    assert by_eta[1e200]["diverged_epoch"] == 1 and by_eta[0.5]["diverged_epoch"] is None
    assert "diverged in epoch 1" in table(res) and by_eta[0.5]["test_accuracy"] > 0.3


def test_ray_without_the_extra_says_how_to_get_it():
    try:
        import ray  # noqa: F401
        pytest.skip("the ray extra is installed here (tests/test_ray_sweep.py runs it)")
    except ImportError:
        pass
    X, y = np.random.default_rng(0).random((30, 6)), np.arange(30) % 3
    with pytest.raises(GpubpError, match=r"--ray needs Ray: .*--extra ray"):
        sweep(grid([1], sizes=[6, 4, 3], epochs=1), data={"train": (X, y)}, ray="auto", progress=False)


def test_a_sweep_without_ray_imports_nothing_of_ray():
    code = ("import sys, numpy as np; from gpubp import sweep; from gpubp.sweeps import grid\n"
            "X = np.random.default_rng(0).random((30, 6)); y = np.arange(30) % 3\n"
            "d = {'train': (X, y), 'validation': (X, y), 'test': (X, y)}\n"
            "sweep(grid([1, 2], sizes=[6, 4, 3], epochs=1), data=d, progress=False)\n"
            "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_gpubp_sweep_prints_writes_and_plots_and_matches_gpubp_train(tmp_path, mnist_dir, capsys):
    """One epoch of [784,20,10] on all of MNIST, two seeds: the sweep's test accuracy for seed 2 is the
    one `gpubp train --seed 2` gets; the table, summary, JSON and PNG are there."""
    from gpubp.cli import main

    common = ["--sizes", "784,20,10", "--cost", "cross_entropy", "--epochs", "1", "--eta", "0.5", "--lmbda", "5",
              "--data-dir", mnist_dir, "--backend", "numpy"]
    out = tmp_path / "sweep.json"
    assert main(["sweep", *common, "--seeds", "1-2", "--json", str(out), "--plot", str(tmp_path / "s.png"),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| eta 0.5, lambda 5 | 2 |" in printed and "| config | seeds | test mean |" in printed
    res = json.loads(out.read_text())
    assert {"gpubp_version", "created", "argv", "machine", "groups", "runs"} <= res.keys() and len(res["runs"]) == 2
    assert res["argv"][:2] == ["gpubp", "sweep"]
    assert all(len(r["history"]) == 1 and r["run"]["sizes"] == [784, 20, 10] for r in res["runs"])
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    metrics = tmp_path / "train.json"
    assert main(["train", *common, "--seed", "2", "--quiet", "--no-train-cost", "--metrics-out", str(metrics)]) == 0
    alone = json.loads(metrics.read_text())
    run = next(r for r in res["runs"] if r["run"]["seed"] == 2)
    assert run["test_accuracy"] == alone["test_accuracy"]
    assert run["history"][0]["validation_accuracy"] == alone["epochs"][0]["validation_accuracy"]


def test_the_readmes_sweep_commands_parse():
    """The Sweeps section's commands are real: each parses as gpubp's parser reads it."""
    import shlex
    from pathlib import Path

    from gpubp.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Sweeps\n", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in section.splitlines() if line.startswith("uv run") and " gpubp sweep " in line]
    assert len(commands) == 2
    for c in commands:
        words = shlex.split(c)
        args = build_parser().parse_args(words[words.index("gpubp") + 1:])
        assert args.command == "sweep" and args.func.__name__ == "cmd_sweep"


def test_ctrl_c_in_a_sweep_keeps_the_groups_that_finished(tmp_path, tiny_dir, capsys, monkeypatch):
    """Ctrl-C while the third group trains: the table, JSON and plot hold the two groups that
    finished, the JSON says it was interrupted, the last line says what was kept, exit 130."""
    from gpubp.cli import main
    from gpubp.sweeps import run as sweep_run

    real, calls = sweep_run.train_group, []

    def until_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_run, "train_group", until_ctrl_c)
    out_json, out_png = tmp_path / "s.json", tmp_path / "s.png"
    code = main(["sweep", "--data-dir", tiny_dir, "--no-verify", "--sizes", "10,8,10", "--seeds", "1-2",
                 "--eta", "0.5,1,2", "--epochs", "1", "--group-size", "2", "--backend", "numpy", "--quiet",
                 "--json", str(out_json), "--plot", str(out_png)])
    out, err = capsys.readouterr()
    assert code == 130, err
    res = json.loads(out_json.read_text())
    assert res["interrupted"] == {"groups_finished": 2, "groups": 3}
    assert sorted((r["run"]["eta"], r["run"]["seed"]) for r in res["runs"]) == [(0.5, 1), (0.5, 2), (1.0, 1), (1.0, 2)]
    assert "| eta 0.5, lambda 0 | 1 |" in out and "| eta 1, lambda 0 | 2 |" in out and "eta 2" not in out
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    last = err.strip().splitlines()[-1]
    assert last.startswith("gpubp sweep: interrupted: 2 of 3 groups finished (4 runs)") and "s.json" in last


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_stack_is_trained_by_the_same_driver_graph_and_all(optimizer):
    """gpubp.training.Epochs trains a Stack as it trains a Network: K interleaved permutations, the
    partial last batch, and an epoch captured as one graph (the emulator's) that replays bit for bit
    what the eager epochs do; every model equals its own network trained by gpubp.training.train."""
    from gpubp.training import Epochs

    rng = np.random.default_rng(8)
    X, y = rng.random((45, 20)), rng.integers(0, 5, 45)
    seeds, etas, lmbdas = [3, 4, 5], {"sgd": [0.5, 0.2, 0.1], "adam": [0.01, 0.003, 0.02]}[optimizer], [0.0, 1.0, 2.5]
    params = {}
    for graph in (False, True):
        stack = Stack([20, 9, 5], seeds, cost="log_likelihood", activation="relu", backend="emulated", dtype="float64")
        opt = ModelOptimizers([make_optimizer(optimizer, eta=e, lmbda=lm, n=45) for e, lm in zip(etas, lmbdas)])
        driver = Epochs(stack, stack.to_device(X), stack.labels(y), 8, opt, graph=graph)
        with stack.be.counters() as c:
            for _ in range(2):
                driver.epoch()
        assert c.graph_launches == (2 if graph else 0) and driver.mode == ("graph" if graph else "eager")
        params[graph] = stack.get_params()
    assert_equal(params[True], params[False])
    for i, (s, e, lm) in enumerate(zip(seeds, etas, lmbdas)):
        net = Network([20, 9, 5], cost="log_likelihood", activation="relu", backend="emulated", dtype="float64", seed=s)
        net.sgd((X, y), epochs=2, mini_batch_size=8, eta=e, lmbda=lm, optimizer=optimizer, monitor_training_cost=False)
        same_params(params[True][i], net.get_params(), "emulated", "float64", f"model {i} vs its own network")


def test_a_cpu_sweep_spreads_its_models_over_every_core_by_default():
    rng = np.random.default_rng(1)
    X, y = rng.random((40, 6)), rng.integers(0, 3, 40)
    data = {"train": (X, y), "validation": (X, y), "test": (X, y)}
    res = sweep(grid([1, 2, 3, 4, 5], sizes=[6, 4, 3], epochs=1), data=data, backend="numpy", progress=False)
    assert res["groups"][0]["stacked"] is False
    assert res["groups"][0]["threads"] == min(5, os.cpu_count() or 1)
    assert sweep(grid([1, 2], sizes=[6, 4, 3], epochs=1), data=data, backend="numpy", threads=1,
                 progress=False)["groups"][0]["threads"] == 1


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_threaded_group_gives_each_thread_its_share_of_the_blas_and_puts_it_back(backend, monkeypatch):
    """K models on T threads: NumPy's BLAS on cores // T threads while the group lives (its idle threads
    spun on the core another model needed), the count before afterwards; each worker thread told the
    backend its share."""
    from gpubp import sysinfo
    from gpubp.sweeps.run import Group

    if sysinfo.set_blas_threads(2) is None:
        pytest.skip("this NumPy's BLAS cannot be told its threads")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    told = []
    be = get_backend(backend)
    monkeypatch.setattr(be, "use_cores", told.append)
    rng = np.random.default_rng(1)
    X, y = rng.random((40, 6)), rng.integers(0, 3, 40)
    data = {"train": (X, y), "validation": (X, y), "test": (X, y)}
    group = Group(grid([1, 2, 3], sizes=[6, 4, 3], epochs=1), data, be, stack=False, threads=2)
    try:
        assert sysinfo._openblas_threads() == 2  # 4 cores over 2 threads
        group.epoch(1, False)
        assert told and set(told) == {2}  # each worker thread (one or two of them), told 4 // 2
    finally:
        group.close()
    assert sysinfo._openblas_threads() == 2
    sysinfo.set_blas_threads(1)
    group = Group(grid([1, 2], sizes=[6, 4, 3], epochs=1), data, be, stack=False, threads=2)
    assert sysinfo._openblas_threads() == 2
    group.close()
    assert sysinfo._openblas_threads() == 1  # the count before, put back
