"""Activations: each one object naming its forward kernel, its derivative-from-output kernel, its
NumPy formulas and its default weight initialisation (micrograd's habit: the derivative sits
beside the forward).

Hidden layers take any of ACTIVATIONS; the output layer's activation comes with the cost
(sigmoid for quadratic and cross-entropy, softmax for log-likelihood: gpubp.costs).

Adding an activation: its functor and one GPUBP_ACTIVATION line in kernels/<name>.cu, its two
formulas and its two kernels' references in gpubp/reference.py, and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import reference
from .errors import GpubpError

# Weight initialisations, as the standard deviation of N(0, std^2) for a layer with n_in inputs
# (biases are drawn N(0, 1) except under "he", where they start at 0).
INITS: dict[str, Callable[[int], float]] = {
    "network2": lambda n_in: n_in ** -0.5,  # network2.py: N(0, 1/n_in)
    "large": lambda n_in: 1.0,  # network.py: N(0, 1)
    "he": lambda n_in: (2.0 / n_in) ** 0.5,  # He et al. 2015 for ReLU: N(0, 2/n_in)
}


@dataclass(frozen=True)
class Activation:
    """f and f' (from the stored output a = f(z)) as NumPy formulas and as kernels.

    forward_kernel: ``bias_<name>(Z, b, rows, cols)``: Z <- f(Z + b), after the GEMM Z = A W^T.
    forward_models_kernel: ``bias_<name>_models(Z, b, rows, cols, rows_per_model, b_stride)``: the
                    same for the K networks of a gpubp.sweeps.stack.Stack, each row block with its model's b.
    delta_kernel:   ``<name>_delta(G, A, n)``: G <- G * f'(z) from A (BP2), or None for an output-only one.
    init:           the weight initialisation networks with this activation get by default.
    row_wise:       the forward kernel works a row per thread (softmax) rather than an element per thread.
    """

    name: str
    f: Callable
    prime_from_output: Callable | None
    init: str
    hidden: bool = True  # may be used in hidden layers
    row_wise: bool = False

    @property
    def forward_kernel(self) -> str:
        return f"bias_{self.name}"

    @property
    def forward_models_kernel(self) -> str:
        return f"bias_{self.name}_models"

    @property
    def delta_kernel(self) -> str | None:
        return f"{self.name}_delta" if self.prime_from_output is not None else None

    @property
    def layer_forward_kernel(self) -> str:
        """The own route's hidden layer: ``layer_forward_<name>`` (kernels/layer.cuh)."""
        return f"layer_forward_{self.name}"

    @property
    def layer_delta_kernel(self) -> str:
        """The own route's BP2 of a hidden layer: ``layer_delta_<name>``."""
        return f"layer_delta_{self.name}"


SIGMOID = Activation("sigmoid", reference.sigmoid, reference.sigmoid_prime_from_output, init="network2")
TANH = Activation("tanh", reference.tanh, reference.tanh_prime_from_output, init="network2")
RELU = Activation("relu", reference.relu, reference.relu_prime_from_output, init="he")
# Softmax is an output layer only: its Jacobian is not diagonal, and the log-likelihood cost's
# delta^L = a - y already accounts for it.
SOFTMAX = Activation("softmax", reference.softmax, None, init="network2", hidden=False, row_wise=True)

ACTIVATIONS = {a.name: a for a in (SIGMOID, TANH, RELU)}  # the hidden-layer choices
DEFAULT = "sigmoid"


def get_activation(name) -> Activation:
    """The hidden-layer activation called ``name`` ("sigmoid" | "tanh" | "relu")."""
    if isinstance(name, Activation) and name.hidden:
        return name
    key = str(name).strip().lower()
    if key not in ACTIVATIONS:
        raise GpubpError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[key]
