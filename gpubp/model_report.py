"""`gpubp evaluate MODEL --report report.png`: what a trained network gets wrong, in one picture.

Three panels: the confusion matrix over the evaluated set (rows: the true digit, columns: the
predicted one, counts written in the cells, the diagonal in its own colour), the worst-classified
digits (misclassified images with the largest output for the wrong digit, each titled with the
prediction and the truth), and the first layer's incoming weights, one 28x28 tile per hidden unit
(blue negative, red positive, each tile on its own symmetric scale), as network.py's readers
picture them.
"""

from __future__ import annotations

import math

import numpy as np

from .figures import pyplot, save

WORST = 24  # misclassified digits shown
TILES = 64  # first-layer units shown as weight tiles


def outputs(net, X, rows=10_000) -> np.ndarray:
    """The network's outputs (n, n_L) on the host, a chunk of ``rows`` at a time."""
    return np.concatenate([net.be.to_host(net.feedforward(X[k:k + rows])) for k in range(0, len(X), rows)])


def confusion(y, predicted, classes) -> np.ndarray:
    """Counts (classes, classes): row = true label, column = predicted label."""
    return np.bincount(np.asarray(y) * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def worst(out, y, k=WORST) -> np.ndarray:
    """Indices of the k misclassified rows whose winning (wrong) output is largest, worst first."""
    predicted = out.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y)
    score = out[wrong, predicted[wrong]] - out[wrong, y[wrong]]
    return wrong[np.argsort(-score, kind="stable")[:k]]


def _side(n) -> int | None:
    s = math.isqrt(n)
    return s if s * s == n else None


def figure(net, X, y):
    plt = pyplot("--report", "gpubp evaluate MODEL --report report.png")
    out = outputs(net, X)
    classes = net.sizes[-1]
    y = np.asarray(y)
    predicted = out.argmax(axis=1)
    cm = confusion(y, predicted, classes)
    accuracy = float(np.trace(cm)) / max(len(y), 1)
    side = _side(net.sizes[0])

    fig = plt.figure(figsize=(17, 6.2))
    left, mid, right = fig.subfigures(1, 3, width_ratios=[1.05, 1.0, 1.0])
    ax = left.subplots()
    off = np.where(np.eye(classes, dtype=bool), np.nan, cm)
    ax.imshow(off, cmap="Reds", vmin=0, vmax=max(np.nanmax(off) if off.size > 1 else 1, 1))
    for i in range(classes):
        for j in range(classes):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7 if cm[i, j] < 1000 else 6,
                    color="tab:green" if i == j else ("white" if cm[i, j] > 0.6 * np.nanmax(off) else "black"))
    ax.set(xticks=range(classes), yticks=range(classes), xlabel="predicted", ylabel="true",
           title=f"Confusion: {accuracy:.2%} right, {len(y) - int(np.trace(cm))} wrong of {len(y)}")

    bad = worst(out, y)
    mid.suptitle("Most confidently wrong (predicted / true)", fontsize=11)
    cols = 6
    axes = mid.subplots(max(1, math.ceil(WORST / cols)), cols)
    for a in axes.ravel():
        a.axis("off")
    for a, i in zip(axes.ravel(), bad):
        if side:
            a.imshow(np.asarray(X[i]).reshape(side, side), cmap="gray_r", vmin=0, vmax=1)
        a.set_title(f"{predicted[i]} / {y[i]}", fontsize=9, color="tab:red")
    if not len(bad):
        axes.ravel()[0].text(0, 0.5, "no digit misclassified", fontsize=10)

    W = net.be.to_host(net.weights[0])
    n = min(TILES, W.shape[0])
    right.suptitle(f"First layer: {n} of {W.shape[0]} units' incoming weights", fontsize=11)
    cols = math.ceil(math.sqrt(n))
    axes = np.atleast_1d(right.subplots(math.ceil(n / cols), cols))
    for a in axes.ravel():
        a.axis("off")
    for a, w in zip(axes.ravel(), W[:n]):
        if side:
            lim = float(np.max(np.abs(w))) or 1.0
            a.imshow(w.reshape(side, side), cmap="RdBu_r", vmin=-lim, vmax=lim)
    return fig


def report(net, X, y, path) -> None:
    """Draw ``figure`` for (X (n, n_0), y (n,)) and write it to ``path`` (PNG), atomically."""
    save(figure(net, X, y), path)
