"""Routes: how a training step's products and kernels are issued, chosen when a Network is made.

Network.step (gpubp/network.py) runs Nielsen's equations in one order; its route does each move,
on the arrays of a Workspace ``ws`` (A[l] activations, D[l] errors, m rows):

    forward(l, ws)            A[l+1] = f(A[l] W[l]^T + b[l])                    a hidden layer
    output(ws, Y)             A[L] = f_L(A[L-1] W^T + b), D[L-1] = delta^L / m   the output layer, BP1
    delta(l, ws)              D[l-1] = (D[l] W[l]) (.) f'(A[l])                  BP2
    gradient(l, ws)           grad W[l] = D[l]^T A[l], grad b[l] = 1 D[l]        BP4, BP3 into ``grads``
    update(l, ws, optimizer)  W[l] <- decay W[l] - eta D[l]^T A[l], b[l] <- b[l] - eta 1 D[l]:
                              BP4, BP3 and plain SGD's update in the same products, no ``grads``
    fuses(optimizer)          whether ``update`` takes the place of ``gradient`` and the optimizer's kernel
    infer(l, ws)              a layer's forward when evaluating: the BLAS route's on every route, no dropout
    prepare(ws)               what the route binds to a new training workspace (before any capture)

BlasRoute: every product is a GEMM of the backend's BLAS (cuBLAS; NumPy's OpenBLAS on the host),
each followed by one fused elementwise kernel (bias and f; the activation's or the cost's delta).
OwnRoute: our layer kernels (kernels/layer.cuh) do each product with that elementwise work in its
epilogue, 3L - 1 launches a step and nothing from the BLAS; the backend hands out each layer's
launcher with its tile and grid chosen (gpubp.backends.kernel.KernelBackend.layer_kernel).
Dropout (Network(dropout=p)) lives in the kernels that already touch a hidden layer's output: its
forward (bias and f, or layer_forward's epilogue) keeps each output with probability 1 - p and scales
it by 1/(1 - p); BP2 (the activation's delta, or layer_delta's epilogue) draws the same mask again from
Philox (kernels/dropout.cuh). Both read (seed, epoch) from ``net.dropout_key`` and take the step
(``ws.step``) and the layer (l + 1 for A[l+1]) as arguments. Without dropout the plain kernels run.
A gpubp.sweeps.stack.Stack trains on its own BLAS route (StackRoute there), which differs in two
moves: each model's bias, and SGD's update model by model.
"""

from __future__ import annotations

from .backends import names_with
from .backends.kernel import widest_fused_softmax
from .errors import GpubpError


