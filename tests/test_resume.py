"""Resuming a run and Ctrl-C: nothing of the finished epochs is lost, and a resumed run is the same run."""

import json

import numpy as np
import pytest
from helpers import assert_equal, run_cli

from gpubp import Network
from gpubp.errors import GpubpError, TrainingInterrupted


def toy(n=43, n_in=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in))
    return X, np.argmax(X[:, :k] + 0.3 * rng.standard_normal((n, k)), axis=1)


KW = dict(mini_batch_size=8, monitor_training_cost=False, progress=False)  # 43 rows: a partial last batch


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer,hyper", [("sgd", dict(eta=0.5, lmbda=2.0)),
                                             ("momentum", dict(eta=0.1, lmbda=2.0, momentum=0.8)),
                                             ("adam", dict(eta=0.01, lmbda=1.0))])
def test_two_epochs_saved_and_two_resumed_are_four_epochs(tmp_path, dtype, optimizer, hyper):
    data = toy()
    straight = Network([6, 7, 3], seed=5, dtype=dtype)
    straight.sgd(data, epochs=4, optimizer=optimizer, **hyper, **KW)

    first = Network([6, 7, 3], seed=5, dtype=dtype)
    first.sgd(data, epochs=2, optimizer=optimizer, **hyper, **KW)
    first.save(tmp_path / "m.npz")
    resumed = Network.load(tmp_path / "m.npz")
    h = resumed.sgd(data, epochs=2, resume=True, **KW)  # optimizer, eta, lmbda, batch size: from the file
    assert [r["epoch"] for r in h] == [3, 4] and resumed.epochs_trained == 4
    assert_equal(resumed.get_params(), straight.get_params())  # bitwise
    for k, v in straight.optimizer.state_arrays().items():
        assert_equal(resumed.optimizer.state_arrays()[k], v, what=k)
    assert resumed.rng.bit_generator.state == straight.rng.bit_generator.state


def test_resume_keeps_the_optimizer_state_when_a_hyperparameter_is_overridden(tmp_path):
    data = toy()
    net = Network([6, 7, 3], seed=5, dtype="float64")
    net.sgd(data, epochs=1, optimizer="adam", eta=0.01, **KW)
    t = net.optimizer.state_arrays()["steps"]
    net.save(tmp_path / "m.npz")
    back = Network.load(tmp_path / "m.npz")
    back.sgd(data, epochs=1, eta=0.002, resume=True, **KW)
    assert back.optimizer.name == "adam" and back.optimizer.eta == 0.002
    assert back.optimizer.state_arrays()["steps"][0] == 2 * t[0]  # the step count went on


def test_resume_needs_something_to_resume_and_keeps_its_shuffle():
    with pytest.raises(GpubpError, match="nothing to resume"):
        Network([6, 7, 3]).sgd(toy(), epochs=1, resume=True, **KW)
    net = Network([6, 7, 3])
    net.sgd(toy(), epochs=1, **KW)
    with pytest.raises(GpubpError, match="seed"):
        net.sgd(toy(), epochs=1, resume=True, seed=3, **KW)


# ---------------------------------------------------------------------------------------------
# Ctrl-C: the network is left as it was after the last completed epoch
# ---------------------------------------------------------------------------------------------

def interrupt_at_step(monkeypatch, k):
    """Make the k-th training step (from 1) raise KeyboardInterrupt, as Ctrl-C would."""
    real, calls = Network.step, [0]

    def step(self, *a):
        calls[0] += 1
        if calls[0] == k:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(Network, "step", step)


def test_ctrl_c_inside_an_epoch_leaves_the_last_completed_epoch(monkeypatch):
    data = toy()
    ref = Network([6, 7, 3], seed=5, dtype="float64")
    ref.sgd(data, epochs=2, optimizer="momentum", eta=0.1, **KW)
    net = Network([6, 7, 3], seed=5, dtype="float64")
    interrupt_at_step(monkeypatch, 6 + 6 + 3)  # 6 steps an epoch: the third step of epoch 3
    with pytest.raises(TrainingInterrupted) as e:
        net.sgd(data, epochs=4, optimizer="momentum", eta=0.1, **KW)
    assert isinstance(e.value, KeyboardInterrupt)  # code that catches Ctrl-C still catches it
    assert e.value.epoch == 3 and e.value.completed == 2 and [r["epoch"] for r in e.value.history] == [1, 2]
    assert net.epochs_trained == 2
    assert_equal(net.get_params(), ref.get_params())
    assert_equal(net.optimizer.state_arrays()["velocity"], ref.optimizer.state_arrays()["velocity"])
    assert net.rng.bit_generator.state == ref.rng.bit_generator.state
    monkeypatch.undo()
    net.sgd(data, epochs=2, resume=True, **KW)  # and the run goes on as if nothing happened
    ref.sgd(data, epochs=2, resume=True, **KW)
    assert_equal(net.get_params(), ref.get_params())


