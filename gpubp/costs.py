"""Costs: each a small class with its value ``fn`` and its output error ``delta`` (BP1), as in network2.py.

The value is computed for reporting (in float64, on the device); the output error is one
fused kernel (or its NumPy reference) that also applies the 1/m of the mean cost.
"""

from __future__ import annotations

from .errors import GpubpError

# A saturated wrong answer costs -ln(CLIP) = 27.6 per output rather than inf (network2 used nan_to_num).
CLIP = 1e-12


class QuadraticCost:
    """C = (1/n) sum_x 0.5*||a - y||^2;   delta^L = (a - y) (.) sigma'(z^L)."""

    name = "quadratic"

    @staticmethod
    def fn(xp, A, Y):
        """Summed (not averaged) cost over the rows of A, Y (m, n_out), as a float64 device scalar."""
        diff = A.astype(xp.float64) - Y
        return 0.5 * xp.sum(diff * diff)

    @staticmethod
    def delta(be, D, A, Y, scale):
        """D <- scale * (A - Y) * A * (1 - A): sigma'(z) from the activation a = sigma(z)."""
        be.output_delta("quadratic", D, A, Y, scale)


class CrossEntropyCost:
    """C = -(1/n) sum_x [y ln a + (1-y) ln(1-a)];   delta^L = a - y (sigma' cancels)."""

    name = "cross_entropy"

    @staticmethod
    def fn(xp, A, Y):
        a = xp.clip(A.astype(xp.float64), CLIP, 1 - CLIP)
        return -xp.sum(Y * xp.log(a) + (1 - Y) * xp.log(1 - a))

    @staticmethod
    def delta(be, D, A, Y, scale):
        """D <- scale * (A - Y)."""
        be.output_delta("cross_entropy", D, A, Y, scale)


COSTS = {c.name: c for c in (QuadraticCost, CrossEntropyCost)}


def get_cost(name):
    """The cost class called ``name`` ("quadratic" | "cross_entropy"; "cross-entropy" works too)."""
    if isinstance(name, type) and name in COSTS.values():
        return name
    key = str(name).strip().lower().replace("-", "_")
    if key not in COSTS:
        raise GpubpError(f"unknown cost {name!r}: choose quadratic or cross_entropy")
    return COSTS[key]
