"""Augmentation, max-norm and learning-rate schedules through the epoch driver (gpubp.training.Epochs):
the same weights on every backend, eagerly and in a graph, nothing back to the host inside an epoch, and
a resumed run that continues exactly."""

import math

import numpy as np
import pytest
from helpers import assert_close

from gpubp import Augment, Network, reference, train
from gpubp.backends import get_backend
from gpubp.errors import GpubpError
from gpubp.schedules import SCHEDULES, Schedule
from gpubp.training import Epochs

BACKENDS = ["numpy", "emulated", "native"]
AUG = Augment(shift=1.5, rotate=12, scale=0.1, elastic_alpha=6, elastic_sigma=2)


def images(n=36, seed=0):
    """n 28x28 'digits' (a bright bar whose position is the label) with noise, float64, and labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    X = rng.random((n, 28, 28)) * 0.2
    for i, label in enumerate(y):
        X[i, 4 + 2 * label:6 + 2 * label, 5:23] = 0.9
    return X.reshape(n, 784), y


def trained(backend, epochs=3, graph=None, **extras):
    X, y = images()
    net = Network([784, 12, 10], cost="log_likelihood", activation="relu", backend=backend, dtype="float64", seed=5)
    h = net.sgd((X, y), epochs=epochs, mini_batch_size=8, eta=0.05, optimizer="momentum", evaluation_data=(X, y),
                graph=graph, **extras)
    return net, h


def test_each_epoch_gathers_from_new_distortions_keyed_by_the_seed_and_epoch():
    X, y = images()
    net = Network([784, 12, 10], backend="native", dtype="float64", seed=7)
    be = net.be
    net.sgd((X, y), epochs=0, eta=0.1)  # binds an optimizer without training
    driver = Epochs(net, net.to_device(X), net.labels(y, len(y)), 8, net.optimizer, graph=True, augment=AUG)
    seen = []
    for epoch in (0, 1):
        net.epochs_trained = epoch
        driver.distorted[...] = np.nan  # poisoned: the epoch must write every row
        driver.epoch()
        seen.append(be.to_host(driver.distorted).copy())
        assert_close(seen[-1], AUG(X, seed=7, epoch=epoch, backend="numpy"), atol=1e-12, what=f"epoch {epoch}")
    assert np.abs(seen[0] - seen[1]).max() > 0.1  # new distortions every epoch
    assert np.abs(seen[0] - X).max() > 0.1


@pytest.mark.parametrize("backend", ["emulated", "native"])
def test_augmentation_and_max_norm_train_the_same_weights_as_numpy(backend):
    ref, _ = trained("numpy", augment=AUG, max_norm=0.8)
    net, h = trained(backend, augment=AUG, max_norm=0.8)
    assert_close(net.get_params(), ref.get_params(), atol=1e-10, rtol=1e-10, what=f"{backend} vs numpy")
    plain, _ = trained("numpy")
    assert np.abs(plain.get_params() - ref.get_params()).max() > 1e-3  # the distortions and the bound did something
    if get_backend(backend).graphs_by_default:
        assert [r["mode"] for r in h] == ["graph"] * 3
        assert ["capture_seconds" in r for r in h] == [True, False, False]  # one capture: the key is uploaded


@pytest.mark.parametrize("backend", ["emulated", "native"])
def test_an_augmented_epoch_asks_nothing_of_the_host(backend):
    """Inside an epoch with augmentation on: the permutation and the key go up (two copies), nothing comes
    back, nothing is allocated, and one sync stops the clock."""
    X, y = images()
    net = Network([784, 12, 10], backend=backend, dtype="float32", seed=3)
    net.sgd((X, y), epochs=1, mini_batch_size=8, eta=0.1)  # an optimizer with its state
    for graph in (False, True) if net.be.graphs_by_default else (False,):
        driver = Epochs(net, net.to_device(X), net.labels(y, len(y)), 8, net.optimizer, graph=graph, augment=AUG,
                        max_norm=1.0)
        driver.prepare()
        driver.epoch()  # the first epoch makes the workspaces
        with net.be.counters() as c:
            driver.epoch()
        assert (c.h2d, c.d2h, c.allocs, c.syncs) == (2, 0, 0, 1), (graph, c)


def test_max_norm_bounds_every_hidden_row_after_every_step_as_the_reference_does():
    """numpy's run equals a hand-written loop: each step's update, then reference.max_norm on every hidden
    layer (not the output layer); the bound holds after every step."""
    X, y = images(n=30)
    c, eta = 0.5, 0.8
    net = Network([784, 9, 7, 10], dtype="float64", seed=2)
    manual = Network([784, 9, 7, 10], dtype="float64", seed=2)
    steps = []
    original = Epochs._max_norm

    def checked(self):
        original(self)
        steps.append(max(np.linalg.norm(W, axis=1).max() for W in self.model.weights[:-1]))

    Epochs._max_norm = checked
    try:
        train(net, (X, y), epochs=2, mini_batch_size=8, eta=eta, seed=4, max_norm=c, monitor_training_cost=False)
    finally:
        Epochs._max_norm = original
    assert len(steps) == 2 * 4 and max(steps) <= c * (1 + 1e-12)
    rng = np.random.default_rng(4)
    for _ in range(2):
        perm = rng.permutation(len(X))
        for k in range(0, len(X), 8):
            idx = perm[k:k + 8]
            manual.update_mini_batch(X[idx], y[idx], eta)
            for W in manual.weights[:-1]:
                reference.max_norm(W, *W.shape, c)
    assert np.array_equal(net.get_params(), manual.get_params())
    assert np.linalg.norm(net.weights[-1], axis=1).max() > c  # the output layer is not bounded


@pytest.mark.parametrize("name", SCHEDULES)
def test_each_schedules_eta_per_epoch_is_in_the_records(name):
    X, y = images(n=20)
    net = Network([784, 6, 10], dtype="float64", seed=1)
    h = net.sgd((X, y), epochs=4, mini_batch_size=10, eta=0.3, evaluation_data=(X, y), schedule=name, warmup=1)
    expected = Schedule(name, warmup=1, epochs=4)
    etas = []
    for e, r in enumerate(h):
        etas.append(expected.eta(0.3, e))
        expected.observe(r["validation_accuracy"])
    assert [r["eta"] for r in h] == pytest.approx(etas, rel=1e-15)
    assert h[0]["eta"] == pytest.approx(0.15)  # warm-up: eta * 1/2
    if name in ("step", "exp", "cosine"):
        assert h[-1]["eta"] < 0.3 or name == "step"


def test_plateau_divides_eta_and_stops_training_like_early_stopping():
    X, y = images(n=20)
    net = Network([784, 6, 10], dtype="float64", seed=1)
    h = net.sgd((X, y), epochs=50, mini_batch_size=10, eta=1e-9, evaluation_data=(X, y),
                schedule=Schedule("plateau", patience=1), monitor_training_cost=False)
    # epoch 1 sets the best; each later epoch without a better accuracy halves eta; at eta/128 it stops
    assert len(h) == 8 and h.stopped_early
    assert [r["eta"] / 1e-9 for r in h] == pytest.approx([1, 1, 1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64])


def test_a_scheduled_graph_is_recaptured_when_eta_changes_and_trains_as_numpy_does():
    ref, hr = trained("numpy", epochs=3, schedule="exp")
    net, h = trained("native", epochs=3, schedule="exp")
    assert_close(net.get_params(), ref.get_params(), atol=1e-10, rtol=1e-10, what="native graph vs numpy")
    assert [r["eta"] for r in h] == [r["eta"] for r in hr] == pytest.approx([0.05, 0.05 * 0.95, 0.05 * 0.95 ** 2])
    assert all("capture_seconds" in r for r in h)  # each epoch's eta is new: each is recaptured


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_two_plus_two_epochs_resumed_from_a_file_equal_four(backend, tmp_path):
    """Augmentation, max-norm and a schedule (its settings, state and base eta) are in the model file."""
    extras = {"augment": AUG, "max_norm": 0.9}
    four, h4 = trained(backend, epochs=4, schedule=Schedule("cosine", epochs=4, warmup=1), **extras)
    two, _ = trained(backend, epochs=2, schedule=Schedule("cosine", epochs=4, warmup=1), **extras)
    two.save(tmp_path / "m.npz")
    again = Network.load(tmp_path / "m.npz", backend=backend)
    X, y = images()
    h = again.sgd((X, y), epochs=2, resume=True, evaluation_data=(X, y))
    assert np.array_equal(again.get_params(), four.get_params())
    assert [r["eta"] for r in h] == [r["eta"] for r in h4[2:]]
    assert again.run_settings["augment"] == AUG.as_dict() and again.run_settings["max_norm"] == 0.9


def test_a_resumed_plateau_keeps_its_state(tmp_path):
    X, y = images(n=20)
    net = Network([784, 6, 10], dtype="float64", seed=1)
    net.sgd((X, y), epochs=3, mini_batch_size=10, eta=1e-9, evaluation_data=(X, y),
            schedule=Schedule("plateau", patience=1), monitor_training_cost=False)
    net.save(tmp_path / "p.npz")
    again = Network.load(tmp_path / "p.npz")
    h = again.sgd((X, y), epochs=50, resume=True, evaluation_data=(X, y), monitor_training_cost=False)
    assert len(h) == 5 and h.stopped_early  # 3 + 5 = the 8 epochs of an uninterrupted run
    assert h[0]["eta"] == pytest.approx(1e-9 / 4)


@pytest.mark.parametrize("kwargs,match", [
    ({"augment": "elastic"}, "augment must be a gpubp.Augment"),
    ({"max_norm": -1.0}, "max_norm must be a finite number"),
    ({"max_norm": math.nan}, "max_norm must be a finite number"),
    ({"schedule": "linear"}, "unknown schedule 'linear'"),
    ({"schedule": "cosine", "warmup": 5}, "schedule epochs must be > warmup"),
    ({"warmup": -1}, "warmup must be >= 0"),
])
def test_bad_extras_are_one_line_errors(kwargs, match):
    X, y = images(n=10)
    with pytest.raises(GpubpError, match=match):
        Network([784, 4, 10], seed=1).sgd((X, y), epochs=2, eta=0.1, **kwargs)


def test_a_cosine_schedule_past_its_end_is_refused_not_trained_at_eta_zero(tmp_path):
    X, y = images(n=10)
    net = Network([784, 4, 10], seed=1)
    net.sgd((X, y), epochs=2, eta=0.1, schedule="cosine")
    with pytest.raises(GpubpError, match="gives eta 0 from epoch 3"):
        net.sgd((X, y), epochs=1, resume=True)
    h = net.sgd((X, y), epochs=2, resume=True, schedule="cosine")  # a new cosine over the network's 4 epochs
    assert [r["eta"] for r in h] == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in (2, 3)])


def test_augmentation_with_no_distortion_trains_as_without():
    a, _ = trained("numpy", epochs=2, augment=Augment())
    b, _ = trained("numpy", epochs=2)
    assert np.array_equal(a.get_params(), b.get_params())


def test_the_cupy_backend_captures_augmentation_and_max_norm_in_its_epoch_graph(cupy_be):
    """On the CuPy stand-in (CuPy 14's capture rules, kernels on the emulator): one capture for three
    epochs, the weights numpy trains (float64)."""
    be, _ = cupy_be
    ref, _ = trained("numpy", augment=AUG, max_norm=0.8)
    net, h = trained(be, graph=True, augment=AUG, max_norm=0.8)
    assert [r["mode"] for r in h] == ["graph"] * 3 and ["capture_seconds" in r for r in h] == [True, False, False]
    assert_close(be.to_host(net.params), ref.get_params(), atol=1e-10, rtol=1e-10, what="cupy stand-in vs numpy")


@pytest.mark.parametrize("backend", ["emulated", "native"])
def test_dropout_augmentation_max_norm_and_a_schedule_together_train_as_numpy_and_resume_exactly(backend, tmp_path):
    """All the new features at once (float64): the kernel backends train numpy's weights, and 2 epochs,
    save, load and 2 resumed epochs give the 4 epochs' weights."""
    X, y = images()

    def net_on(be):
        return Network([784, 12, 10], cost="log_likelihood", activation="relu", backend=be, dtype="float64",
                       seed=5, dropout=0.3, input_dropout=0.1)

    extras = {"augment": AUG, "max_norm": 0.8, "mini_batch_size": 8, "eta": 0.05, "optimizer": "momentum"}
    ref = net_on("numpy")
    ref.sgd((X, y), epochs=4, schedule="exp", **extras)
    net = net_on(backend)
    net.sgd((X, y), epochs=2, schedule=Schedule("exp", epochs=4), **extras)
    net.save(tmp_path / "all.npz")
    again = Network.load(tmp_path / "all.npz", backend=backend)
    again.sgd((X, y), epochs=2, resume=True)
    assert_close(again.get_params(), ref.get_params(), atol=1e-10, rtol=1e-10, what=f"{backend}, 2 + 2 vs numpy, 4")