def test_ctrl_c_in_the_epoch_callback_keeps_that_epoch():
    def stop(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    net = Network([6, 7, 3], seed=5)
    with pytest.raises(TrainingInterrupted) as e:
        net.sgd(toy(), epochs=4, on_epoch=stop, eta=0.5, **KW)
    assert e.value.epoch is None and e.value.completed == 2 and net.epochs_trained == 2
    assert len(e.value.history) == 2


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------

def tiny(tiny_dir, *extra):
    return ["train", "--data-dir", tiny_dir, "--no-verify", "--backend", "numpy", "--quiet", *extra]


def test_resume_from_the_command_line_continues_the_run(capsys, tmp_path, tiny_dir):
    opts = ["--sizes", "10,8,10", "--optimizer", "momentum", "--eta", "0.2", "--lmbda", "1", "--batch-size", "7",
            "--seed", "4", "--dtype", "float64"]
    assert run_cli(capsys, *tiny(tiny_dir, *opts, "--epochs", "2", "--save", str(tmp_path / "two.npz")))[0] == 0
    assert run_cli(capsys, *tiny(tiny_dir, *opts, "--epochs", "1", "--save", str(tmp_path / "m.npz")))[0] == 0
    code, out, err = run_cli(capsys, *tiny(tiny_dir, "--resume", str(tmp_path / "m.npz"), "--epochs", "1",
                                       "--save", str(tmp_path / "m.npz"),
                                       "--metrics-out", str(tmp_path / "run.json")))
    assert code == 0, err
    a, b = Network.load(tmp_path / "two.npz"), Network.load(tmp_path / "m.npz")  # resumed onto itself, safely
    assert b.epochs_trained == 2
    assert_equal(a.get_params(), b.get_params())
    m = json.loads((tmp_path / "run.json").read_text())
    assert [r["epoch"] for r in m["epochs"]] == [2] and m["config"]["optimizer"] == "momentum"
    assert m["config"]["batch_size"] == 7 and m["resumed_from"] == {"path": str(tmp_path / "m.npz"), "epochs": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "run.json", "two.npz"]


@pytest.mark.parametrize("flag,value,needle", [
    ("--sizes", "10,9,10", "--sizes 10,9,10 conflicts with"),
    ("--cost", "cross_entropy", "--cost cross_entropy conflicts with"),
    ("--dtype", "float64", "--dtype float64 conflicts with"),
    ("--seed", "9", "--seed 9 conflicts with"),
])
def test_resume_refuses_flags_that_contradict_the_file(capsys, tmp_path, tiny_dir, flag, value, needle):
    net = Network([10, 8, 10], seed=1)
    net.sgd(toy(n_in=10, k=10), epochs=1, **KW)
    net.save(tmp_path / "m.npz")
    code, _, err = run_cli(capsys, *tiny(tiny_dir, "--resume", str(tmp_path / "m.npz"), flag, value))
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err and str(tmp_path / "m.npz") in err


def test_ctrl_c_keeps_the_last_completed_epochs_model_and_metrics(capsys, tmp_path, tiny_dir, monkeypatch):
    interrupt_at_step(monkeypatch, 200 + 50)  # 2000 rows / 10: in epoch 2
    model, metrics = tmp_path / "m.npz", tmp_path / "run.json"
    code, out, err = run_cli(capsys, *tiny(tiny_dir, "--sizes", "10,8,10", "--epochs", "3", "--save", str(model),
                                       "--metrics-out", str(metrics)))
    assert code == 130 and "test accuracy" not in out
    assert err.strip() == (f"gpubp train: interrupted in epoch 2: saved the model {model} and the metrics "
                           f"{metrics} after epoch 1")
    m = json.loads(metrics.read_text())
    assert [r["epoch"] for r in m["epochs"]] == [1] and m["interrupted"] == {"epoch": 2, "completed": 1}
    assert m["test_accuracy"] is None and Network.load(model).epochs_trained == 1


def test_ctrl_c_during_the_test_evaluation_keeps_every_epoch(capsys, tmp_path, tiny_dir, monkeypatch):
    model = tmp_path / "m.npz"
    real = Network.measure

    def measure(self, X, *a, **k):
        if X.shape[0] == 200:  # the tiny data's test set
            raise KeyboardInterrupt
        return real(self, X, *a, **k)

    monkeypatch.setattr(Network, "measure", measure)
    code, _, err = run_cli(capsys, *tiny(tiny_dir, "--sizes", "10,8,10", "--epochs", "2", "--save", str(model)))
    assert code == 130
    assert err.strip() == f"gpubp train: interrupted after epoch 2: saved the model {model} after epoch 2"
    assert Network.load(model).epochs_trained == 2


def test_resume_with_another_optimizer_starts_its_state_from_zero(tmp_path):
    net = Network([6, 7, 3], seed=5, dtype="float64")
    net.sgd(toy(), epochs=1, optimizer="momentum", eta=0.1, lmbda=2.0, **KW)
    h = net.sgd(toy(), epochs=1, optimizer="adam", resume=True, **KW)
    assert net.optimizer.name == "adam" and net.optimizer.lmbda == 2.0  # lmbda kept, eta adam's default
    assert net.optimizer.eta == 0.001 and net.optimizer.state_arrays()["steps"][0] == 6 and h[0]["epoch"] == 2


def test_ctrl_c_before_the_first_epoch_finishes_overwrites_nothing(capsys, tmp_path, tiny_dir, monkeypatch):
    model, metrics = tmp_path / "m.npz", tmp_path / "run.json"
    outputs = ["--save", str(model), "--metrics-out", str(metrics)]
    assert run_cli(capsys, *tiny(tiny_dir, "--sizes", "10,8,10", "--epochs", "1", *outputs))[0] == 0
    before = model.read_bytes(), metrics.read_bytes()
    interrupt_at_step(monkeypatch, 50)  # in epoch 1 of a new run over the same files
    code, _, err = run_cli(capsys, *tiny(tiny_dir, "--sizes", "10,8,10", "--epochs", "3", *outputs))
    assert code == 130 and err.strip() == ("gpubp train: interrupted in epoch 1: no epoch finished, "
                                           "so nothing was written")
    assert (model.read_bytes(), metrics.read_bytes()) == before
    monkeypatch.undo()
    interrupt_at_step(monkeypatch, 100)  # and in the first epoch of a resumed run, saved onto itself
    code, _, err = run_cli(capsys, *tiny(tiny_dir, "--resume", str(model), "--epochs", "2", "--save", str(model)))
    assert code == 130 and "in epoch 2: no epoch finished" in err and model.read_bytes() == before[0]
