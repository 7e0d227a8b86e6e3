"""Sweeps run: many training runs (seeds x eta x lambda) trained K at a time as one Stack, locally or on Ray.

Runs that agree on every SHARED setting (gpubp.sweeps.plan) train together as one
gpubp.sweeps.stack.Stack, so its K models cost one step's launches and batched products, and each
model's weights equal those of its own ``gpubp train --seed S --eta ETA --lmbda L`` (bit for bit
on NumPy; the tests check it). Groups run one after another here, or as Ray tasks on a cluster
(gpubp.sweeps.ray, imported only then).

Each run's result: its settings, its per-epoch history (the records `gpubp train` keeps), its best
validation accuracy and that epoch, its test accuracy after the last epoch, and its seconds: the
group's training time over K, the share the run cost. gpubp.sweeps.report prints and draws them.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from ..errors import GpubpError
from ..optimizers import ModelOptimizers
from .plan import SHARED, _optimizer, groups, normalize, shared_key


# ---------------------------------------------------------------------------------------------
# One group: K runs as one Stack
# ---------------------------------------------------------------------------------------------

def train_group(runs, data, backend=None, monitor_training_cost=False, on_epoch=None, keep_params=False) -> dict:
    """Train runs that share their SHARED settings as one Stack on ``data`` ({"train", "validation",
    "test"}: (X, y) pairs), epoch by epoch as gpubp.training trains one network (see Group), with
    the validation accuracy (and, if asked, the training cost) after each epoch and the test
    accuracy after the last. ``on_epoch(epoch, epochs)`` after each epoch. Returns {"runs": one
    result per run, "size", "seconds", "backend", "device"}; keep_params adds each run's trained
    parameters (a host array, not JSON) to its result."""
    group = Group(runs, data, backend)
    K, epochs = group.stack.K, runs[0]["epochs"]
    histories, diverged = [[] for _ in runs], [None] * K
    # A diverging model is reported by its finiteness check, not by NumPy warnings mid-epoch.
    with np.errstate(over="ignore", invalid="ignore"):
        for epoch in range(1, epochs + 1):
            seconds = group.epoch()
            finite, records = group.evaluate(epoch, seconds, monitor_training_cost)
            for i in range(K):
                histories[i].append(records[i])
                if not finite[i] and diverged[i] is None:
                    diverged[i] = epoch
            if on_epoch is not None:
                on_epoch(epoch, epochs)
        test = group.stack.measure(*data["test"], cost=False)
    train_seconds = sum(h["seconds"] for h in histories[0])
    params = group.stack.get_params() if keep_params else None
    results = []
    for i, (r, h, t, d) in enumerate(zip(runs, histories, test, diverged)):
        best = max(range(len(h)), key=lambda e: h[e]["validation_accuracy"])  # the first of the best
        results.append({"run": r, "history": h, "best_validation_accuracy": h[best]["validation_accuracy"],
                        "best_epoch": h[best]["epoch"], "test_accuracy": t["accuracy"], "diverged_epoch": d,
                        "seconds": train_seconds / K, **({"params": params[i]} if keep_params else {})})
    be = group.stack.be
    return {"runs": results, "size": K, "seconds": train_seconds, "backend": be.name, "device": be.device}


class Group:
    """One group's Stack, its optimizers and its data on the device, and the gathered batches."""

    def __init__(self, runs, data, backend):
        from .stack import Stack

        first = runs[0]
        if any(shared_key(r) != shared_key(first) for r in runs):
            raise GpubpError("the runs of a group must share " + ", ".join(SHARED))
        (X, y), (Xv, yv) = data["train"], data["validation"]
        self.stack = s = Stack(first["sizes"], [r["seed"] for r in runs], cost=first["cost"],
                               activation=first["activation"], backend=backend, dtype=first["dtype"],
                               init=first["init"])
        self.n, self.bs = len(X), first["batch_size"]
        self.opt = ModelOptimizers([_optimizer(r, self.n) for r in runs])
        self.lmbdas = [r["lmbda"] for r in runs]
        self.X, self.labels = s.to_device(X), s.labels(y, self.n)  # the training set goes up once
        self.Y = s.one_hot(self.labels)
        self.validation = (s.to_device(Xv), s.labels(yv, len(yv)))
        self.order = s.be.empty((s.K * self.n,), np.int64)  # an epoch's K permutations, batch by batch
        self.gather = s.be.kernel("gather_rows", s.dtype)
        self.batches: dict[int, tuple] = {}  # rows -> the gathered (K, rows, n_0) and (K, rows, n_L) batches

    def epoch(self) -> float:
        """One epoch of every model; its seconds, synchronized. Each model's permutation comes from its
        own generator (as Network(seed=s).rng draws one per epoch); all K go up in one copy, laid out
        batch by batch, so each step gathers its K batches (K*m rows) with one launch, into the same
        buffers every step."""
        s, n, bs = self.stack, self.n, self.bs
        perms = np.stack([rng.permutation(n) for rng in s.rngs])  # (K, n)
        full = n // bs * bs  # step j's K*bs rows: model 0's batch j, then model 1's, ...
        s.be.upload(self.order, np.concatenate([perms[:, :full].reshape(s.K, -1, bs).transpose(1, 0, 2).ravel(),
                                                perms[:, full:].ravel()]))
        n_in, n_out = s.sizes[0], s.sizes[-1]
        s.be.synchronize()
        t0 = time.perf_counter()
        for k in range(0, n, bs):  # the last, partial batch is used too
            m = min(bs, n - k)
            if m not in self.batches:
                self.batches[m] = tuple(s.be.empty((s.K, m, w), s.dtype) for w in (n_in, n_out))
            Xb, Yb = self.batches[m]
            rows = s.K * m
            self.gather(rows * (n_in + n_out), Xb.reshape(rows, n_in), Yb.reshape(rows, n_out), self.X, self.Y,
                        self.order[s.K * k:s.K * k + rows], rows, n_in, n_out)
            s.step(Xb, Yb, self.opt)
        s.be.synchronize()
        s.epochs_trained += 1
        return time.perf_counter() - t0

    def evaluate(self, epoch, seconds, monitor_training_cost) -> tuple[list[bool], list[dict]]:
        """(whether each model's parameters are finite, each model's record of this epoch), from one
        copy back: the validation accuracy, the finiteness check and, if asked, the training cost."""
        s = self.stack
        t1 = time.perf_counter()
        sets = [(*self.validation, 0.0, False, True), (*self.validation, 0.0, False, False)]
        if monitor_training_cost:
            sets.append((self.X, self.labels, self.lmbdas, True, False))
        accuracy, finite, *costs = s.measure_models(sets)
        costs = costs[0] if costs else [{"cost": None}] * s.K
        eval_seconds = time.perf_counter() - t1
        return [f["finite"] for f in finite], [
            {"epoch": epoch, "seconds": seconds, "eval_seconds": eval_seconds, "train_cost": c["cost"],
             "validation_accuracy": a["accuracy"]} for c, a in zip(costs, accuracy)]


