"""The training loop: MNIST accuracy, shuffling, the partial last batch, early stopping, divergence."""

import warnings

import numpy as np
import pytest
from helpers import assert_close, assert_differs, assert_equal

from gpubp import Network, train
from gpubp.errors import GpubpError, TrainingDiverged, TrainingWarning
from gpubp.optimizers import OPTIMIZERS


def toy(n=25, n_in=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)).astype(np.float32), rng.integers(0, k, n)


@pytest.mark.slow
def test_one_epoch_of_the_default_network_reaches_90_percent(mnist):
    net = Network([784, 30, 10], seed=1)
    history = net.sgd(mnist["train"], epochs=1, mini_batch_size=10, eta=3.0,
                      evaluation_data=mnist["validation"], seed=1)
    assert len(history) == 1
    r = history[0]
    assert r["validation_accuracy"] >= 0.90, r
    assert 0 < r["train_cost"] < 0.1 and r["seconds"] > 0


def test_epoch_is_one_shuffle_then_contiguous_batches_including_the_partial_one():
    X, y = toy()
    net = Network([6, 5, 3], seed=4, dtype="float64")
    manual = Network([6, 5, 3], seed=4, dtype="float64")
    train(net, (X, y), epochs=2, mini_batch_size=10, eta=0.7, seed=9, monitor_training_cost=False)
    rng = np.random.default_rng(9)
    for _ in range(2):
        perm = rng.permutation(len(X))
        for k in (0, 10, 20):  # batches of 10, 10 and the last 5: none dropped
            idx = perm[k:k + 10]
            manual.update_mini_batch(X[idx], y[idx], 0.7)
    assert_equal(net.get_params(), manual.get_params())


def test_history_records_and_callback():
    X, y = toy(n=40)
    seen = []
    h = train(Network([6, 4, 3], seed=1), (X, y), epochs=3, mini_batch_size=8, eta=0.5,
              evaluation_data=(X, y), on_epoch=seen.append, progress=False)
    assert [r["epoch"] for r in h] == [1, 2, 3] and seen == h  # counted from 1, as the console does
    for r in h:
        assert set(r) == {"epoch", "seconds", "eval_seconds", "train_cost", "validation_accuracy", "mode", "eta"}
        assert r["eta"] == 0.5  # no schedule: the given eta every epoch
        assert r["mode"] == "eager"  # numpy has no graphs
        assert 0 <= r["validation_accuracy"] <= 1 and r["train_cost"] > 0


def test_early_stopping_stops_after_patience_without_improvement():
    X, y = toy(n=30)
    net = Network([6, 4, 3], seed=1)
    # eta so small that validation accuracy cannot improve after the first epoch
    with pytest.warns(TrainingWarning, match="training cost has not moved"):
        h = train(net, (X, y), epochs=50, mini_batch_size=10, eta=1e-12, evaluation_data=(X, y), early_stopping=3)
    assert len(h) == 4 and h.stopped_early and h.best_epoch == 1


def test_early_stopping_restores_the_best_epochs_weights():
    """Keeps a device copy of the best epoch's parameters and puts them back at the end."""
    X, y = toy(n=60, seed=5)
    Xv, yv = toy(n=40, seed=6)
    kw = dict(mini_batch_size=10, eta=2.0, evaluation_data=(Xv, yv), monitor_training_cost=False, progress=False)
    h = train(Network([6, 12, 3], seed=1, dtype="float64"), (X, y), epochs=12, **kw)
    accs = [r["validation_accuracy"] for r in h]
    best = int(np.argmax(accs)) + 1  # the first epoch with the best accuracy
    assert best < len(h) - 2, accs  # the data must make this test meaningful: later epochs do worse
    net = Network([6, 12, 3], seed=1, dtype="float64")
    h = train(net, (X, y), epochs=12, early_stopping=len(h) - best, **kw)
    assert h.best_epoch == best and h.restored_best and net.epochs_trained == len(h)
    ref = Network([6, 12, 3], seed=1, dtype="float64")
    train(ref, (X, y), epochs=best, **kw)
    assert_equal(net.get_params(), ref.get_params())
    assert net.evaluate(Xv, yv) == max(accs)


def test_divergence_names_eta_and_lmbda_and_the_epoch():
    X, y = toy(n=30)
    net = Network([6, 4, 3], seed=1)
    # float32 cannot hold eta/m: delta^L overflows to inf and the weights to NaN
    with pytest.raises(TrainingDiverged, match=r"cost became nan in epoch 1 with eta=1e\+40 and lmbda=0.*--eta 1e\+39"):
        train(net, (X, y), epochs=3, mini_batch_size=10, eta=1e40)


