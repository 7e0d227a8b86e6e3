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
    """Two panels: samples/s vs batch size (a line per network and backend), and GPU/CPU speed-up
    vs batch size (a line per network), or the reason there is none."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(12, 4.8))
    nets = sorted({tuple(c["sizes"]) for c in result["cases"]}, key=lambda s: sum(s))
    backends = list(dict.fromkeys(c["backend"] for c in result["cases"]))
    styles = ["-", "--", ":", "-."]
    for ni, s in enumerate(nets):
        for bi, b in enumerate(backends):
            pts = sorted((c["batch"], c["samples_per_second"]) for c in result["cases"]
                         if tuple(c["sizes"]) == s and c["backend"] == b)
            if pts:
                left.plot(*zip(*pts), styles[bi % 4], marker="o", color=f"C{ni}", label=f"{b} {','.join(map(str, s))}")
        gpu_rows = [b for b in backends if b.startswith("cupy")]  # cupy, cupy-own, cupy-graph, cupy-own-graph
        for bi, b in enumerate(gpu_rows):
            gpu = sorted((c["batch"], c["speedup_vs_numpy"]) for c in result["cases"]
                         if tuple(c["sizes"]) == s and c["backend"] == b and c["speedup_vs_numpy"])
            if gpu:
                label = ",".join(map(str, s)) + ("" if b == "cupy" else f" {b[5:]}")
                right.plot(*zip(*gpu), styles[bi % 4], marker="o", color=f"C{ni}", label=label)
    left.set(xscale="log", yscale="log", xlabel="batch size", ylabel="training samples / s",
             title=f"Throughput ({result['dtype']}, {result['machine']['cpu']})")
    left.legend(fontsize=7)
    right.set(xscale="log", xlabel="batch size", ylabel="GPU / CPU speed-up (x)", title="CuPy vs NumPy")
    if right.lines:
        right.axhline(1.0, color="grey", lw=0.8)
        right.legend(fontsize=8)
    else:
        reason = next((s for s in result["skipped"] if s.startswith("cupy")), "no GPU case was run")
        right.text(0.5, 0.5, "no GPU measured here:\n" + textwrap.fill(reason, 48), ha="center", va="center",
                   transform=right.transAxes, fontsize=9)
        right.set_xticks([])
        right.set_yticks([])
    fig.tight_layout()
    return fig


