"""Costs: each a small object with its value ``fn``, its output layer's activation and the kernel
of its output error delta^L (BP1), as network2.py's cost classes have ``fn`` and ``delta``.

The value is computed for reporting (in float64, on the device); delta^L is one fused kernel
(or its NumPy reference) that also applies the 1/m of the mean cost.

Adding a cost: one entry here, and, if its delta^L is not one the kernels already have, the
kernel in kernels/<name>.cu and its reference in gpubp/reference.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .activations import SIGMOID, SOFTMAX, Activation
from .errors import GpubpError

# A saturated wrong answer costs -ln(CLIP) = 27.6 per output rather than inf (network2 used nan_to_num).
CLIP = 1e-12


def _quadratic(xp, A, Y):
    """C = 0.5*||a - y||^2 summed over the rows of A, Y (m, n_out), as a float64 device scalar."""
    diff = A.astype(xp.float64) - Y
    return 0.5 * xp.sum(diff * diff)


def _cross_entropy(xp, A, Y):
    """C = -sum [y ln a + (1-y) ln(1-a)] over the rows (sigmoid outputs)."""
    a = xp.clip(A.astype(xp.float64), CLIP, 1 - CLIP)
    return -xp.sum(Y * xp.log(a) + (1 - Y) * xp.log(1 - a))


def _log_likelihood(xp, A, Y):
    """C = -sum y ln a over the rows (softmax outputs: -ln of the right class's probability)."""
    a = xp.clip(A.astype(xp.float64), CLIP, 1.0)
    return -xp.sum(Y * xp.log(a))


@dataclass(frozen=True)
class Cost:
    """fn(xp, A, Y): the summed cost of a batch; output: the output layer's activation;
    delta_kernel: ``<kernel>(D, A, Y, n, scale)``: D <- scale * delta^L."""

    name: str
    fn: Callable
    output: Activation
    delta_kernel: str
    formula: str


QUADRATIC = Cost("quadratic", _quadratic, SIGMOID, "quadratic_delta", "delta^L = (a - y) * sigma'(z^L)")
CROSS_ENTROPY = Cost("cross_entropy", _cross_entropy, SIGMOID, "difference_delta", "delta^L = a - y")
LOG_LIKELIHOOD = Cost("log_likelihood", _log_likelihood, SOFTMAX, "difference_delta", "delta^L = a - y (softmax)")

COSTS = {c.name: c for c in (QUADRATIC, CROSS_ENTROPY, LOG_LIKELIHOOD)}
DEFAULT = "quadratic"


def get_cost(name) -> Cost:
    """The cost called ``name`` ("quadratic" | "cross_entropy" | "log_likelihood"; dashes work too)."""
    if isinstance(name, Cost):
        return name
    key = str(name).strip().lower().replace("-", "_")
    if key not in COSTS:
        raise GpubpError(f"unknown cost {name!r}: choose one of {', '.join(COSTS)}")
    return COSTS[key]