def test_divergence_from_a_huge_lmbda_blames_lmbda():
    """network2's decay 1 - eta*lmbda/n below -1 makes the weights grow each step: lmbda is the culprit."""
    X, y = toy(n=50)
    net = Network([6, 4, 3], seed=1)
    train(net, (X, y), epochs=1, mini_batch_size=10, eta=0.5, monitor_training_cost=False)
    seen = []
    with pytest.raises(TrainingDiverged) as e:
        train(net, (X, y), epochs=20, mini_batch_size=10, eta=3.0, lmbda=100_000, on_epoch=seen.append)
    msg = str(e.value)
    # the epoch as the progress lines count it: from 1 over the network's life, one past the last line
    assert seen and [r["epoch"] for r in seen] == list(range(2, net.epochs_trained))
    assert f"in epoch {net.epochs_trained} with eta=3 and lmbda=100000: lmbda is the likely cause" in msg
    assert "--lmbda" in msg and "eta*lmbda/n = 6000" in msg and "--eta" in msg


def test_training_that_goes_nowhere_is_warned_about():
    """eta=1e9 saturates every unit: validation accuracy stays at chance and the cost stops moving."""
    X, _ = toy(n=200, k=10, seed=3)
    y = np.arange(200) % 10  # balanced: a network stuck on one class scores exactly 1/10
    X[np.arange(200), y % 6] += 2.0
    net = Network([6, 8, 10], seed=1)
    with pytest.warns(TrainingWarning) as w:
        h = train(net, (X, y), epochs=4, mini_batch_size=10, eta=1e9, evaluation_data=(X, y))
    messages = [str(m.message) for m in w]
    assert h.warnings == messages and len(messages) == 2, messages
    assert "at chance" in messages[0] and "eta=1e+09 is probably too large" in messages[0]
    assert "training cost has not moved" in messages[1]


def test_a_healthy_run_is_not_warned_about():
    X, y = toy(n=200, k=3, seed=3)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = train(Network([6, 8, 3], seed=2), (X, y), epochs=4, mini_batch_size=10, eta=1.0, evaluation_data=(X, y))
    assert h.warnings == []


def test_epochs_count_on_across_calls_and_the_optimizer_is_kept():
    X, y = toy(n=30)
    net = Network([6, 4, 3], seed=1)
    train(net, (X, y), epochs=2, mini_batch_size=10, eta=0.5, optimizer="momentum", momentum=0.5,
          monitor_training_cost=False)
    h = train(net, (X, y), epochs=1, mini_batch_size=10, eta=0.5, monitor_training_cost=False)
    assert [r["epoch"] for r in h] == [3] and net.epochs_trained == 3
    assert net.optimizer.name == "sgd" and net.optimizer.eta == 0.5


@pytest.mark.parametrize("optimizer,eta", [("sgd", 3.0), ("momentum", 0.3), ("adam", 0.001)])
def test_each_optimizer_has_a_default_eta_and_learns(optimizer, eta):
    X, y = toy(n=200, n_in=6, k=3, seed=3)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)  # learnable labels in 0..2
    net = Network([6, 8, 3], cost="log_likelihood", activation="tanh", seed=2)
    before = net.evaluate(X, y)
    train(net, (X, y), epochs=15, mini_batch_size=10, optimizer=optimizer,
          **({"eta": 0.01} if optimizer == "adam" else {}), monitor_training_cost=False)
    assert net.optimizer.config()["optimizer"] == optimizer
    assert net.evaluate(X, y) > max(before, 0.8)
    assert OPTIMIZERS[optimizer].default_eta == eta


def test_momentum_is_used_by_the_momentum_optimizer_only():
    X, y = toy(n=30)
    runs = {}
    for mu in (0.0, 0.9):
        for opt in ("sgd", "momentum"):
            net = Network([6, 4, 3], seed=1, dtype="float64")
            train(net, (X, y), epochs=2, mini_batch_size=10, eta=0.3, optimizer=opt, momentum=mu,
                  monitor_training_cost=False)
            runs[opt, mu] = net.get_params()
    assert_equal(runs["sgd", 0.0], runs["sgd", 0.9])  # sgd takes no momentum
    assert_close(runs["momentum", 0.0], runs["sgd", 0.0], rtol=1e-12)  # mu = 0 is plain SGD
    assert_differs(runs["momentum", 0.9], runs["sgd", 0.0], atol=1e-8, rtol=1e-5)


