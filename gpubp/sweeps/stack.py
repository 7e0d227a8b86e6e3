"""Stack: K networks of one shape trained at once, one model per seed (gpubp.sweep's engine).

Shapes, in words (network.py's, with the model axis first):
    K            models in the stack
    params       (K, P)               each model's flat parameters, every W then every b
    W[l], b[l]   (K, n_out, n_in), (K, n_out)   views into params (model stride P)
    A[l], D[l]   (K, m, n_l)          every model's activations and errors for its own mini-batch

The maths is Network's, run unchanged on these arrays: each product is ONE batched GEMM over the
K models (numpy.matmul on stacked arrays; a strided-batched cuBLAS call on the GPU), the cost's and
the activation's delta kernels work elementwise over all K models at once, and the two things that
differ per model take the model's index: the bias (``bias_<act>_models``, whose row block k adds
model k's b) and the update (``<optimizer>_update_models``, with model k's eta and lambda).
On a GPU, launches and GEMMs per step therefore do not grow with K.

Both differences live in the stack's route, StackRoute (gpubp/routes.py's BLAS route with two
moves of its own), which a Stack is built with: Network's equations call it as they call any route.

Plain SGD: one network folds its update into the BP3/BP4 products (W <- decay W - eta D^T A, one
GEMM with alpha and beta). A batched product has one alpha and one beta for all K models, so on a
backend that runs our kernels a stack computes the gradient in one batched product and updates
with sgd_update_models; on the numpy backend, whose kernels are NumPy references, it folds each
model's update into that model's own product, prepared once, as one network does.

Model k starts from exactly Network(seed=seeds[k])'s parameters and shuffles with its own
generator, seeded as Network(seed=seeds[k]) seeds its own, so it trains as that network would,
step for step: on NumPy the same BLAS calls on the same numbers (bit for bit, as the tests check);
on a GPU within rounding (the update is not folded there).
"""

from __future__ import annotations

import numpy as np

from ..errors import GpubpError
from ..network import Network
from ..routes import BlasRoute


class StackRoute(BlasRoute):
    """The BLAS route of a Stack: each model's bias in one kernel for all K models, and plain SGD's
    update folded into each model's own products where the backend's kernels are NumPy's."""

    def __init__(self, stack):
        super().__init__(stack)
        be, dt = stack.be, stack.dtype
        self.bias_act_models = [be.kernel(a.forward_models_kernel, dt) for a in stack.layer_activations]
        flat = stack.params.reshape(-1)
        # b[l] of model 0 onwards, as one contiguous 1-D view: the kernel steps P from model to model
        offsets = [stack.n_weights + sum(o for o, _ in stack.shapes[:l]) for l in range(stack.L)]
        self.bias_from = [flat[k:] for k in offsets]
        # one BLAS call per model and layer is a microsecond on the host, but K launches on a device
        self.folds_per_model = not be.compiles_kernels

    def fuses(self, group) -> bool:
        return group is not None and group.fused and self.folds_per_model

    def bias_activate(self, l, Z) -> None:
        """Z (K, m, n_{l+1}) <- f(Z + b[l] of each row block's model), one kernel for all K models."""
        K, m, n = Z.shape
        rows = K * m
        work = rows if self.net.layer_activations[l].row_wise else Z.size
        self.bias_act_models[l](work, Z, self.bias_from[l], rows, n, m, self.net.n_params)

    def update(self, l, ws, group) -> None:
        """Layer l's BP4 and BP3 with each model's own SGD update in them: 2K prepared host products."""
        for k, (update_w, update_b) in enumerate(self.plans(ws)[l]):
            o = group.optimizers[k]
            update_w(-o.eta, o.decay, ws.A[0][k] if l == 0 else None)
            update_b(-o.eta, 1.0)

    def plans(self, ws) -> list:
        """Per layer and model, the fused update's two products, prepared once for this workspace."""
        if ws.route is None:
            be, s = self.be, self.net
            ws.route = [[(be.gemm_plan(ws.DT[l][k], ws.A[l][k], s.weights[l][k]),
                          be.gemm_plan(ws.ones, ws.D[l][k], self.bias_rows[l][k])) for k in range(s.K)]
                        for l in range(s.L)]
        return ws.route


class Stack(Network):
    """K networks of one shape, one per seed: ``step``, ``measure_models`` and ``network(k)``.

    Args as Network's, but ``seeds`` (one per model; each seeds the model's weights and its
    ``rngs[k]``, the shuffle's generator) instead of seed, and only the BLAS route.
    """

    def __init__(self, sizes, seeds, cost="quadratic", activation="sigmoid", backend=None, dtype="float32",
                 init="default"):
        try:
            self.seeds = [int(s) for s in seeds]
        except (TypeError, ValueError):
            raise GpubpError(f"seeds must be integers, got {seeds!r}") from None
        if not self.seeds or min(self.seeds) < 0:
            raise GpubpError(f"a stack needs one or more non-negative seeds, got {self.seeds}")
        self.lead = (len(self.seeds),)
        super().__init__(sizes, cost=cost, activation=activation, backend=backend, dtype=dtype, seed=self.seeds[0],
                         init=init, gemm="blas")  # batched products: the blas route, whatever the backend prefers
        self.K = len(self.seeds)
        self.rngs = [np.random.default_rng(s) for s in self.seeds]  # as Network(seed=s).rng
        self.route = StackRoute(self)

    def initial_params(self, seed=None) -> np.ndarray:
        """(K, P): model k's starting parameters are Network(seed=seeds[k])'s; (P,) for a given seed."""
        one = super().initial_params
        return one(seed) if seed is not None else np.stack([one(s) for s in self.seeds])

    def measure(self, X, y, lmbda=0.0, cost=True, accuracy=True) -> list[dict]:
        """Network.measure for each model, on the same (X, y) (lmbda: one, or one per model): K dicts."""
        return self.measure_models([(X, y, lmbda, cost, accuracy)])[0]

    def network(self, k: int) -> Network:
        """Model k as a Network of its own (a copy of its parameters, its seed, its shuffle state)."""
        net = Network(self.sizes, cost=self.cost, activation=self.activation, backend=self.be, dtype=self.dtype,
                      seed=self.seeds[k], init=self.init)
        net.set_params(self.be.to_host(self.params[k]))
        net.rng.bit_generator.state = self.rngs[k].bit_generator.state
        net.epochs_trained = self.epochs_trained
        return net

    def config(self) -> dict:
        cfg = super().config()
        del cfg["seed"]
        return {**cfg, "seeds": list(self.seeds)}

    def __repr__(self) -> str:
        return f"Stack of {self.K} x " + super().__repr__()