class BlasRoute:
    """The BLAS's products, each with one fused elementwise kernel after it."""

    name = "blas"

    def __init__(self, net):
        self.net, self.be = net, net.be
        be, dt = net.be, net.dtype
        self.bias_act = [be.kernel(a.forward_kernel, dt) for a in net.layer_activations]
        self.act_delta = be.kernel(net.activation.delta_kernel, dt)
        self.cost_delta = be.kernel(net.cost.delta_kernel, dt)
        self.dropout = net.dropout  # p of every hidden layer's output (0: the plain kernels)
        if self.dropout:
            self.bias_act_drop = [be.kernel(a.forward_kernel + "_drop", dt) for a in net.layer_activations[:-1]]
            self.act_delta_drop = be.kernel(net.activation.delta_kernel + "_drop", dt)
        # Views made once, so a step makes none: W^T for the forward GEMM, b and dC/db as (1, n) rows.
        self.weights_T = [w.swapaxes(-1, -2) for w in net.weights]
        self.bias_rows = [b[..., None, :] for b in net.biases]
        self.grad_bias_rows = [g[..., None, :] for g in net.grad_biases]

    def prepare(self, ws) -> None:
        """Nothing ahead: the update's prepared products (``plans``) are made by the first step,
        which gives them layer 0's input."""

    def fuses(self, optimizer) -> bool:
        return optimizer is not None and optimizer.fused

    def forward(self, l, ws) -> None:
        if not self.dropout:
            return self.infer(l, ws)
        Z = ws.A[l + 1]
        self.be.matmul(ws.A[l], self.weights_T[l], out=Z, tf32=self.net.tf32)  # z = a W^T (+ b below)
        m, n = Z.shape
        self.bias_act_drop[l](Z.size, Z, self.net.biases[l], m, n, self.net.dropout_key, ws.step, l + 1,
                              self.dropout)  # a = f(z + b) * mask / (1 - p), fused

    def infer(self, l, ws) -> None:
        self.be.matmul(ws.A[l], self.weights_T[l], out=ws.A[l + 1], tf32=self.net.tf32)  # z = a W^T (+ b below)
        self.bias_activate(l, ws.A[l + 1])  # a = f(z + b), fused

    def bias_activate(self, l, Z) -> None:
        """Z (m, n_{l+1}) <- f(Z + b[l]): layer l's bias and activation in one kernel."""
        m, n = Z.shape
        self.bias_act[l](m if self.net.layer_activations[l].row_wise else Z.size, Z, self.net.biases[l], m, n)

    def output(self, ws, Y) -> None:
        self.infer(self.net.L - 1, ws)  # the output layer is never dropped
        n = ws.D[-1].size
        self.cost_delta(n, ws.D[-1], ws.A[-1], Y, n, 1.0 / ws.m)  # BP1, over m: the mean cost

    def delta(self, l, ws) -> None:
        D = ws.D
        self.be.matmul(D[l], self.net.weights[l], out=D[l - 1], tf32=self.net.tf32)  # delta W ...
        n = D[l - 1].size
        if self.dropout:  # ... (.) f'(z) (.) mask / (1 - p), f' from the undropped A[l]
            self.act_delta_drop(n, D[l - 1], ws.A[l], n, self.net.dropout_key, ws.step, l, self.dropout)
        else:
            self.act_delta(n, D[l - 1], ws.A[l], n)  # ... (.) f'(z), from a = A[l]

    def gradient(self, l, ws) -> None:
        net = self.net
        self.be.matmul(ws.DT[l], ws.A[l], out=net.grad_weights[l], tf32=net.tf32)  # BP4: delta^T a
        self.be.matmul(ws.ones, ws.D[l], out=self.grad_bias_rows[l])  # BP3: sum over rows (a sum: not TF32)

    def update(self, l, ws, optimizer) -> None:
        if self.net.tf32:  # the products read TF32 operands: each through gemm
            self.be.gemm(ws.DT[l], ws.A[l], out=self.net.weights[l], alpha=-optimizer.eta, beta=optimizer.decay,
                         tf32=True)
            self.be.gemm(ws.ones, ws.D[l], out=self.bias_rows[l], alpha=-optimizer.eta, beta=1.0)
            return
        update_w, update_b = self.plans(ws)[l]  # prepared once per workspace (a step's input varies)
        update_w(-optimizer.eta, optimizer.decay, ws.A[0] if l == 0 else None)
        update_b(-optimizer.eta, 1.0)

    def plans(self, ws) -> list:
        """Per layer, the fused update's two products (W <- decay W - eta D^T A, b <- b - eta 1 D)
        prepared once for this workspace: their arrays never change, but for layer 0's input."""
        if ws.route is None:
            be = self.be
            ws.route = [(be.gemm_plan(ws.DT[l], ws.A[l], self.net.weights[l]),
                         be.gemm_plan(ws.ones, ws.D[l], self.bias_rows[l])) for l in range(self.net.L)]
        return ws.route