def test_progress_bar_only_when_asked(capsys):
    X, y = toy(n=30)
    train(Network([6, 4, 3], seed=1), (X, y), epochs=1, mini_batch_size=10, eta=0.5, progress=True)
    assert "epoch 1/1" in capsys.readouterr().err
    train(Network([6, 4, 3], seed=1), (X, y), epochs=1, mini_batch_size=10, eta=0.5)  # stderr is no TTY
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kwargs,match", [
    (dict(mini_batch_size=0), "mini_batch_size"),
    (dict(epochs=-1), "epochs"),
    (dict(eta=0), "eta"),
    (dict(lmbda=-1), "lmbda"),
    (dict(optimizer="rmsprop"), "unknown optimizer 'rmsprop'"),
    (dict(optimizer="momentum", momentum=1.0), r"momentum must be in \[0, 1\)"),
    (dict(early_stopping=2), "early stopping needs evaluation data"),
])
def test_bad_training_arguments(kwargs, match):
    X, y = toy()
    with pytest.raises(GpubpError, match=match):
        train(Network([6, 4, 3]), (X, y), **{"epochs": 1, "eta": 0.1, **kwargs})


def test_bad_training_data():
    X, y = toy()
    net = Network([6, 4, 3])
    with pytest.raises(GpubpError, match="one label per row"):
        train(net, (X, y[:-1]), epochs=1)
    with pytest.raises(GpubpError, match=r"shape \(n, 6\)"):
        train(net, (X[:, :5], y), epochs=1)
    with pytest.raises(GpubpError, match=r"lie in \[0, 2\]"):
        train(net, (X, y + 5), epochs=1)


# ---------------------------------------------------------------------------------------------
# The epoch driver (gpubp.training.Epochs): the one loop train, sweeps and bench run through
# ---------------------------------------------------------------------------------------------

def test_a_graphs_capture_is_timed_apart_from_the_epochs_training():
    """Epoch 1 in graph mode: its capture goes to capture_seconds, not to seconds; later epochs
    replay the same graph and have no capture_seconds; nor has an eager run."""
    X, y = toy(n=60)
    graph = train(Network([6, 5, 3], backend="emulated", seed=1, gemm="own"), (X, y), epochs=3, mini_batch_size=7,
                  eta=0.5, graph=True, progress=False)
    assert graph[0]["capture_seconds"] > 0 and not any("capture_seconds" in r for r in graph[1:])
    assert all(r["seconds"] > 0 and r["mode"] == "graph" for r in graph)
    eager = train(Network([6, 5, 3], backend="emulated", seed=1, gemm="own"), (X, y), epochs=2, mini_batch_size=7,
                  eta=0.5, graph=False, progress=False)
    assert not any("capture_seconds" in r for r in eager)


def test_a_captured_graph_keeps_alive_everything_it_recorded():
    """A graph holds raw addresses only: the driver's graph owns the network, the optimizer and the
    data it was captured with, so none is freed while it can still be replayed."""
    import gc
    import weakref

    from gpubp.optimizers import make_optimizer
    from gpubp.training import Epochs

    X, y = toy(n=30)
    net = Network([6, 5, 3], backend="emulated", seed=1, gemm="own")
    Xd, labels = net.to_device(X), net.labels(y)
    opt = make_optimizer("momentum", eta=0.1, n=30).bind(net)
    driver = Epochs(net, Xd, labels, 8, opt, graph=True)
    driver.epoch()
    alive = [weakref.ref(a) for a in (net, opt, Xd, opt.state["velocity"], net.params)]  # what the graph reads
    replay = driver.replay
    del net, opt, Xd, labels, driver, X, y  # (on a host backend the device arrays may be X and y themselves)
    gc.collect()
    assert all(ref() is not None for ref in alive), [ref() is None for ref in alive]
    replay.launch()  # and it still replays
    del replay
    gc.collect()
    assert all(ref() is None for ref in alive)  # nothing else held them


def test_interleave_lays_out_k_permutations_step_by_step():
    perms = np.array([[4, 0, 3, 1, 2], [10, 14, 12, 11, 13]])
    # batches of 2: step 0 = model 0's [4, 0] then model 1's [10, 14]; step 1 likewise; then the last rows
    from gpubp.training import interleave

    assert interleave(perms, 2).tolist() == [4, 0, 10, 14, 3, 1, 12, 11, 2, 13]
    assert interleave(perms[:1], 2).tolist() == perms[0].tolist()


def test_no_module_of_gpubp_steps_outside_the_driver():
    """The epoch loop exists once: only gpubp.training (the driver) and the network itself (its
    book-style update_mini_batch) call .step(."""
    import re
    from pathlib import Path

    import gpubp

    root = Path(gpubp.__file__).parent
    callers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                     if re.search(r"\.step\(", p.read_text()) and p.name not in ("training.py", "network.py"))
    assert callers == [], callers
