"""Sweeps run: many training runs (seeds x eta x lambda), trained group by group, here or on Ray.

Runs that agree on every SHARED setting (gpubp.sweeps.plan) form a group, and every model of a
group trains through gpubp.training's epoch driver (Epochs), as `gpubp train` trains one network:
* on a GPU, as one gpubp.sweeps.stack.Stack: K models for one step's launches and batched
  products, its epochs captured as graphs where one network's would be;
* on a CPU backend (numpy, emulated, native), as K Networks, each on the route and graph one
  network takes there, spread over one thread per core: a stacked product on the host loops over
  the models anyway, and the native backend's graph replay and NumPy's products let go of the GIL.
Either way each model's weights equal those of its own ``gpubp train --seed S --eta ETA --lmbda L``
(bit for bit on NumPy; the tests check it). Groups run one after another here, or as Ray tasks on
a cluster (gpubp.sweeps.ray, imported only then).

Each run's result: its settings, its per-epoch history (the records `gpubp train` keeps), its best
validation accuracy and that epoch, its test accuracy after the last epoch, and its seconds: the
group's wall-clock time over K, the share the run cost. gpubp.sweeps.report prints and draws them.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import GpubpError
from ..optimizers import ModelOptimizers
from .plan import SHARED, _optimizer, groups, normalize, shared_key

# ---------------------------------------------------------------------------------------------
# One group: K runs, as one Stack (a GPU) or as K networks over the cores (a CPU)
# ---------------------------------------------------------------------------------------------

def stacks_pay(be) -> bool:
    """Whether a group trains as one Stack on backend ``be``: where the arrays live on a GPU, whose
    batched products and kernels do all K models' work in one launch each. On the host (numpy,
    emulated, native) NumPy's stacked product loops over the models anyway, so K networks, each on
    the route and graph one network would take, one per core, do better."""
    return be.xp is not np


def train_group(runs, data, backend=None, monitor_training_cost=False, on_epoch=None, keep_params=False,
                threads=None, stack=None) -> dict:
    """Train runs that share their SHARED settings on ``data`` ({"train", "validation", "test"}: (X, y)
    pairs), epoch by epoch through gpubp.training's driver, with the validation accuracy (and, if asked,
    the training cost) after each epoch and the test accuracy after the last. ``on_epoch(epoch, epochs)``
    after each epoch.

    stack: train the runs as one Stack (True), as K networks (False), or as ``stacks_pay`` says (None).
    threads: K networks train that many at once, a thread each (default: every core); a stack is one thread.

    Returns {"runs": one result per run, "size", "seconds" (the group's epochs, wall-clock), "backend",
    "device", "stacked", "threads"}; keep_params adds each run's trained parameters (a host array, not
    JSON) to its result."""
    group = Group(runs, data, backend, stack=stack, threads=threads)
    K, epochs = len(runs), runs[0]["epochs"]
    histories, diverged = [[] for _ in runs], [None] * K
    try:
        # A diverging model is reported by its finiteness check, not by NumPy warnings mid-epoch.
        with np.errstate(over="ignore", invalid="ignore"):
            for epoch in range(1, epochs + 1):
                finite, records = group.epoch(epoch, monitor_training_cost)
                for i in range(K):
                    histories[i].append(records[i])
                    if not finite[i] and diverged[i] is None:
                        diverged[i] = epoch
                if on_epoch is not None:
                    on_epoch(epoch, epochs)
            test = group.test()
    finally:
        group.close()
    params = group.params() if keep_params else None
    results = []
    for i, (r, h, t, d) in enumerate(zip(runs, histories, test, diverged)):
        best = max(range(len(h)), key=lambda e: h[e]["validation_accuracy"])  # the first of the best
        results.append({"run": r, "history": h, "best_validation_accuracy": h[best]["validation_accuracy"],
                        "best_epoch": h[best]["epoch"], "test_accuracy": t["accuracy"], "diverged_epoch": d,
                        "seconds": group.seconds / K, **({"params": params[i]} if keep_params else {})})
    return {"runs": results, "size": K, "seconds": group.seconds, "backend": group.be.name, "device": group.be.device,
            "stacked": group.stack is not None, "threads": group.threads}


class Group:
    """One group's models on the device, each trained by gpubp.training.Epochs: one Stack (K models,
    one driver with K interleaved permutations) or K Networks (a driver each, ``threads`` at a time).
    ``seconds`` adds up the group's epochs, wall-clock, each model's training and evaluation in them
    (a record's "seconds" is its own driver's clock, training only, as gpubp train's)."""

    def __init__(self, runs, data, backend, stack=None, threads=None):
        from ..backends import get_backend
        from ..network import Network
        from ..training import Epochs, graph_mode
        from .stack import Stack

        first = runs[0]
        if any(shared_key(r) != shared_key(first) for r in runs):
            raise GpubpError("the runs of a group must share " + ", ".join(SHARED))
        self.be = be = get_backend(backend)
        (X, y), (Xv, yv) = data["train"], data["validation"]
        self.test_data = data["test"]
        n = len(X)
        shape = dict(cost=first["cost"], activation=first["activation"], backend=be, dtype=first["dtype"],
                     init=first["init"])
        self.stack = self.pool = self._blas_before = None
        self.lmbdas = [r["lmbda"] for r in runs]
        self.seconds = 0.0
        if stacks_pay(be) if stack is None else stack:
            self.stack = s = Stack(first["sizes"], [r["seed"] for r in runs], **shape)
            opt = ModelOptimizers([_optimizer(r, n) for r in runs])
            self.drivers = [Epochs(s, s.to_device(X), s.labels(y, n), first["batch_size"], opt, graph_mode(s)[0])]
            self.validation = [(s.to_device(Xv), s.labels(yv, len(yv)))]
            self.threads = 1
            return
        # K networks, each as `gpubp train` builds it: its own route, graph and data on the device
        nets = [Network(first["sizes"], seed=r["seed"], **shape) for r in runs]
        X0, labels0 = nets[0].to_device(X), nets[0].labels(y, n)  # one copy of the data, read by every model
        Xv0, lv0 = nets[0].to_device(Xv), nets[0].labels(yv, len(yv))
        self.drivers = [Epochs(net, X0, labels0, first["batch_size"], _optimizer(r, n).bind(net), graph_mode(net)[0])
                        for net, r in zip(nets, runs)]
        self.validation = [(Xv0, lv0)] * len(nets)
        self.threads = max(1, min(len(nets), (os.cpu_count() or 1) if threads is None else int(threads)))
        if self.threads > 1:
            # Each thread's work on its share of the cores, not on all of them: our kernels' OpenMP teams
            # (per thread), and NumPy's BLAS (one setting for the process, put back by close()), whose
            # idle threads spin after each evaluation's products and took the other model's core: on two
            # cores, two threads' epochs of [784,30,10] ran 1.7x slower each than one alone.
            share = max(1, (os.cpu_count() or 1) // self.threads)
            from .. import sysinfo

            self._blas_before = sysinfo.set_blas_threads(share)
            self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="gpubp-sweep",
                                           initializer=be.use_cores, initargs=(share,))

    def epoch(self, epoch, monitor_training_cost) -> tuple[list[bool], list[dict]]:
        """One epoch of every model, and each model's record of it: (whether each model's parameters are
        finite, each model's record) from one copy back per driver: the validation accuracy, the
        finiteness check and, if asked, the training cost."""
        def one(i):
            with np.errstate(over="ignore", invalid="ignore"):  # a thread starts with NumPy's defaults
                return self._epoch(i, epoch, monitor_training_cost)

        t0 = time.perf_counter()
        if self.pool is None:
            per_driver = [one(i) for i in range(len(self.drivers))]
        else:
            per_driver = list(self.pool.map(one, range(len(self.drivers))))
        self.seconds += time.perf_counter() - t0
        finite = [f for fs, _ in per_driver for f in fs]
        return finite, [r for _, rs in per_driver for r in rs]

    def _epoch(self, i, epoch, monitor_training_cost):
        """Driver i's epoch and evaluation: (finite per model, record per model)."""
        d = self.drivers[i]
        seconds = d.epoch()
        capture, d.capture_seconds = d.capture_seconds, None
        d.model.epochs_trained += 1
        t1 = time.perf_counter()
        lmbdas = self.lmbdas if self.stack is not None else self.lmbdas[i]
        sets = [(*self.validation[i], 0.0, False, True), (d.X, d.labels, lmbdas, monitor_training_cost, False)]
        accuracy, train = d.model.measure_models(sets)
        eval_seconds = time.perf_counter() - t1
        records = [{"epoch": epoch, "seconds": seconds, "eval_seconds": eval_seconds, "train_cost": t["cost"],
                    "validation_accuracy": a["accuracy"], "mode": d.mode,
                    **({} if capture is None else {"capture_seconds": capture})} for a, t in zip(accuracy, train)]
        return [t["finite"] for t in train], records

    def test(self) -> list[dict]:
        """Each model's test accuracy after the last epoch."""
        X, y = self.test_data
        return [m for d in self.drivers for m in d.model.measure_models([(X, y, 0.0, False, True)])[0]]

    def params(self) -> list[np.ndarray]:
        """Each model's trained parameters, on the host."""
        return [p for d in self.drivers for p in (d.model.get_params() if d.model.lead else [d.model.get_params()])]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        if self._blas_before is not None:
            from .. import sysinfo

            sysinfo.set_blas_threads(self._blas_before)
            self._blas_before = None


# ---------------------------------------------------------------------------------------------
# The sweep: every group, here or on Ray
# ---------------------------------------------------------------------------------------------

class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep run here: ``result`` is ``result()``'s record of the groups that had
    finished (their runs whole), with "interrupted" saying how many of how many."""

    def __init__(self, result: dict):
        super().__init__()
        self.result = result


def sweep(runs, data=None, data_dir=None, verify=True, backend=None, group_size=None, ray=None, threads=None,
          progress=None, monitor_training_cost=False, group_hook=None) -> dict:
    """Train every run (dicts of SHARED and PER_RUN settings, e.g. from ``grid``) in groups of at
    most ``group_size`` and return the whole result (see ``result``).

    data: load_mnist()'s dict, or None to load it from ``data_dir`` (``verify`` as load_mnist's).
    backend: each group's backend ("auto" | "numpy" | "cupy" | "emulated" | "native"; on Ray, chosen
        on each worker).
    ray: None trains the groups here; "auto" or "HOST:PORT" sends each group to that Ray cluster as
        a task (gpubp.sweeps.ray), retried if its worker dies.
    threads: on a CPU backend, how many of a group's models train at once, a thread each (default:
        every core; the native backend's replays and NumPy's products let go of the GIL); on a GPU,
        how many groups (a Stack each) train at once (default 1). See ``stacks_pay``.
    progress: a bar over runs on stderr; None shows it only when stderr is a terminal.
    group_hook: called where each group trains, with (group index, epoch): epoch 0 before it
        trains and each epoch after it (tests use it to kill a Ray worker mid-group).

    Ctrl-C (here, not on Ray) raises SweepInterrupted, which holds the result of the groups finished.
    """
    runs = [normalize(r) for r in runs]
    if not runs:
        raise GpubpError("a sweep needs at least one run")
    seen = [(shared_key(r), r["seed"], r["eta"], r["lmbda"]) for r in runs]
    if len(set(seen)) != len(seen):
        raise GpubpError("the sweep lists the same run twice")
    if threads is not None and int(threads) < 1:
        raise GpubpError(f"threads must be >= 1, got {threads}")
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
            done = {}
            try:
                _run_here(plan, data, backend, monitor_training_cost, threads, bar, group_hook, done)
            except KeyboardInterrupt:
                finished = [done[i] for i in sorted(done)]
                partial = result(finished, backend=backend, ray=ray, seconds=time.perf_counter() - t0)
                partial["interrupted"] = {"groups_finished": len(finished), "groups": len(plan)}
                raise SweepInterrupted(partial) from None
            done = [done[i] for i in range(len(plan))]
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


def _run_here(plan, data, backend, monitor_training_cost, threads, bar, group_hook, done) -> None:
    """Every group of ``plan`` in this process, into ``done`` {group index: its result} as each
    finishes. On a CPU backend one group after another, each spreading its models over ``threads``
    threads; on a GPU ``threads`` groups at once (default 1), each a Stack."""
    from ..backends import get_backend

    per_group, at_once = (None, threads or 1) if stacks_pay(get_backend(backend)) else (threads, 1)
    stop = threading.Event()  # Ctrl-C in the main thread: the other groups stop after their epoch

    def one(i):
        if group_hook is not None:
            group_hook(i, 0)
        out = train_group(plan[i], data, backend, monitor_training_cost, threads=per_group,
                          on_epoch=_epoch_note(bar, i, len(plan), group_hook, stop))
        if bar is not None:
            bar.update(out["size"])
        done[i] = out

    if at_once == 1:
        for i in range(len(plan)):
            one(i)
        return
    pool = ThreadPoolExecutor(max_workers=at_once)
    try:
        for f in [pool.submit(one, i) for i in range(len(plan))]:
            f.result()
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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
                     "device": g["device"], **{k: g[k] for k in ("stacked", "threads", "node") if k in g}})
        runs += [{**r, "group": i} for r in g["runs"]]
    return {**provenance(), "machine": sysinfo.machine(), "backend": backend or "auto", "ray": ray,
            "seconds": seconds, "groups": info, "runs": runs, "interrupted": None}


def _bar(show, total):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="sweep", unit="run", file=sys.stderr)


def _epoch_note(bar, i, n_groups, group_hook, stop=None):
    """After each epoch of group i: the bar's note, and the hook; a KeyboardInterrupt once ``stop`` is set."""
    def note(epoch, epochs):
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        if bar is not None:
            bar.set_postfix_str(f"group {i + 1}/{n_groups}, epoch {epoch}/{epochs}")
        if group_hook is not None:
            group_hook(i, epoch)
    return note