class OwnRoute(BlasRoute):
    """Our layer kernels: each product with its layer's elementwise work in the epilogue."""

    name = "own"

    def prepare(self, ws) -> None:
        """The layer kernels for batches of ws.m rows, each bound to its tile and grid by the backend:
        forward[l] and delta[l] for the hidden layers, update[l] for every layer, and the output's."""
        net, be, m, dt = self.net, self.be, ws.m, self.net.dtype
        act, drop = net.activation, "_drop" if self.dropout else ""
        ws.route = {"forward": [be.layer_kernel(act.layer_forward_kernel + drop, m, o, dt) for o, _ in net.shapes[:-1]],
                    "output": be.layer_kernel(net.cost.output_kernel, m, net.sizes[-1], dt),
                    "delta": [be.layer_kernel(act.layer_delta_kernel + drop, m, net.sizes[l], dt)
                              for l in range(1, net.L)],
                    "update": [be.layer_kernel("layer_update", o, i, dt) for o, i in net.shapes]}

    def forward(self, l, ws) -> None:
        net = self.net
        args = (ws.A[l + 1], ws.A[l], net.weights[l], net.biases[l], ws.m, net.sizes[l], net.sizes[l + 1],
                int(net.tf32))
        ws.route["forward"][l](*args, *self.mask(l + 1, ws))

    infer = BlasRoute.infer

    def mask(self, layer, ws) -> tuple:
        """The _drop kernels' last arguments for ``layer``'s output (key, step, layer, p); none without dropout."""
        return (self.net.dropout_key, ws.step, layer, self.dropout) if self.dropout else ()

    def output(self, ws, Y) -> None:
        net, A, L = self.net, ws.A, self.net.L
        ws.route["output"](A[L], ws.D[L - 1], A[L - 1], net.weights[L - 1], net.biases[L - 1], Y, ws.m,
                           net.sizes[L - 1], net.sizes[L], 1.0 / ws.m, int(net.tf32))

    def delta(self, l, ws) -> None:
        net, (n_out, n_in) = self.net, self.net.shapes[l]
        ws.route["delta"][l - 1](ws.D[l - 1], ws.D[l], net.weights[l], ws.A[l], ws.m, n_out, n_in, int(net.tf32),
                                 *self.mask(l, ws))

    def gradient(self, l, ws) -> None:
        net, (n_out, n_in) = self.net, self.net.shapes[l]
        ws.route["update"][l](net.grad_weights[l], net.grad_biases[l], ws.D[l], ws.A[l], ws.m, n_out, n_in, 1.0, 0.0,
                              0.0, int(net.tf32))

    def update(self, l, ws, optimizer) -> None:
        net, (n_out, n_in) = self.net, self.net.shapes[l]
        ws.route["update"][l](net.weights[l], net.biases[l], ws.D[l], ws.A[l], ws.m, n_out, n_in, -optimizer.eta,
                              optimizer.decay, 1.0, int(net.tf32))


ROUTES = {r.name: r for r in (BlasRoute, OwnRoute)}


def route_name(net, gemm) -> str:
    """The route ``net`` takes: ``gemm`` ("blas" | "own"), or None for the backend's preference
    where the network allows it; a one-line error where it cannot take the one asked for."""
    softmax_too_wide = net.cost.output.row_wise and net.sizes[-1] > widest_fused_softmax()
    if gemm is None:  # the backend's preference, where this network can take it
        gemm = "blas" if softmax_too_wide else net.be.preferred_gemm
    if gemm not in ROUTES:
        raise GpubpError(f"unknown gemm route {gemm!r}: choose blas or own")
    if gemm == "own" and not net.be.compiles_kernels:
        raise GpubpError(f"gemm='own' runs our layer kernels, which the {net.be.name} backend does not "
                         f"run: use the {names_with('compiles_kernels')} backend, or gemm='blas'")
    if gemm == "own" and softmax_too_wide:
        raise GpubpError(f"gemm='own' fuses softmax into the output layer for up to {widest_fused_softmax()} "
                         f"outputs, not {net.sizes[-1]}: use gemm='blas'")
    return gemm
