"""Costs: each a small object naming its output layer's activation and its kernels: its value and
its output error delta^L (BP1), as network2.py's cost classes have ``fn`` and ``delta``.

The value is summed on the device in float64 (``<name>_cost``), so a data set's cost comes back
in one copy; delta^L is one fused kernel (or its NumPy reference) that also applies the 1/m of
the mean cost; the own route fuses the output layer's forward and delta^L (``layer_output_<name>``).

Adding a cost: one entry here, its kernels in kernels/<name>.cu (its delta^L may be one the
kernels already have) and their references in gpubp/reference.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from .activations import SIGMOID, SOFTMAX, Activation
from .errors import GpubpError


@dataclass(frozen=True)
class Cost:
    """output: the output layer's activation; delta_kernel: ``<kernel>(D, A, Y, n, scale)``:
    D <- scale * delta^L; and, by name, ``<name>_cost(total, A, Y, rows, cols)``: total[0] += the
    summed cost, and ``layer_output_<name>``: the own route's fused output layer."""

    name: str
    output: Activation
    delta_kernel: str
    formula: str

    @property
    def value_kernel(self) -> str:
        return f"{self.name}_cost"

    @property
    def output_kernel(self) -> str:
        return f"layer_output_{self.name}"


QUADRATIC = Cost("quadratic", SIGMOID, "quadratic_delta", "C = 0.5 ||a - y||^2, delta^L = (a - y) sigma'(z^L)")
CROSS_ENTROPY = Cost("cross_entropy", SIGMOID, "difference_delta",
                     "C = -[y ln a + (1 - y) ln(1 - a)], delta^L = a - y")
LOG_LIKELIHOOD = Cost("log_likelihood", SOFTMAX, "difference_delta", "C = -ln a_y (softmax), delta^L = a - y")

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
