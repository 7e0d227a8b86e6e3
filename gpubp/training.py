"""Training: epochs of mini-batch SGD with the data resident on the device.

Per epoch: one host-drawn permutation is uploaded and gathers the training set on the device
(so every backend sees the same order for the same seed); mini-batches are contiguous slices
(views) of the shuffled copy; a last partial batch is used, not dropped. Inside the epoch
nothing is copied back and nothing synchronizes; afterwards one sync stops the clock and one
copy per evaluation brings back its cost and accuracy.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from .errors import GpubpError, TrainingDiverged


def _check_data(net, data, what):
    try:
        X, y = data
    except (TypeError, ValueError):
        raise GpubpError(f"{what} must be a pair (X, y) of inputs and integer labels") from None
    if getattr(X, "ndim", 0) != 2 or X.shape[1] != net.sizes[0]:
        raise GpubpError(f"{what} inputs must have shape (n, {net.sizes[0]}), got {getattr(X, 'shape', None)}")
    if getattr(y, "shape", None) != (X.shape[0],):
        raise GpubpError(f"{what} needs one label per row: {X.shape[0]} rows, labels of shape {getattr(y, 'shape', None)}")
    if X.shape[0] == 0:
        raise GpubpError(f"{what} is empty")
    return X, y


def train(net, training_data, epochs=30, mini_batch_size=10, eta=3.0, lmbda=0.0, evaluation_data=None,
          early_stopping=None, monitor_training_cost=True, progress=None, seed=None, on_epoch=None):
    """Train ``net`` by mini-batch SGD and return the history, one dict per epoch.

    training_data, evaluation_data: pairs (X (n, n_0), y (n,) integer labels), host or device.
    early_stopping: stop after this many epochs without a better validation accuracy (needs
        evaluation_data); None trains every epoch.
    monitor_training_cost: compute the training cost after each epoch (one forward pass).
    progress: a tqdm bar per epoch; None shows it only when stderr is a terminal.
    seed: seeds the shuffling (default: a fresh seed).
    on_epoch: called with each epoch's record as soon as it is known.

    Each record: {"epoch", "seconds" (training only, synchronized), "eval_seconds",
    "train_cost" (or None), "validation_accuracy" (or None)}.
    Raises TrainingDiverged when the cost becomes NaN or infinite.
    """
    X, y = _check_data(net, training_data, "training data")
    if evaluation_data is not None:
        evaluation_data = _check_data(net, evaluation_data, "evaluation data")
    epochs, bs = int(epochs), int(mini_batch_size)
    if epochs < 0 or bs < 1:
        raise GpubpError(f"epochs must be >= 0 and mini_batch_size >= 1 (got {epochs}, {bs})")
    if not (eta > 0 and math.isfinite(eta)) or not (lmbda >= 0 and math.isfinite(lmbda)):
        raise GpubpError(f"eta must be > 0 and lmbda >= 0 (got eta={eta}, lmbda={lmbda})")
    if early_stopping is not None and (evaluation_data is None or int(early_stopping) < 1):
        raise GpubpError("early stopping needs evaluation data and a patience of at least 1 epoch")

    be, xp = net.be, net.xp
    n = X.shape[0]
    Xd = net._inputs(X)  # the training set moves to the device once
    labels = net._labels(y, n)
    Yd = net._one_hot(labels)
    Xs, Ys = be.empty(Xd.shape, net.dtype), be.empty(Yd.shape, net.dtype)  # the shuffled copies
    if evaluation_data is not None:
        evaluation_data = (net._inputs(evaluation_data[0]), net._labels(evaluation_data[1], len(evaluation_data[1])))
    decay = net.decay(eta, lmbda, n)
    rng = np.random.default_rng(seed)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    history, best, since_best = [], -1.0, 0

    for epoch in range(epochs):
        perm = be.to_device(rng.permutation(n))
        xp.take(Xd, perm, axis=0, out=Xs)  # one gather per epoch, on the device
        xp.take(Yd, perm, axis=0, out=Ys)
        bar = _bar(show, n, epoch, epochs)
        be.synchronize()
        t0 = time.perf_counter()
        for k in range(0, n, bs):
            net._step(Xs[k:k + bs], Ys[k:k + bs], eta, decay)
            if bar is not None:
                bar.update(min(bs, n - k))
        be.synchronize()
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()

        t1 = time.perf_counter()
        record = {"epoch": epoch, "seconds": seconds, "train_cost": None, "validation_accuracy": None}
        if monitor_training_cost:
            record["train_cost"] = net.measure(Xd, labels, lmbda=lmbda, accuracy=False)["cost"]
            _check_finite(record["train_cost"], epoch, eta)
        else:
            _check_finite(float(be.to_host(xp.sum(net.params))), epoch, eta)
        if evaluation_data is not None:
            record["validation_accuracy"] = net.measure(*evaluation_data, cost=False)["accuracy"]
        record["eval_seconds"] = time.perf_counter() - t1
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)

        if early_stopping is not None:
            if record["validation_accuracy"] > best:
                best, since_best = record["validation_accuracy"], 0
            else:
                since_best += 1
                if since_best >= int(early_stopping):
                    break
    return history


def _check_finite(value, epoch, eta):
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"training diverged: the cost became {value} in epoch {epoch} with eta={eta:g}; "
            f"try a smaller learning rate (e.g. --eta {eta / 10:g})")


def _bar(show, n, epoch, epochs):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=n, desc=f"epoch {epoch + 1}/{epochs}", unit="img", leave=False, file=sys.stderr)
