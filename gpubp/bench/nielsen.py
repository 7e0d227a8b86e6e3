"""network.py's own algorithm, as the book wrote it: one example at a time, as column vectors,
in float64 with a Python loop over the mini-batch. It is the speed gpubp is measured against
(benchmarks/cpu_targets.py) and an independent derivation the tests compare BP1-BP4 with.
"""

from __future__ import annotations

import math

import numpy as np


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))  # network.py's form: exp overflows (harmlessly) for z << 0


def backprop_one(weights, biases, x, y, cost="quadratic"):
    """network.py's backprop for ONE example: x (n_0,), y (n_L,) one-hot; returns (nabla_b, nabla_w)
    for the summed cost, nabla_b[l] (n_{l+1},), nabla_w[l] (n_{l+1}, n_l). Sigmoid layers;
    cost "quadratic" (delta^L = (a - y) sigma'(z)) or "cross_entropy" (delta^L = a - y)."""
    activation = np.asarray(x, dtype=np.float64).reshape(-1, 1)
    activations, zs = [activation], []
    for w, b in zip(weights, biases):
        z = w @ activation + np.reshape(b, (-1, 1))
        zs.append(z)
        activation = _sigmoid(z)
        activations.append(activation)
    y = np.reshape(y, (-1, 1))
    sp = activations[-1] * (1 - activations[-1])
    delta = (activations[-1] - y) * (sp if cost == "quadratic" else 1.0)  # BP1
    nabla_b, nabla_w = [None] * len(weights), [None] * len(weights)
    nabla_b[-1], nabla_w[-1] = delta, delta @ activations[-2].T  # BP3, BP4
    for l in range(2, len(weights) + 1):
        a = activations[-l]
        delta = (weights[-l + 1].T @ delta) * (a * (1 - a))  # BP2
        nabla_b[-l], nabla_w[-l] = delta, delta @ activations[-l - 1].T
    return [b.ravel() for b in nabla_b], nabla_w


def epoch_slice(X, y, sizes, eta, batch, seed=1):
    """network.py's SGD over the rows of X (in order) with labels y: a Python loop over each
    mini-batch's examples, quadratic cost. Returns the final weights (to keep the work honest)."""
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((o, i)) / math.sqrt(i) for i, o in zip(sizes[:-1], sizes[1:])]
    bs = [rng.standard_normal(o) for o in sizes[1:]]
    eye = np.eye(sizes[-1])
    with np.errstate(over="ignore"):
        for k in range(0, len(X), batch):
            nb = [np.zeros(b.shape) for b in bs]
            nw = [np.zeros(w.shape) for w in ws]
            for x, t in zip(X[k:k + batch], y[k:k + batch]):
                db, dw = backprop_one(ws, bs, x, eye[t])
                nb = [a + d for a, d in zip(nb, db)]
                nw = [a + d for a, d in zip(nw, dw)]
            ws = [w - eta / batch * d for w, d in zip(ws, nw)]
            bs = [b - eta / batch * d for b, d in zip(bs, nb)]
    return ws
