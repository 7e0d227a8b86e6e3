"""Training: the epoch driver (``Epochs``) that every caller trains through, and ``train``, epochs
of mini-batch training with the data resident on the device, on the network's public API only
(to_device, labels, one_hot, workspace, step, measure_all).

Per epoch (``Epochs``): one permutation per model, drawn on the host from the model's generator
(seeded by ``Network(seed=...)`` unless ``seed=`` is given here), goes up in one copy and orders
the training set on the device, so every backend sees the same order for the same seed; a last
partial batch is used, not dropped. Inside the epoch nothing is copied back and nothing
synchronizes; afterwards one sync stops the clock and one copy brings back the evaluations.

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
from .schedules import Schedule, make_schedule

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
          optimizer=None, momentum=None, resume=False, graph=None, augment=None, max_norm=None, schedule=None,
          warmup=None):
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
    augment: a gpubp.Augment: every epoch the steps gather from a copy of the training set distorted
        on the device, anew each epoch (keyed by the network's seed and the epoch's number over its life).
    max_norm: c > 0: after every step, each hidden unit's incoming weight vector is scaled back to
        norm <= c (Srivastava et al. 2014).
    schedule, warmup: the learning rate per epoch: a gpubp.schedules name ("constant", "step", "exp",
        "cosine" (over this call's epochs), "plateau" (stops training like early stopping)) or a Schedule,
        from the base eta, after ``warmup`` linear warm-up epochs.
    With resume, augment, max_norm and schedule (with its state and base eta) are the saved run's unless
    given here (augment=False or max_norm=0 turns a saved one off).

    Each record: {"epoch" (counted from 1 over the network's life), "seconds" (training only,
    synchronized; see Epochs for the clock), "eval_seconds", "mode" ("graph" or "eager"), "train_cost" (or None),
    "validation_accuracy" (or None), "eta" (the epoch's learning rate)}, and "capture_seconds" in an epoch
    that captured its graph (workspaces, kernel loading, capture and instantiation: set-up, not in "seconds").
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

    n = X.shape[0]
    opt = _optimizer(net, n, resume, optimizer, eta, lmbda, momentum)
    extras = _Extras.of(net, resume, augment, max_norm, schedule, warmup, eta, opt, epochs,
                        watched=evaluation_data is not None)
    net.optimizer, net.mini_batch_size = opt, bs
    if seed is not None:
        net.rng = np.random.default_rng(seed)
    driver = Epochs(net, net.to_device(X), net.labels(y, n), bs, opt, graph_mode(net, graph)[0],
                    augment=extras.augment, max_norm=extras.max_norm, schedule=extras.schedule,
                    base_eta=extras.base_eta)
    run = _Run(net=net, opt=opt, bs=bs, monitor_training_cost=monitor_training_cost,
               show=sys.stderr.isatty() if progress is None else bool(progress), total=net.epochs_trained + epochs,
               driver=driver)
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
                if extras.observe(net, record):  # plateau's eta would fall to eta/128: stop as early stopping does
                    history.stopped_early = stop = True
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
class _Extras:
    """A run's augmentation, max-norm and schedule (with its base eta), and where the model file keeps
    them: ``net.run_settings`` (JSON-ready), which Network.save writes and Network.load reads back."""

    augment: object = None
    max_norm: float | None = None
    schedule: Schedule | None = None
    base_eta: float | None = None

    @classmethod
    def of(cls, net, resume, augment, max_norm, schedule, warmup, eta, opt, epochs, watched=True) -> _Extras:
        from .augment import Augment

        saved = dict(getattr(net, "run_settings", None) or {}) if resume else {}
        if augment is None and saved.get("augment"):
            augment = Augment(**saved["augment"])
        if augment is not None and augment is not False and not isinstance(augment, Augment):
            raise GpubpError(f"augment must be a gpubp.Augment, got {type(augment).__name__}")
        augment = None if augment is False or augment is None or augment.identity else augment
        if max_norm is None:
            max_norm = saved.get("max_norm")
        if max_norm is not None:
            if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not math.isfinite(max_norm) \
                    or max_norm < 0:
                raise GpubpError(f"max_norm must be a finite number > 0 (0 turns it off), got {max_norm!r}")
            max_norm = float(max_norm) or None
        old = saved.get("schedule")
        if schedule is None and warmup is None and old:
            sched = Schedule.from_config(old["config"], old["state"])
            base = old["base_eta"] if eta is None else float(eta)
        elif schedule is None and warmup is None:
            sched, base = None, None
        else:
            settings = {} if warmup is None else {"warmup": warmup}
            sched = make_schedule(schedule, epochs=net.epochs_trained + epochs, **settings)
            base = eta if eta is not None else old["base_eta"] if old else opt.eta
        if sched is not None and sched.name == "plateau" and not watched:
            raise GpubpError("the plateau schedule watches the validation accuracy: give evaluation_data, or "
                             "choose another schedule")
        if sched is not None:
            ended = [e for e in range(net.epochs_trained, net.epochs_trained + epochs) if not sched.eta(base, e) > 0]
            if ended:
                raise GpubpError(f"the {sched.name} schedule gives eta 0 from epoch {ended[0] + 1} on (it was made for "
                                 f"{sched.epochs} epochs): give a new schedule for these epochs, or train fewer")
        extras = cls(augment, max_norm, sched, None if sched is None else float(base))
        extras.keep(net)
        return extras

    def keep(self, net) -> None:
        """Write the settings (and the schedule's state) into ``net.run_settings``."""
        net.run_settings = {
            "augment": None if self.augment is None else self.augment.as_dict(), "max_norm": self.max_norm,
            "schedule": None if self.schedule is None else {"config": self.schedule.config(),
                                                            "state": self.schedule.state(),
                                                            "base_eta": self.base_eta}}

    def observe(self, net, record) -> bool:
        """After an epoch: the schedule notes its validation accuracy; True when it says stop."""
        if self.schedule is None:
            return False
        stop = self.schedule.observe(record["validation_accuracy"])
        self.keep(net)
        return stop


@dataclass
class _Run:
    """What every epoch of one training run shares besides the driver: what to evaluate and show."""

    net: object
    opt: object
    bs: int
    monitor_training_cost: bool
    show: bool
    total: int  # the epoch count (over the network's life) this call trains up to, for the progress bar
    driver: Epochs  # batch order, steps, graph, clock
    evaluation: tuple | None = None


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


def batch_rows(n: int, bs: int) -> set[int]:
    """The rows a step of an epoch of n rows can have: the batch size, and the last batch's."""
    return {bs, n % bs or bs}


def interleave(perms, bs: int) -> np.ndarray:
    """K permutations (K, n) laid out step by step: step j's K*bs rows are model 0's batch j, then
    model 1's, ...; the last, partial batches likewise (each model's rows after the full batches)."""
    K, n = perms.shape
    full = n // bs * bs
    return np.concatenate([perms[:, :full].reshape(K, -1, bs).transpose(1, 0, 2).ravel(), perms[:, full:].ravel()])


class Epochs:
    """THE epoch driver: ``epoch()`` trains one model one epoch on one training set, and returns the
    epoch's training seconds. ``train`` (one Network), sweeps (a Stack of K models, or K Networks)
    and bench all train through it.

    model: a Network, or a gpubp.sweeps.stack.Stack (``model.lead == (K,)``: K models, each with its
        own generator in ``model.rngs``, as Network(seed=s).rng).
    X, labels: the training set on the device, (n, n_0) and (n,) int64; Y, its one-hot rows, is made here.
    graph: replay each epoch as one captured graph (see ``graph_mode``); captured before the first
        epoch's clock starts, and again whenever what it baked in (the optimizer's scalars, TF32) changes.
    augment: an Augment (one Network only): each epoch the steps gather from a copy of X distorted on
        the device (``_begin_epoch`` uploads the epoch's key; the distortion is the first of the
        epoch's launches, so a graph holds it and replays it with the new key).
    max_norm: c: after every step each hidden layer's rows (a unit's incoming weights) are scaled back
        to norm <= c by the max_norm kernel (in ``_step``, so a graph holds it).
    schedule, base_eta: a gpubp.schedules.Schedule and the eta it scales (one Network only): before
        each epoch (``prepare``) the optimizer's eta is set to the schedule's for the epoch about to
        run (``model.epochs_trained``). eta is baked into a graph, so a changed eta recaptures it.

    The batch order, chosen here once: each epoch, every model draws a permutation from its own
    generator (the same order on every backend for a seed) and all go up in ONE copy; then either
      * whole-set gather (one model, a GPU): one kernel gathers the set in that order, and the steps
        take contiguous slices of the gathered copy, so batch j always lives at the same address; or
      * per-step gather (a CPU backend, ``Backend.gathers_per_step``): each step gathers its own rows
        into a batch buffer that stays in cache; or
      * K interleaved permutations (a Stack): the K permutations are laid out step by step
        (``interleave``), so each step gathers its K batches (K*m rows) with one launch.
    The last, partial batch is used, not dropped. Inside an epoch nothing is copied back and nothing
    waits; the buffers are made here, so a step (and a capture) allocates nothing.

    The timing rule, one for every caller: the clock starts before the permutations are drawn and
    stops after one synchronize, so ``seconds`` is the epoch's host and device work. Graph capture
    (with the workspaces, the optimizer's state and the kernels made first) happens before the clock
    starts and is added to ``capture_seconds`` instead.

    Where a new feature goes (written once, here):
      * per epoch (augmentation's new distortions, a learning-rate schedule): ``_begin_epoch``, host
        work and uploads before the epoch's steps (or its replay). A value the graph bakes in must be
        listed in ``_baked`` (it is recaptured when it changes), or better read from device memory
        uploaded here, so the same graph replays every epoch;
      * per step (dropout masks): ``_step``, launched with the model's step; it is captured into the
        graph with the steps, so what changes from step to step must come from the device (a
        counter, a buffer uploaded per epoch), not from a Python value.
    """

    def __init__(self, model, X, labels, batch_size: int, optimizer, graph: bool = False, augment=None,
                 max_norm=None, schedule=None, base_eta=None):
        be, dt = model.be, model.dtype
        self.model, self.be, self.opt, self.bs = model, be, optimizer, int(batch_size)
        self.X, self.labels = X, labels
        if (augment is not None or schedule is not None) and model.lead:
            raise GpubpError("augmentation and schedules train one Network at a time, not a stack of models")
        self.augment = self.distorted = None
        if augment is not None:  # the epoch's distortions of X, which the steps gather from instead of X
            self.augment = augment.plan(be, dt, *augment.image_shape(X.shape[1]))
            self.distorted = be.empty(X.shape, dt)
        self.max_norm = None if not max_norm else (be.kernel("max_norm", dt), float(max_norm))
        self.schedule, self.base_eta = schedule, base_eta
        self.Y = model.one_hot(labels)
        self.n = n = X.shape[0]
        self.K = len(self._generators())
        self.order = be.empty((self.K * n,), np.int64)  # each epoch's permutations go up into this one buffer
        self.gather = be.kernel("gather_rows", dt)
        cx, cy = X.shape[1], self.Y.shape[1]
        if not model.lead and not be.gathers_per_step:  # the whole set, gathered in the epoch's order once an epoch
            self.whole = (be.empty(X.shape, dt), be.empty(self.Y.shape, dt))
            self.batches = None
        else:  # per step: {rows m: (X batch (*lead, m, n_0), Y batch, the same as K*m gather rows)}
            self.whole, self.batches = None, {}
            for m in batch_rows(n, self.bs):
                Xb, Yb = be.empty((*model.lead, m, cx), dt), be.empty((*model.lead, m, cy), dt)
                self.batches[m] = (Xb, Yb, Xb.reshape(self.K * m, cx), Yb.reshape(self.K * m, cy))
        self.graph = bool(graph)
        self.replay: EpochGraph | None = None
        self.capture_seconds = None  # seconds spent capturing (None: no capture since the caller last took it)

    @property
    def mode(self) -> str:
        return "graph" if self.graph else "eager"

    def prepare(self) -> None:
        """Set the coming epoch's eta (a schedule), then capture the epoch's graph if it is due (graph
        mode: the first epoch, or what it baked in changed); ``epoch`` does it too. Outside every epoch's clock."""
        if self.schedule is not None:
            self.opt.eta = self.schedule.eta(self.base_eta, self.model.epochs_trained)
        if self.graph:
            self._ensure_graph()

    def epoch(self, bar=None) -> float:
        """One epoch of every step, eagerly or as one replay of the captured graph; its seconds."""
        self.prepare()
        t0 = time.perf_counter()
        self._begin_epoch()
        if self.graph:
            self.replay.launch()
            if bar is not None:
                bar.update(self.n)
        else:
            self._steps(bar)
        self.be.synchronize()  # the clock stops when the device is done
        return time.perf_counter() - t0

    def _generators(self) -> list:
        """Each model's shuffle generator (read each epoch: a resumed or reseeded run replaces them)."""
        return list(self.model.rngs) if self.model.lead else [self.model.rng]

    def _begin_epoch(self) -> None:
        """Per epoch, before the steps: every model's permutation, up in one copy; the epoch of the
        dropout masks (counted over the network's life, so a resumed run draws what it would have); the
        augmentation's key (seed, epoch), likewise."""
        perms = [rng.permutation(self.n) for rng in self._generators()]
        self.be.upload(self.order, perms[0] if self.K == 1 else interleave(np.stack(perms), self.bs))
        self.model.begin_epoch(self.model.epochs_trained)
        if self.augment is not None:
            self.augment.set_epoch(self.model.seed, self.model.epochs_trained)

    def _steps(self, bar=None) -> None:
        """The epoch's steps on the device, in the order uploaded: gather, then step, batch by batch."""
        X, Y, order, n, bs, K = self.X, self.Y, self.order, self.n, self.bs, self.K
        cx, cy = X.shape[1], Y.shape[1]
        if self.augment is not None:  # the whole set distorted for the uploaded key, on the device
            self.augment.run(X, self.distorted)
            X = self.distorted
        if self.whole is not None:
            Xs, Ys = self.whole
            self.gather(n * (cx + cy), Xs, Ys, X, Y, order, n, cx, cy)
        for k in range(0, n, bs):
            m = min(bs, n - k)
            if self.whole is not None:
                self._step(Xs[k:k + m], Ys[k:k + m], k // bs)
            else:
                Xb, Yb, Xrows, Yrows = self.batches[m]
                rows = K * m
                self.gather(rows * (cx + cy), Xrows, Yrows, X, Y, order[K * k:K * k + rows], rows, cx, cy)
                self._step(Xb, Yb, k // bs)
            if bar is not None:
                bar.update(m)

    def _step(self, Xb, Yb, step: int) -> None:
        """One training step on a gathered batch (the epoch's ``step``-th, which picks its dropout masks):
        the place for a per-step feature."""
        self.model.step(Xb, Yb, self.opt, step)
        if self.max_norm is not None:
            self._max_norm()

    def _max_norm(self) -> None:
        """Each hidden unit's incoming weights (a row of W[l], l < L-1) scaled back to norm <= c."""
        kernel, c = self.max_norm
        for W in self.model.weights[:-1]:
            for i in np.ndindex(*self.model.lead):  # a stack's models one by one: each W[i] is contiguous
                rows, cols = W.shape[-2:]
                kernel(rows, W[i], rows, cols, c)

    def _baked(self) -> tuple:
        """What a captured graph keeps as it was at capture: each optimizer's kind and hyperparameters
        (eta, the decay), and TF32."""
        opts = getattr(self.opt, "optimizers", [self.opt])  # a stack's ModelOptimizers: one per model
        return tuple((type(o), tuple(sorted(o.hyperparameters().items()))) for o in opts) + (self.model.tf32,)

    def _ensure_graph(self) -> None:
        baked = self._baked()
        if self.replay is not None and self.replay.baked == baked:
            return
        self.replay = None  # the old graph goes before the new one is recorded
        t0 = time.perf_counter()
        self.replay = EpochGraph(self, baked)
        self.capture_seconds = (self.capture_seconds or 0.0) + time.perf_counter() - t0


class EpochGraph:
    """One epoch's steps captured as a graph, and everything whose addresses it recorded: a CUDA
    graph holds raw pointers only, so the model (its parameters and workspaces), the optimizer (its
    state) and the driver's data and batch buffers stay alive as long as the graph does.

    Before capture: the workspaces of both batch sizes and the optimizer's state are made (nothing
    may be allocated or loaded while a stream captures: the pool's addresses would be baked in), and
    the backend's prepare_capture makes what its capture needs, the kernels loaded included. Nothing
    here waits for the device: an epoch's one sync stops its clock."""

    def __init__(self, epochs: Epochs, baked: tuple):
        model, be = epochs.model, epochs.be
        workspaces = [model.workspace(m) for m in batch_rows(epochs.n, epochs.bs)]
        epochs.opt.bind(model)
        be.prepare_capture(model.gemm)
        with be.capture() as graph:
            epochs._steps()
        self.graph, self.baked = graph, baked
        self.keep = (model, epochs.opt, workspaces, epochs.X, epochs.Y, epochs.order, epochs.whole, epochs.batches,
                     epochs.augment, epochs.distorted)

    def launch(self) -> None:
        self.graph.launch()


def _epoch(run: _Run) -> dict:
    """One epoch through the driver, then the evaluations, brought back in one copy."""
    net, opt = run.net, run.opt
    run.driver.prepare()  # any capture first: a capture that fails leaves no progress bar open
    bar = _bar(run.show, run.driver.n, net.epochs_trained + 1, run.total)
    try:
        seconds = run.driver.epoch(bar)
    finally:
        if bar is not None:
            bar.close()
    capture, run.driver.capture_seconds = run.driver.capture_seconds, None

    net.epochs_trained += 1
    epoch = net.epochs_trained
    t1 = time.perf_counter()
    record = {"epoch": epoch, "seconds": seconds, "train_cost": None, "validation_accuracy": None,
              "mode": run.driver.mode, "eta": opt.eta}
    if capture is not None:
        record["capture_seconds"] = capture
    # the training cost (or, without it, the parameters' finiteness) and the validation accuracy,
    # summed on the device and brought back in one copy
    X, labels = run.driver.X, run.driver.labels
    sets = [(X, labels, opt.lmbda, run.monitor_training_cost, False)]
    if run.evaluation is not None:
        sets.append((*run.evaluation, 0.0, False, True))
    train, *validation = net.measure_all(sets)
    if run.monitor_training_cost:
        record["train_cost"] = train["cost"]
    _check_finite(train["cost"] if run.monitor_training_cost else (0.0 if train["finite"] else math.nan),
                  epoch, opt, X.shape[0])
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
