"""A sweep's report: the table of runs, the summary per config, the figure."""

from __future__ import annotations

import math
import statistics

import numpy as np

from .plan import SHARED


def config_of(run: dict, varying) -> str:
    """A run's config in words: eta and lambda, then any other setting that varies in the sweep."""
    words = [f"eta {run['eta']:g}", f"lambda {run['lmbda']:g}"]
    words += [f"{k} {','.join(map(str, run[k])) if isinstance(run[k], list) else run[k]}" for k in varying]
    return ", ".join(words)


def _configs(result) -> dict[str, list[dict]]:
    """{config: its runs, by seed}, configs in the order they first appear."""
    runs = result["runs"]
    varying = [k for k in SHARED if len({str(r["run"][k]) for r in runs}) > 1]
    out: dict[str, list[dict]] = {}
    for r in runs:
        out.setdefault(config_of(r["run"], varying), []).append(r)
    return {c: sorted(rs, key=lambda r: r["run"]["seed"]) for c, rs in out.items()}


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f} %"


def table(result) -> str:
    """Markdown: one row per run (config, seed, best validation accuracy and its epoch, test
    accuracy, seconds: the run's share of its group's training time)."""
    rows = ["| config | seed | best validation (epoch) | test | s/run |", "|---|---:|---:|---:|---:|"]
    for config, runs in _configs(result).items():
        for r in runs:
            note = f" (diverged in epoch {r['diverged_epoch']})" if r["diverged_epoch"] else ""
            rows.append(f"| {config} | {r['run']['seed']} | {_pct(r['best_validation_accuracy'])} "
                        f"({r['best_epoch']}) | {_pct(r['test_accuracy'])}{note} | {r['seconds']:.1f} |")
    return "\n".join(rows)


def summary(result) -> str:
    """Markdown: one row per config, test accuracy's mean, min and max over its seeds."""
    rows = ["| config | seeds | test mean | test min | test max | best validation mean |",
            "|---|---:|---:|---:|---:|---:|"]
    for config, runs in _configs(result).items():
        test = [r["test_accuracy"] for r in runs]
        val = [r["best_validation_accuracy"] for r in runs]
        rows.append(f"| {config} | {len(runs)} | {_pct(statistics.fmean(test))} | {_pct(min(test))} | "
                    f"{_pct(max(test))} | {_pct(statistics.fmean(val))} |")
    return "\n".join(rows)


def plot(result, path) -> None:
    """Test accuracy per config (PNG): each seed a dot, the mean a bar, the seeds' min..max a line."""
    from ..figures import pyplot, save

    configs = _configs(result)
    fig, ax = pyplot().subplots(figsize=(max(6.0, 1.6 * len(configs) + 2), 4.2))
    for x, runs in enumerate(configs.values()):
        test = [100 * r["test_accuracy"] for r in runs]
        jitter = np.linspace(-0.12, 0.12, len(test)) if len(test) > 1 else [0.0]
        ax.plot([x, x], [min(test), max(test)], color="C0", lw=2, alpha=0.5)
        ax.scatter(x + np.asarray(jitter), test, color="C0", s=18, zorder=3)
        ax.plot([x - 0.25, x + 0.25], [statistics.fmean(test)] * 2, color="C3", lw=2)
    ax.set_xticks(range(len(configs)), list(configs), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    run = result["runs"][0]["run"]
    cut = result.get("interrupted")
    note = f" (interrupted: {cut['groups_finished']} of {cut['groups']} groups finished)" if cut else ""
    ax.set_title(f"[{','.join(map(str, run['sizes']))}] {run['cost']}, {run['epochs']} epochs: "
                 f"a dot per seed, the mean in red{note}", fontsize=9)
    fig.tight_layout()
    save(fig, path)
