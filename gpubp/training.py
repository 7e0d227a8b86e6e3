"""Training: epochs of mini-batch training with the data resident on the device, on the
network's public API only (to_device, labels, one_hot, step, measure).

Per epoch: one permutation drawn on the host from the network's generator (seeded by
``Network(seed=...)`` unless ``seed=`` is given here) is uploaded and gathers the training set on
the device, so every backend sees the same order for the same seed; mini-batches are contiguous
slices (views) of the shuffled copy; a last partial batch is used, not dropped. Inside the epoch
nothing is copied back and nothing synchronizes; afterwards one sync stops the clock and one
copy per evaluation brings back its cost and accuracy.

Between epochs, device copies keep what must not be lost: the parameters and optimizer state
after the last completed epoch (Ctrl-C puts them back, so the network is always a whole number of
epochs) and, under early stopping, the best epoch's parameters (put back at the end). Training
that goes nowhere is a TrainingWarning; a run saved with ``Network.save`` continues with
``resume=True`` exactly as if it had never stopped.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

from .backends import names_with
from .errors import GpubpError, TrainingDiverged, TrainingInterrupted, TrainingWarning
from .optimizers import DEFAULT, Optimizer, make_optimizer

CHANCE_MARGIN = 0.02  # validation accuracy within 2 points of 1/classes is chance
FLAT_COST = 1e-4  # a training cost that changes by less than this (relative) in an epoch has not moved
STALLED_EPOCHS = 2  # ... for this many epochs in a row: warn
DEFAULT_BATCH = 10


class History(list):
    """The per-epoch records (a plain list of dicts), and what happened to the run as a whole.

    best_epoch, best_accuracy: the epoch with the best validation accuracy and that accuracy (None
        without evaluation data); stopped_early: early stopping ended the run; restored_best: the
        best epoch's weights were put back at the end; warnings: the TrainingWarning messages issued.
    """

    def __init__(self):
        super().__init__()
        self.best_epoch = self.best_accuracy = None
        self.stopped_early = self.restored_best = False
        self.warnings: list[str] = []

    def summary(self) -> dict:
        """The run-wide facts, JSON-ready."""
        return {"best_epoch": self.best_epoch, "best_validation_accuracy": self.best_accuracy,
                "stopped_early": self.stopped_early, "restored_best": self.restored_best,
                "warnings": list(self.warnings)}


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


def train(net, training_data, epochs=30, mini_batch_size=None, eta=None, lmbda=None, evaluation_data=None,
          early_stopping=None, monitor_training_cost=True, progress=None, seed=None, on_epoch=None,
          optimizer=None, momentum=None, resume=False, graph=None):
    """Train ``net`` by mini-batch gradient descent and return its History, one record per epoch.

    training_data, evaluation_data: pairs (X (n, n_0), y (n,) integer labels), host or device.
    epochs: how many epochs this call trains (more epochs, when resuming).
    mini_batch_size: rows per step (default 10, or the saved run's when resuming).
    eta, lmbda: learning rate (default: the optimizer's, 3.0 for sgd) and L2 strength (network2's
        lambda over the training-set size n; default 0).
    optimizer: "sgd" (default; network2's rule) | "momentum" (with ``momentum``, mu, default 0.9)
        | "adam", or an Optimizer; see gpubp.optimizers. ``momentum`` is used by "momentum" only.
    resume: continue the network's run (after ``Network.load``): its optimizer with its state
        (momentum's velocity, Adam's moments and step count), its shuffle and its batch size, so
        that 2 epochs, save, load and 2 resumed epochs give exactly the weights of 4 epochs. The
        optimizer and its hyperparameters are the saved ones unless given here; a different
        ``optimizer`` starts that optimizer's state from zero. ``seed`` cannot be combined with it.
    early_stopping: stop after this many epochs without a better validation accuracy (needs
        evaluation_data); None trains every epoch. The best epoch's weights are put back at the end.
    monitor_training_cost: compute the training cost after each epoch (one forward pass).
    progress: a tqdm bar per epoch; None shows it only when stderr is a terminal.
    seed: reseeds the shuffling (default: the network's generator, seeded by Network(seed=...)).
    on_epoch: called with each epoch's record as soon as it is known.
    graph: replay each epoch as one captured CUDA graph (see ``graph_mode``): None = on for the
        cupy backend when it can, True = always (or an error saying why not), False = eager.

    Each record: {"epoch" (counted from 1 over the network's life), "seconds" (training only,
    synchronized), "eval_seconds", "mode" ("graph" or "eager"), "train_cost" (or None),
    "validation_accuracy" (or None)}, and "capture_seconds" in an epoch that captured its graph
    (workspaces, kernel loading, capture and instantiation: set-up, not in "seconds").
    Warns (TrainingWarning) when validation accuracy stays at chance or the training cost stops
    moving for two epochs. Raises TrainingDiverged when the cost becomes NaN or infinite, and
    TrainingInterrupted (a KeyboardInterrupt) on Ctrl-C, with the network put back to its state
    after the last completed epoch.
    """
    X, y = _check_data(net, training_data, "training data")
    if evaluation_data is not None:
        evaluation_data = _check_data(net, evaluation_data, "evaluation data")
    if mini_batch_size is None:
        mini_batch_size = net.mini_batch_size if resume and net.mini_batch_size else DEFAULT_BATCH
    epochs, bs = int(epochs), int(mini_batch_size)
    if epochs < 0 or bs < 1:
        raise GpubpError(f"epochs must be >= 0 and mini_batch_size >= 1 (got {epochs}, {bs})")
    if early_stopping is not None and (evaluation_data is None or int(early_stopping) < 1):
        raise GpubpError("early stopping needs evaluation data and a patience of at least 1 epoch")
    if resume and seed is not None:
        raise GpubpError("a resumed run continues its saved shuffle: leave seed out (or train without resume)")

    be = net.be
    n = X.shape[0]
    opt = _optimizer(net, n, resume, optimizer, eta, lmbda, momentum)
    net.optimizer, net.mini_batch_size = opt, bs
    if seed is not None:
        net.rng = np.random.default_rng(seed)
    run = _Run(net=net, opt=opt, bs=bs, monitor_training_cost=monitor_training_cost,
               show=sys.stderr.isatty() if progress is None else bool(progress), total=net.epochs_trained + epochs)
    run.X = net.to_device(X)  # the training set moves to the device once
    run.labels = net.labels(y, n)
    run.Y = net.one_hot(run.labels)
    if be.gathers_per_step:  # one buffer per batch size, gathered into as each step starts (a CPU's cache)
        run.batches = {m: (be.empty((m, run.X.shape[1]), net.dtype), be.empty((m, run.Y.shape[1]), net.dtype))
                       for m in _batch_rows(n, bs)}
    else:  # the whole set, gathered in the epoch's order once an epoch (a GPU's one kernel)
        run.Xs, run.Ys = be.empty(run.X.shape, net.dtype), be.empty(run.Y.shape, net.dtype)
    run.perm = be.empty((n,), np.int64)  # each epoch's permutation is uploaded into this one buffer
    run.gather = be.kernel("gather_rows", net.dtype)
    run.graph, _ = graph_mode(net, graph)
    if evaluation_data is not None:
        Xe, ye = evaluation_data
        run.evaluation = (net.to_device(Xe), net.labels(ye, len(ye)))

    history = History()
    last = _Snapshot(net, opt)  # the network after the last completed epoch: Ctrl-C goes back to it
    best = _Best(net, history, None if early_stopping is None else int(early_stopping))
    # A diverging run is reported once, by the cost check, not by NumPy warnings mid-epoch.
    with np.errstate(over="ignore", invalid="ignore"):
        completed = True
        try:
            for _ in range(epochs):
                completed = False
                record = _epoch(run)
                history.append(record)
                last.take()
                completed = True
                _watch(run, history)
                stop = best.update(record)
                if on_epoch is not None:
                    on_epoch(record)
                if stop:
                    break
        except KeyboardInterrupt:
            if not completed:
                last.restore()
            raise TrainingInterrupted(history, net.epochs_trained,
                                      None if completed else net.epochs_trained + 1) from None
    best.restore_best()
    return history


def _optimizer(net, n, resume, optimizer, eta, lmbda, momentum) -> Optimizer:
    """The optimizer of this run, bound to ``net``: a new one, or (resume) the saved one with any
    hyperparameters given here changed and its state kept."""
    saved = net.optimizer
    if resume and saved is None:
        raise GpubpError("nothing to resume: this network has no optimizer state (load a model saved after "
                         "training, or train without resume)")
    other = resume and optimizer is not None and (isinstance(optimizer, Optimizer)
                                                  or str(optimizer).strip().lower() != saved.name)
    if not resume or other:  # a new optimizer, its state from zero
        name = DEFAULT if optimizer is None else optimizer
        hyper = {"momentum": 0.9 if momentum is None else momentum} if name == "momentum" else {}
        lmbda = (saved.lmbda if resume else 0.0) if lmbda is None else lmbda
        return make_optimizer(name, eta=eta, lmbda=lmbda, n=n, **hyper).bind(net)
    old = saved.hyperparameters()
    given = {"eta": eta, "lmbda": lmbda, "momentum": momentum if saved.name == "momentum" else None}
    cfg = {**old, "n": n, **{k: v for k, v in given.items() if v is not None}}
    if cfg == old:
        return saved  # exactly the saved run
    fresh = make_optimizer(saved.name, **cfg).bind(net)
    for k, v in saved.state.items():  # new hyperparameters, the same moments, velocity and step count
        fresh.state[k][...] = v
    return fresh


@dataclass
class _Run:
    """What every epoch of one training run shares."""

    net: object
    opt: object
    bs: int
    monitor_training_cost: bool
    show: bool
    total: int  # the epoch count (over the network's life) this call trains up to, for the progress bar
    X: object = None  # (n, n_0) on the device
    Y: object = None  # (n, n_L) one-hot, on the device
    labels: object = None  # (n,) int64, on the device
    Xs: object = None  # shuffled copies of X and Y
    Ys: object = None
    batches: dict | None = None  # per-step gathering: {rows: (X batch, Y batch)}
    perm: object = None  # (n,) int64 on the device
    evaluation: tuple | None = None
    graph: bool = False  # each epoch replays one captured graph
    captured: object = None  # the epoch's graph, captured on the first epoch
    captured_with: object = None  # the optimizer's hyperparameters and tf32 baked into it
    gather: object = None  # the gather_rows kernel


def graph_mode(net, graph=None) -> tuple[bool, str]:
    """(whether training ``net`` replays each epoch as one captured graph, and why).

    graph=None: on for the cupy and native backends when the route can be captured, eager elsewhere;
    graph=True: a graph or a GpubpError saying why not; graph=False: eager.
    """
    ok, why = net.be.graph_support(net.gemm)
    if graph is None:
        if not net.be.graphs_by_default:
            where = names_with("graphs_by_default", "and")
            return False, f"eager: graphs are on by default on the {where} backends, not {net.be.name}"
        return ok, why if ok else f"eager: {why}"
    if graph and not ok:
        raise GpubpError(f"a graph was asked for but cannot be captured: {why}")
    return bool(graph), why if graph else "eager: asked for (graph=False)"


def _steps(run: _Run, bar=None) -> None:
    """The epoch's work on the device: gather the training set in the permutation's order (one
    kernel), then one step per contiguous mini-batch slice, the last, partial batch too. Where the
    backend gathers per step (the CPU), each step first gathers its own rows into its batch buffer."""
    net, n, bs = run.net, run.X.shape[0], run.bs
    cols_x, cols_y = run.X.shape[1], run.Y.shape[1]
    if run.batches is None:
        run.gather(n * (cols_x + cols_y), run.Xs, run.Ys, run.X, run.Y, run.perm, n, cols_x, cols_y)
    for k in range(0, n, bs):
        m = min(bs, n - k)
        if run.batches is None:
            net.step(run.Xs[k:k + m], run.Ys[k:k + m], run.opt)
        else:
            Xb, Yb = run.batches[m]
            run.gather(m * (cols_x + cols_y), Xb, Yb, run.X, run.Y, run.perm[k:k + m], m, cols_x, cols_y)
            net.step(Xb, Yb, run.opt)
        if bar is not None:
            bar.update(m)


def _batch_rows(n: int, bs: int) -> set[int]:
    """The rows a step of an epoch of n rows can have: the batch size, and the last batch's."""
    return {bs, n % bs or bs}


def _capture_epoch(run: _Run):
    """Capture one epoch's steps as a graph: everything a step needs (workspaces for the full and
    the last batch, the optimizer's state; the backend's prepare_capture loads the kernels) is made
    first, since nothing may be allocated or loaded while a stream captures (the pool's addresses
    would be baked in). Nothing here waits for the device: an epoch's one sync stops its clock."""
    net, be, n, bs = run.net, run.net.be, run.X.shape[0], run.bs
    for m in _batch_rows(n, bs):
        net.workspace(m)
    run.opt.bind(net)
    be.prepare_capture(net.gemm)
    with be.capture() as graph:
        _steps(run)
    return graph


def _epoch(run: _Run) -> dict:
    """One epoch: the permutation goes up, then the steps run, eagerly or as one replay of the
    epoch's captured graph; then the evaluations, brought back in one copy."""
    net, be, opt = run.net, run.net.be, run.opt
    n = run.X.shape[0]
    perm = net.rng.permutation(n)
    capture_seconds = None
    if run.graph:  # captured outside the epoch's clock: it is set-up, timed as capture_seconds
        baked = (type(opt), sorted(opt.hyperparameters().items()), net.tf32)
        if run.captured is None or run.captured_with != baked:  # a graph keeps the scalars it was captured with
            tc = time.perf_counter()
            run.captured = None  # the old graph goes before the new one is recorded
            run.captured, run.captured_with = _capture_epoch(run), baked
            capture_seconds = time.perf_counter() - tc
    bar = _bar(run.show, n, net.epochs_trained + 1, run.total)
    t0 = time.perf_counter()
    try:
        be.upload(run.perm, perm)
        if run.graph:
            run.captured.launch()
            if bar is not None:
                bar.update(n)
        else:
            _steps(run, bar)
        be.synchronize()  # the clock stops when the device is done
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0

    net.epochs_trained += 1
    epoch = net.epochs_trained
    t1 = time.perf_counter()
    record = {"epoch": epoch, "seconds": seconds, "train_cost": None, "validation_accuracy": None,
              "mode": "graph" if run.graph else "eager"}
    if capture_seconds is not None:
        record["capture_seconds"] = capture_seconds
    # the training cost (or, without it, the parameters' finiteness) and the validation accuracy,
    # summed on the device and brought back in one copy
    sets = [(run.X, run.labels, opt.lmbda, run.monitor_training_cost, False)]
    if run.evaluation is not None:
        sets.append((*run.evaluation, 0.0, False, True))
    train, *validation = net.measure_all(sets)
    if run.monitor_training_cost:
        record["train_cost"] = train["cost"]
    _check_finite(train["cost"] if run.monitor_training_cost else (0.0 if train["finite"] else math.nan),
                  epoch, opt, run.X.shape[0])
    if validation:
        record["validation_accuracy"] = validation[0]["accuracy"]
    record["eval_seconds"] = time.perf_counter() - t1
    return record


def _check_finite(value, epoch, opt, n):
    """TrainingDiverged, naming both suspects: eta, and lmbda, whose decay 1 - eta*lmbda/n below -1
    makes every step multiply the weights by more than 1 in size."""
    if math.isfinite(value):
        return
    eta, lmbda = opt.eta, opt.lmbda
    step = eta * lmbda / n
    if lmbda and step > 2:
        why = (f"lmbda is the likely cause: eta*lmbda/n = {step:g} > 2, so each step multiplies the weights by about "
               f"1 - eta*lmbda/n = {1 - step:g} and they grow without bound; try a much smaller --lmbda (network2's "
               f"lmbda 5 with eta 0.5 on 50 000 images gives eta*lmbda/n = 5e-05) or a smaller --eta")
    else:
        why = (f"eta is the likely cause: try a smaller learning rate (e.g. --eta {eta / 10:g})"
               + (f", and if that does not help a smaller --lmbda than {lmbda:g}" if lmbda else ""))
    raise TrainingDiverged(f"training diverged: the cost became {value} in epoch {epoch} with eta={eta:g} and "
                           f"lmbda={lmbda:g}: {why}")


def _watch(run: _Run, history: History) -> None:
    """Warn, once each, when validation accuracy has stayed at chance or the training cost has not
    moved for STALLED_EPOCHS epochs: a run that exits 0 having learnt nothing should say so."""
    said = {w.split(":")[0] for w in history.warnings}
    recent = history[-STALLED_EPOCHS:]
    classes = run.net.sizes[-1]
    accs = [r["validation_accuracy"] for r in recent]
    if (len(recent) == STALLED_EPOCHS and None not in accs and all(abs(a - 1 / classes) <= CHANCE_MARGIN for a in accs)
            and "validation accuracy at chance" not in said):
        _warn(history, f"validation accuracy at chance: {accs[-1]:.1%} (1 in {classes} classes) in epochs "
                       f"{recent[0]['epoch']}-{recent[-1]['epoch']}; the network is not learning; {_suspects(run)}")
    costs = [r["train_cost"] for r in history[-STALLED_EPOCHS - 1:]]
    if (len(costs) == STALLED_EPOCHS + 1 and None not in costs and "training cost has not moved" not in said
            and all(abs(b - a) < FLAT_COST * abs(a) for a, b in zip(costs, costs[1:]))):
        _warn(history, f"training cost has not moved: {costs[-1]:.6g} in epochs {history[-STALLED_EPOCHS]['epoch']}-"
                       f"{history[-1]['epoch']} (relative change < {FLAT_COST:g} an epoch); {_suspects(run)}")


def _suspects(run: _Run) -> str:
    """The likely cause of a run that goes nowhere, from eta against the optimizer's default and
    from how far L2 alone would shrink the weights in an epoch (about exp(-eta*lmbda/batch))."""
    opt = run.opt
    d = type(opt).default_eta
    found = []
    if opt.eta >= 10 * d:
        found.append(f"eta={opt.eta:g} is probably too large ({opt.name}'s default is {d:g})")
    elif opt.eta <= d / 1000:
        found.append(f"eta={opt.eta:g} is probably too small ({opt.name}'s default is {d:g})")
    shrink = opt.eta * opt.lmbda / run.bs
    if opt.lmbda and shrink > 2:
        found.append(f"lmbda={opt.lmbda:g} is probably too large (L2 alone shrinks the weights about "
                     f"e^{shrink:.3g}-fold an epoch)")
    if not found:
        found.append(f"check eta={opt.eta:g} (too large or too small) and lmbda={opt.lmbda:g} (too large)")
    return "likely cause: " + "; ".join(found)


def _warn(history: History, message: str) -> None:
    history.warnings.append(message)
    warnings.warn(message, TrainingWarning, stacklevel=4)  # points at the caller of train / Network.sgd


class _Snapshot:
    """The network after the last completed epoch: device copies of the parameters and the optimizer
    state (buffers made once, one copy each per epoch), the shuffle's state and the epoch count."""

    def __init__(self, net, opt):
        self.net, self.opt = net, opt
        self.params = net.be.empty(net.params.shape, net.dtype)
        self.state = {k: net.be.empty(v.shape, v.dtype) for k, v in opt.state.items()}
        self.take()

    def take(self) -> None:
        self.params[...] = self.net.params
        for k, v in self.opt.state.items():
            self.state[k][...] = v
        self.rng, self.epochs = self.net.rng.bit_generator.state, self.net.epochs_trained

    def restore(self) -> None:
        self.net.params[...] = self.params
        for k, v in self.state.items():
            self.opt.state[k][...] = v
        self.net.rng.bit_generator.state, self.net.epochs_trained = self.rng, self.epochs


class _Best:
    """The best validation accuracy so far and its epoch; under early stopping also a device copy of
    that epoch's parameters (made on the first improvement, copied into on each later one)."""

    def __init__(self, net, history: History, patience):
        self.net, self.history, self.patience = net, history, patience
        self.params, self.since = None, 0

    def update(self, record) -> bool:
        """Note ``record``; True when early stopping says stop."""
        acc, h = record["validation_accuracy"], self.history
        if acc is None:
            return False
        if h.best_accuracy is None or acc > h.best_accuracy:
            h.best_epoch, h.best_accuracy, self.since = record["epoch"], acc, 0
            if self.patience is not None:
                if self.params is None:
                    self.params = self.net.be.empty(self.net.params.shape, self.net.dtype)
                self.params[...] = self.net.params
            return False
        self.since += 1
        h.stopped_early = self.patience is not None and self.since >= self.patience
        return h.stopped_early

    def restore_best(self) -> None:
        """Put the best epoch's weights back (early stopping only), unless they are the last epoch's."""
        h = self.history
        if self.params is not None and h and h.best_epoch != h[-1]["epoch"]:
            self.net.params[...] = self.params
            h.restored_best = True


def _bar(show, n, epoch, total):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=n, desc=f"epoch {epoch}/{total}", unit="img", leave=False, file=sys.stderr)
