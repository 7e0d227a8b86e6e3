"""`gpubp plot`: training curves of one or more runs, from the JSON that `gpubp train --metrics-out`
writes. Two panels, validation accuracy and training cost against the epoch (counted from 1, as
the console counts them); several runs are overlaid and labelled by what differs in their configs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import GpubpError
from .figures import pyplot, save

WHAT = "a RUN.json written by gpubp train --metrics-out"


def load_run(path) -> dict:
    """The metrics document in ``path``, checked to hold per-epoch records; one-line errors otherwise."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GpubpError(f"{path} does not exist: give {WHAT}") from None
    except IsADirectoryError:
        raise GpubpError(f"{path} is a directory: give {WHAT}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GpubpError(f"cannot read {path} ({getattr(e, 'strerror', None) or e})") from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise GpubpError(f"{path} is not JSON ({getattr(e, 'msg', e)}, line {getattr(e, 'lineno', '?')}): "
                         f"give {WHAT}") from None
    epochs = doc.get("epochs") if isinstance(doc, dict) else None
    if not isinstance(epochs, list) or not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in epochs):
        raise GpubpError(f"{path} is not a gpubp train metrics file (no per-epoch records): give {WHAT}")
    if not epochs:
        raise GpubpError(f"{path} holds no epochs: the run stopped before its first epoch finished")
    for r in epochs:
        for key in CURVES:
            v = r.get(key)
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
                raise GpubpError(f"{path}: epoch {r['epoch']}'s {key} is {json.dumps(v)[:40]}, not a finite number "
                                 f"or null: give {WHAT}")
    return doc


CURVES = ("validation_accuracy", "train_cost")


def labels(runs, paths) -> list[str]:
    """One label per run: the config entries whose values differ between the runs ("eta=0.5, lmbda=5"),
    or the file names where the configs are the same (or there is one run)."""
    configs = [{**(r.get("config") or {}), **({"epochs": _epochs_held(r)} if r.get("epochs") else {})}
               for r in runs]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    if not differ:
        return [Path(p).stem for p in paths]
    out = [", ".join(f"{k}={_show(c.get(k))}" for k in differ) for c in configs]
    if len(set(out)) < len(out):  # configs differ only in ways two runs share: tell them apart by file
        out = [f"{label} ({Path(p).stem})" for label, p in zip(out, paths)]
    return out


def _epochs_held(run) -> str:
    """The epochs a run's records hold ("1-8", "4-5" for a resumed run), not the count it asked for,
    and whether it was interrupted or stopped early."""
    first, last = run["epochs"][0]["epoch"], run["epochs"][-1]["epoch"]
    held = str(first) if first == last else f"{first}-{last}"
    if run.get("interrupted"):
        return held + " (interrupted)"
    return held + (" (stopped early)" if run.get("stopped_early") else "")


def _show(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def figure(runs, names):
    """Validation accuracy (left) and training cost (right) per epoch, a line per run."""
    plt = pyplot("gpubp plot", "gpubp plot ...")
    fig, (acc, cost) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, (run, name) in enumerate(zip(runs, names)):
        for ax, key in ((acc, "validation_accuracy"), (cost, "train_cost")):
            pts = [(r["epoch"], r[key]) for r in run["epochs"] if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) <= 30 else None, ms=3, color=f"C{i}", label=name)
        if run.get("restored_best") and run.get("best_epoch"):  # early stopping put this epoch's weights back
            acc.axvline(run["best_epoch"], color=f"C{i}", lw=0.8, ls=":")
    acc.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy")
    cost.set(xlabel="epoch", ylabel="training cost", title="Training cost (with the L2 term)")
    epochs = [r["epoch"] for run in runs for r in run["epochs"]]
    for ax, missing in ((acc, "no validation accuracy recorded"),
                        (cost, "no training cost recorded\n(the runs used --no-train-cost)")):
        ax.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)  # whole epochs, even just one
        if max(epochs) - min(epochs) < 2:  # one or two epochs: whole-epoch ticks, not 0.96, 0.98, ...
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        if ax.lines:
            ax.grid(alpha=0.3)
            _honest_scale(ax, log=ax is cost)
        else:
            ax.text(0.5, 0.5, missing, ha="center", va="center", transform=ax.transAxes)
    # One legend under both panels (the runs are the same in each), so it covers no curve; matplotlib
    # names unlabelled artists (the early-stopping marker) "_child1": those are no run.
    handles = {line.get_label(): line for ax in (acc, cost) for line in ax.lines
               if not line.get_label().startswith("_")}
    rows = len(handles) if len(handles) > 3 else 1
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=1 if len(handles) > 3 else len(handles),
                   fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03 + 0.035 * rows if handles else 0, 1, 1))
    return fig


def _honest_scale(ax, log) -> None:
    """A cost that spans a decade or more on a log axis; anything flatter on a linear one, without an
    offset, and a curve that hardly moves drawn flat (a 1e-5 change must not fill the panel like a jump)."""
    ys = [y for line in ax.lines for y in line.get_ydata()]
    lo, hi = min(ys), max(ys)
    if log and lo > 0 and hi / lo >= 10:
        ax.set_yscale("log")
        return
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    if hi - lo < 1e-3 * max(abs(hi), abs(lo), 1e-12):
        pad = 0.05 * max(abs(hi), 1e-3)
        ax.set_ylim(lo - pad, hi + pad)


def plot(paths, out) -> None:
    """Read every run in ``paths`` and write their curves to ``out`` (PNG), atomically."""
    runs = [load_run(p) for p in paths]
    save(figure(runs, labels(runs, paths)), out)
