"""The benchmark figure: throughput and GPU/CPU speed-up against batch size (matplotlib, optional)."""

from __future__ import annotations

import textwrap

from ..figures import pyplot, save

__all__ = ["figure", "plot", "pyplot"]


def plot(result, path) -> None:
    """Write the figure of ``result`` to ``path`` (PNG), atomically."""
    pyplot()
    save(figure(result), path)


def figure(result):
    """Samples/s vs batch size, a colour per backend and a line style per network, with the cases
    whose repeats disagreed (not to be trusted) crossed out; beside it, when a GPU ran, the GPU/CPU
    speed-up vs batch size (a line per network), else one line saying why no GPU was measured."""
    cases = result["cases"]
    gpu_rows = list(dict.fromkeys(c["backend"] for c in cases
                                  if c["backend"].startswith("cupy") and c.get("speedup_vs_numpy")))
    plt = pyplot()
    if gpu_rows:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    else:
        fig, left = plt.subplots(1, 1, figsize=(10, 5.2))
    nets = sorted({tuple(c["sizes"]) for c in cases}, key=lambda s: sum(s))
    backends = list(dict.fromkeys(c["backend"] for c in cases))
    styles = ["-", "--", ":", "-."]
    for ni, s in enumerate(nets):
        for bi, b in enumerate(backends):
            pts = sorted((c["batch"], c["samples_per_second"]) for c in cases
                         if tuple(c["sizes"]) == s and c["backend"] == b)
            if pts:
                left.plot(*zip(*pts), styles[ni % 4], marker="o", color=f"C{bi % 10}",
                          label=f"{b} {','.join(map(str, s))}")
        for gi, b in enumerate(gpu_rows):  # cupy, cupy-own, cupy-graph, cupy-own-graph
            gpu = sorted((c["batch"], c["speedup_vs_numpy"]) for c in cases
                         if tuple(c["sizes"]) == s and c["backend"] == b and c.get("speedup_vs_numpy"))
            if gpu:
                label = ",".join(map(str, s)) + ("" if b == "cupy" else f" {b[5:]}")
                right.plot(*zip(*gpu), styles[gi % 4], marker="o", color=f"C{ni % 10}", label=label)
    flagged = [(c["batch"], c["samples_per_second"]) for c in cases if c.get("warnings")]
    if flagged:
        left.plot(*zip(*flagged), "x", color="black", ms=11, mew=2, ls="none",
                  label="repeats disagreed > 2x: not to be trusted")
    busy = any("busy" in w or "busier" in w for w in result.get("warnings", []))
    left.set(xscale="log", yscale="log", xlabel="batch size", ylabel="training samples / s",
             title=f"Throughput ({result['dtype']}, {result['machine']['cpu']})" + ("\nthe machine was busy: "
                                                                                 "numbers suspect" if busy else ""))
    if gpu_rows:
        left.legend(fontsize=7)
    else:  # one panel: the legend beside it, over no curve
        left.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if gpu_rows:
        right.set(xscale="log", xlabel="batch size", ylabel="GPU / CPU speed-up (x)", title="CuPy vs NumPy")
        right.axhline(1.0, color="grey", lw=0.8)
        right.legend(fontsize=8)
        fig.tight_layout()
    else:
        reason = next((s for s in result["skipped"] if s.startswith("cupy")), "no GPU case was run")
        fig.text(0.5, 0.01, "no GPU measured here: " + textwrap.shorten(reason, 110), ha="center", va="bottom",
                 fontsize=8)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
