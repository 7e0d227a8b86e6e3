"""Test helpers: float64 re-derivations written independently of gpubp, and assert_close."""

import numpy as np


def sigmoid64(z):
    """1/(1+exp(-z)) in float64, written the stable way (never the tanh form the library uses)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_prime64(z):
    s = sigmoid64(z)
    return s * (1.0 - s)


def seed_notes_backprop(weights, biases, x, y, cost):
    """network.py's backprop for ONE example as column vectors: returns (nabla_b, nabla_w) lists."""
    activation = x.reshape(-1, 1)
    activations, zs = [activation], []
    for w, b in zip(weights, biases):
        z = w @ activation + b.reshape(-1, 1)
        zs.append(z)
        activation = sigmoid64(z)
        activations.append(activation)
    y = y.reshape(-1, 1)
    delta = (activations[-1] - y) * (sigmoid_prime64(zs[-1]) if cost == "quadratic" else 1.0)  # BP1
    nabla_b = [None] * len(weights)
    nabla_w = [None] * len(weights)
    nabla_b[-1] = delta  # BP3
    nabla_w[-1] = delta @ activations[-2].T  # BP4
    for l in range(2, len(weights) + 1):
        delta = (weights[-l + 1].T @ delta) * sigmoid_prime64(zs[-l])  # BP2
        nabla_b[-l] = delta
        nabla_w[-l] = delta @ activations[-l - 1].T
    return [b.ravel() for b in nabla_b], nabla_w


def cost64(weights, biases, X, Y, cost, lmbda=0.0, n=None):
    """Mean cost over the rows of X (float64), plus network2's 0.5*(lmbda/n)*sum ||w||^2."""
    A = np.asarray(X, dtype=np.float64)
    for w, b in zip(weights, biases):
        A = sigmoid64(A @ w.T + b)
    if cost == "quadratic":
        c = 0.5 * np.sum((A - Y) ** 2) / len(X)
    else:
        c = -np.sum(Y * np.log(A) + (1 - Y) * np.log(1 - A)) / len(X)
    if lmbda:
        c += 0.5 * (lmbda / n) * sum(np.sum(w ** 2) for w in weights)
    return c


def one_hot(y, k):
    Y = np.zeros((len(y), k))
    Y[np.arange(len(y)), y] = 1.0
    return Y


def assert_close(actual, expected, atol=0.0, rtol=0.0, scale=None, what="array"):
    """|actual - expected| <= atol + rtol*scale elementwise (scale defaults to |expected|).

    On failure, names the worst element: its index, both values, the error and the allowance.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    scale = np.abs(expected) if scale is None else np.asarray(scale, dtype=np.float64)
    allowed = atol + rtol * scale
    err = np.abs(actual - expected)
    bad = ~(err <= allowed)  # NaN counts as bad
    both_nan = np.isnan(actual) & np.isnan(expected)
    bad &= ~both_nan
    if bad.any():
        excess = np.where(bad, np.nan_to_num(err - allowed, nan=np.inf), -np.inf)
        i = np.unravel_index(np.argmax(excess), excess.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements out of tolerance; worst at index {tuple(map(int, i))}: "
            f"got {actual[i]!r}, expected {expected[i]!r}, error {err[i]:.3e} > allowed {allowed[i]:.3e} "
            f"(atol={atol:g}, rtol={rtol:g})")