# ---------------------------------------------------------------------------------------------
# The sweep: every group, here or on Ray
# ---------------------------------------------------------------------------------------------

def sweep(runs, data=None, data_dir=None, verify=True, backend=None, group_size=None, ray=None, threads=1,
          progress=None, monitor_training_cost=False, group_hook=None) -> dict:
    """Train every run (dicts of SHARED and PER_RUN settings, e.g. from ``grid``) in groups of at
    most ``group_size`` and return the whole result (see ``result``).

    data: load_mnist()'s dict, or None to load it from ``data_dir`` (``verify`` as load_mnist's).
    backend: each group's backend ("auto" | "numpy" | "cupy" | "emulated"; on Ray, chosen on each worker).
    ray: None trains the groups here; "auto" or "HOST:PORT" sends each group to that Ray cluster as
        a task (gpubp.sweeps.ray), retried if its worker dies.
    threads: groups trained here at once, each in a thread of its own (NumPy lets go of the GIL in
        its BLAS calls and large loops, so on the CPU two threads use two cores; default 1).
    progress: a bar over runs on stderr; None shows it only when stderr is a terminal.
    group_hook: called where each group trains, with (group index, epoch): epoch 0 before it
        trains and each epoch after it (tests use it to kill a Ray worker mid-group).
    """
    runs = [normalize(r) for r in runs]
    if not runs:
        raise GpubpError("a sweep needs at least one run")
    seen = [(shared_key(r), r["seed"], r["eta"], r["lmbda"]) for r in runs]
    if len(set(seen)) != len(seen):
        raise GpubpError("the sweep lists the same run twice")
    if data is None:
        from ..data import load_mnist

        data = load_mnist(data_dir, verify=verify)
    _check_widths(runs, data)
    plan = groups(runs, group_size)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = _bar(show, len(runs))
    t0 = time.perf_counter()
    try:
        if ray is None:
            done = _run_here(plan, data, backend, monitor_training_cost, int(threads), bar, group_hook)
        else:
            try:
                from .ray import run_groups
            except ImportError as e:
                if not (e.name or "").startswith("ray"):
                    raise
                raise GpubpError("--ray needs Ray: from the clone, uv run --extra ray gpubp sweep ... "
                                 "or pip install -e '.[ray]'") from None
            done = run_groups(train_group, plan, data, ray, backend=backend,
                              monitor_training_cost=monitor_training_cost,
                              on_group=(lambda g: bar.update(g["size"])) if bar is not None else None,
                              group_hook=group_hook)
    finally:
        if bar is not None:
            bar.close()
    return result(done, backend=backend, ray=ray, seconds=time.perf_counter() - t0)


