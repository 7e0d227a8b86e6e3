"""A sweep's plan: runs (seeds x eta x lambda), their settings checked, and their groups.

A run is one `gpubp train`: its settings are a dict of SHARED settings (the network and how it
trains) and PER_RUN ones (seed, eta, lmbda). Runs that agree on every SHARED setting form groups
of at most ``group_size``; a group trains as one gpubp.sweeps.stack.Stack (gpubp.sweeps.run).
"""

from __future__ import annotations

import itertools

from ..errors import GpubpError
from ..network import check_sizes
from ..optimizers import make_optimizer

# What the runs of one group share, with gpubp train's defaults, and what each run has of its own.
SHARED = {"sizes": [784, 30, 10], "cost": "quadratic", "activation": "sigmoid", "optimizer": "sgd", "momentum": 0.9,
          "dtype": "float32", "init": "default", "batch_size": 10, "epochs": 30}
PER_RUN = {"seed": None, "eta": None, "lmbda": 0.0}
DEFAULT_GROUP_SIZE = 16


def parse_seeds(text: str) -> list[int]:
    """'1-8' -> [1, ..., 8]; '1,3,5' and '1-4,9' work too; each seed once, in order."""
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            seeds += range(int(lo), int(hi) + 1) if dash else [int(part)]
        except ValueError:
            raise GpubpError(f"seeds must look like 1-8 or 1,3,5, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise GpubpError(f"seeds must be distinct non-negative integers, got {text!r}")
    return seeds


def grid(seeds, etas=(None,), lmbdas=(0.0,), **shared) -> list[dict]:
    """One run per (eta, lmbda, seed), config after config; ``shared``: any SHARED setting."""
    return [normalize({**shared, "seed": s, "eta": e, "lmbda": lm})
            for e, lm, s in itertools.product(etas, lmbdas, seeds)]


def normalize(run: dict) -> dict:
    """A run's settings, complete and checked: defaults filled in, eta resolved to the optimizer's
    default when None, sizes and hyperparameters validated (GpubpError before anything trains)."""
    unknown = set(run) - set(SHARED) - set(PER_RUN)
    if unknown:
        raise GpubpError(f"unknown run settings {sorted(unknown)}: a run has {', '.join([*SHARED, *PER_RUN])}")
    r = {**SHARED, **PER_RUN, **run}
    r["sizes"] = check_sizes(r["sizes"])
    if r["seed"] is None or int(r["seed"]) < 0:
        raise GpubpError(f"every run needs a non-negative seed, got {r['seed']!r}")
    r["seed"] = int(r["seed"])
    opt = _optimizer(r, n=1)
    r["eta"], r["lmbda"] = opt.eta, opt.lmbda
    r["batch_size"], r["epochs"] = int(r["batch_size"]), int(r["epochs"])
    if r["batch_size"] < 1 or r["epochs"] < 1:
        raise GpubpError(f"batch_size and epochs must be >= 1, got {r['batch_size']} and {r['epochs']}")
    return r


def _optimizer(run: dict, n: int):
    hyper = {"momentum": run["momentum"]} if run["optimizer"] == "momentum" else {}
    return make_optimizer(run["optimizer"], eta=run["eta"], lmbda=run["lmbda"], n=n, **hyper)


def shared_key(run: dict) -> tuple:
    return tuple(tuple(v) if isinstance(v, list) else v for v in (run[k] for k in SHARED))


def groups(runs, group_size=None) -> list[list[dict]]:
    """The runs in groups that can train as one Stack: same SHARED settings, at most group_size each
    (default DEFAULT_GROUP_SIZE), in the order the runs came."""
    size = DEFAULT_GROUP_SIZE if group_size is None else int(group_size)
    if size < 1:
        raise GpubpError(f"group size must be >= 1, got {group_size}")
    by_key: dict[tuple, list[dict]] = {}
    for r in runs:
        by_key.setdefault(shared_key(r), []).append(r)
    return [rs[k:k + size] for rs in by_key.values() for k in range(0, len(rs), size)]

