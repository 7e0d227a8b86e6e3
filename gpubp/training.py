"""Training: epochs of mini-batch training with the data resident on the device, on the
network's public API only (to_device, labels, one_hot, step, measure).

Per epoch: one permutation drawn on the host from the network's generator (seeded by
``Network(seed=...)`` unless ``seed=`` is given here) is uploaded and gathers the training set on
the device, so every backend sees the same order for the same seed; mini-batches are contiguous
slices (views) of the shuffled copy; a last partial batch is used, not dropped. Inside the epoch
nothing is copied back and nothing synchronizes; afterwards one sync stops the clock and one
copy per evaluation brings back its cost and accuracy.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np

from .errors import GpubpError, TrainingDiverged
from .optimizers import make_optimizer


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


def train(net, training_data, epochs=30, mini_batch_size=10, eta=None, lmbda=0.0, evaluation_data=None,
          early_stopping=None, monitor_training_cost=True, progress=None, seed=None, on_epoch=None,
          optimizer="sgd", momentum=0.9, graph=None):
    """Train ``net`` by mini-batch gradient descent and return the history, one dict per epoch.

    training_data, evaluation_data: pairs (X (n, n_0), y (n,) integer labels), host or device.
    eta, lmbda: learning rate (default: the optimizer's, 3.0 for sgd) and L2 strength (network2's
        lambda over the training-set size n).
    optimizer: "sgd" (network2's rule) | "momentum" (with ``momentum``, mu) | "adam", or an
        Optimizer; see gpubp.optimizers. ``momentum`` is used by "momentum" only.
    early_stopping: stop after this many epochs without a better validation accuracy (needs
        evaluation_data); None trains every epoch.
    monitor_training_cost: compute the training cost after each epoch (one forward pass).
    progress: a tqdm bar per epoch; None shows it only when stderr is a terminal.
    seed: reseeds the shuffling (default: the network's generator, seeded by Network(seed=...)).
    on_epoch: called with each epoch's record as soon as it is known.
    graph: replay each epoch as one captured CUDA graph (see ``graph_mode``): None = on for the
        cupy backend when it can, True = always (or an error saying why not), False = eager.

    Each record: {"epoch" (counted from 1 over the network's life), "seconds" (training only,
    synchronized), "eval_seconds", "mode" ("graph" or "eager"),
    "train_cost" (or None), "validation_accuracy" (or None)}.
    Raises TrainingDiverged when the cost becomes NaN or infinite.
    """
    X, y = _check_data(net, training_data, "training data")
    if evaluation_data is not None:
        evaluation_data = _check_data(net, evaluation_data, "evaluation data")
    epochs, bs = int(epochs), int(mini_batch_size)
    if epochs < 0 or bs < 1:
        raise GpubpError(f"epochs must be >= 0 and mini_batch_size >= 1 (got {epochs}, {bs})")
    if early_stopping is not None and (evaluation_data is None or int(early_stopping) < 1):
        raise GpubpError("early stopping needs evaluation data and a patience of at least 1 epoch")

    be = net.be
    n = X.shape[0]
    hyper = {"momentum": momentum} if optimizer == "momentum" else {}
    opt = make_optimizer(optimizer, eta=eta, lmbda=lmbda, n=n, **hyper)
    net.optimizer = opt.bind(net)
    if seed is not None:
        net.rng = np.random.default_rng(seed)
    run = _Run(net=net, opt=opt, bs=bs, monitor_training_cost=monitor_training_cost,
               show=sys.stderr.isatty() if progress is None else bool(progress), epochs=epochs)
    run.X = net.to_device(X)  # the training set moves to the device once
    run.labels = net.labels(y, n)
    run.Y = net.one_hot(run.labels)
    run.Xs, run.Ys = be.empty(run.X.shape, net.dtype), be.empty(run.Y.shape, net.dtype)  # shuffled copies
    run.perm = be.empty((n,), np.int64)  # each epoch's permutation is uploaded into this one buffer
    run.gather = be.kernel("gather_rows", net.dtype)
    run.graph, _ = graph_mode(net, graph)
    if evaluation_data is not None:
        Xe, ye = evaluation_data
        run.evaluation = (net.to_device(Xe), net.labels(ye, len(ye)))

    history, best, since_best = [], -1.0, 0
    # A diverging run is reported once, by the cost check, not by NumPy warnings mid-epoch.
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(epochs):
            record = _epoch(run, i)
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


@dataclass
class _Run:
    """What every epoch of one training run shares."""

    net: object
    opt: object
    bs: int
    monitor_training_cost: bool
    show: bool
    epochs: int
    X: object = None  # (n, n_0) on the device
    Y: object = None  # (n, n_L) one-hot, on the device
    labels: object = None  # (n,) int64, on the device
    Xs: object = None  # shuffled copies of X and Y
    Ys: object = None
    perm: object = None  # (n,) int64 on the device
    evaluation: tuple | None = None
    graph: bool = False  # each epoch replays one captured graph
    captured: object = None  # the epoch's graph, captured on the first epoch
    gather: object = None  # the gather_rows kernel


def graph_mode(net, graph=None) -> tuple[bool, str]:
    """(whether training ``net`` replays each epoch as one captured graph, and why).

    graph=None: on for the cupy backend when the route can be captured, eager elsewhere;
    graph=True: a graph or a GpubpError saying why not; graph=False: eager.
    """
    ok, why = net.be.graph_support(net.gemm)
    if graph is None:
        if net.be.name != "cupy":
            return False, f"eager: graphs are on by default on the cupy backend only, not {net.be.name}"
        return ok, why if ok else f"eager: {why}"
    if graph and not ok:
        raise GpubpError(f"a graph was asked for but cannot be captured: {why}")
    return bool(graph), why if graph else "eager: asked for (graph=False)"


def _steps(run: _Run, bar=None) -> None:
    """The epoch's work on the device: gather the training set in the permutation's order (one
    kernel), then one step per contiguous mini-batch slice, the last, partial batch too."""
    net, n, bs = run.net, run.X.shape[0], run.bs
    cols_x, cols_y = run.X.shape[1], run.Y.shape[1]
    run.gather(n * (cols_x + cols_y), run.Xs, run.Ys, run.X, run.Y, run.perm, n, cols_x, cols_y)
    for k in range(0, n, bs):
        net.step(run.Xs[k:k + bs], run.Ys[k:k + bs], run.opt)
        if bar is not None:
            bar.update(min(bs, n - k))


def _capture_epoch(run: _Run):
    """Capture one epoch's steps as a graph: everything a step needs (workspaces for the full and
    the last batch, the optimizer's state, loaded kernels) is made first, since nothing may be
    allocated or loaded while a stream captures (the pool's addresses would be baked in)."""
    net, be, n, bs = run.net, run.net.be, run.X.shape[0], run.bs
    for m in {bs, n % bs or bs}:
        net.workspace(m)
    run.opt.bind(net)
    be.warmup()
    be.prepare_capture(net.gemm)
    with be.capture() as graph:
        _steps(run)
    return graph


def _epoch(run: _Run, i: int) -> dict:
    """One epoch (the i-th of this call): the permutation goes up, then the steps run, eagerly or
    as one replay of the epoch's captured graph; then the evaluations, one copy back."""
    net, be, opt = run.net, run.net.be, run.opt
    n = run.X.shape[0]
    bar = _bar(run.show, n, i, run.epochs)
    t0 = time.perf_counter()
    be.upload(run.perm, net.rng.permutation(n))
    if run.graph:
        if run.captured is None:
            run.captured = _capture_epoch(run)
        run.captured.launch()
        if bar is not None:
            bar.update(n)
    else:
        _steps(run, bar)
    be.synchronize()  # the clock stops when the device is done
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()

    net.epochs_trained += 1
    epoch = net.epochs_trained
    t1 = time.perf_counter()
    record = {"epoch": epoch, "seconds": seconds, "train_cost": None, "validation_accuracy": None,
              "mode": "graph" if run.graph else "eager"}
    # the training cost (or, without it, the parameters' finiteness) and the validation accuracy,
    # summed on the device and brought back in one copy
    sets = [(run.X, run.labels, opt.lmbda, run.monitor_training_cost, False)]
    if run.evaluation is not None:
        sets.append((*run.evaluation, 0.0, False, True))
    train, *validation = net.measure_all(sets)
    if run.monitor_training_cost:
        record["train_cost"] = train["cost"]
    _check_finite(train["cost"] if run.monitor_training_cost else (0.0 if train["finite"] else math.nan),
                  epoch, opt.eta)
    if validation:
        record["validation_accuracy"] = validation[0]["accuracy"]
    record["eval_seconds"] = time.perf_counter() - t1
    return record


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