def _run_here(plan, data, backend, monitor_training_cost, threads, bar, group_hook) -> list[dict]:
    """Every group of ``plan`` in this process, ``threads`` at a time; their results in plan order."""
    if threads < 1:
        raise GpubpError(f"threads must be >= 1, got {threads}")

    def one(i):
        if group_hook is not None:
            group_hook(i, 0)
        out = train_group(plan[i], data, backend, monitor_training_cost,
                          on_epoch=_epoch_note(bar, i, len(plan), group_hook))
        if bar is not None:
            bar.update(out["size"])
        return out

    if threads == 1:
        return [one(i) for i in range(len(plan))]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, range(len(plan))))


def _check_widths(runs, data) -> None:
    X, y = data["train"]
    n_in, n_out = X.shape[1], int(np.max(y)) + 1
    for r in runs:
        if r["sizes"][0] != n_in or r["sizes"][-1] < n_out:
            raise GpubpError(f"sizes must start with {n_in} (pixels per image) and end with {n_out} (classes), "
                             f"got {r['sizes'][0]}...{r['sizes'][-1]}")


def result(groups_done, backend=None, ray=None, seconds=None) -> dict:
    """The sweep's JSON-ready record: every run (settings, history, results, its group), each
    group's size, seconds and device, and what ran it (gpubp version, machine, time)."""
    from .. import sysinfo
    from ..fileio import provenance

    runs, info = [], []
    for i, g in enumerate(groups_done):
        info.append({"group": i, "size": g["size"], "seconds": g["seconds"], "backend": g["backend"],
                     "device": g["device"], **({"node": g["node"]} if "node" in g else {})})
        runs += [{**r, "group": i} for r in g["runs"]]
    return {**provenance(), "machine": sysinfo.machine(), "backend": backend or "auto", "ray": ray,
            "seconds": seconds, "groups": info, "runs": runs}


def _bar(show, total):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="sweep", unit="run", file=sys.stderr)


def _epoch_note(bar, i, n_groups, group_hook):
    """After each epoch of group i: the bar's note, and the hook."""
    def note(epoch, epochs):
        if bar is not None:
            bar.set_postfix_str(f"group {i + 1}/{n_groups}, epoch {epoch}/{epochs}")
        if group_hook is not None:
            group_hook(i, epoch)
    return note

