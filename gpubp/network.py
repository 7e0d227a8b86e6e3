"""Network: Nielsen's fully connected network in matrix form over a whole mini-batch.

Shapes, in words (rows are samples):
    L            number of weight layers, len(sizes) - 1; sizes = [n_0, n_1, ..., n_L]
    m            rows in the mini-batch
    n_l          width of layer l (n_0 = 784 pixels, n_L = 10 digits)
    W[l]         (n_{l+1}, n_l)  w_jk: from neuron k of layer l to neuron j of layer l+1
    b[l]         (n_{l+1},)
    A[l]         (m, n_l)        activations; A[0] = X, A[l+1] = f(A[l] W[l]^T + b[l])
    D[l]         (m, n_{l+1})    the error delta of layer l+1, divided by m

f is the hidden layers' activation (sigmoid, tanh or relu); the output layer's is the cost's
(sigmoid, or softmax for log-likelihood). Backpropagation, Nielsen's four equations with rows
as samples:
    BP1  delta^L = grad_a C (.) f'(z^L)                   the cost's delta kernel (one fused kernel)
    BP2  delta^l = (delta^{l+1} W^{l+1}) (.) f'(z^l)      GEMM, then the activation's delta kernel
    BP3  dC/db^l = sum over rows of delta^l               GEMM: ones(1, m) @ D
    BP4  dC/dW^l = delta^l^T a^{l-1}                      GEMM: D^T @ A
f'(z) is computed from the stored activation (a(1-a) for sigma), so z is never kept. delta^L is
scaled by 1/m, so every gradient is that of the MEAN cost over the m rows.

Inverted dropout (``dropout=p``, ``input_dropout=q``), at training time only: A[l] of every hidden
layer is f(z) (.) r^l, r = 1/(1-p) for a kept unit and 0 for a dropped one, and the step's inputs
A[0] = X (.) r^0 (with q); BP2 becomes delta^l = (delta^{l+1} W^{l+1}) (.) f'(z^l) (.) r^l. The masks
are never stored: every kernel draws them from Philox (kernels/philox.cuh) by (seed, epoch, step,
layer, element), so every backend draws the same ones. feedforward, evaluate and measure use none.

All weights and biases live in ONE contiguous buffer ``params`` (every W first, then every b);
``weights[l]`` and ``biases[l]`` are writable views into it, and the gradients likewise live in
``grads``, so an optimizer updates every parameter in one kernel. Plain SGD does not even need
``grads``: BP3 and BP4 write the update straight into ``params`` (W <- decay*W - eta*D^T A, one
GEMM with alpha and beta).

Two routes run these equations (``gemm=``, gpubp/routes.py): "blas" does every product in the
BLAS (cuBLAS on the GPU) followed by one fused elementwise kernel; "own" runs our layer kernels
(kernels/layer.cuh), which do each product with the layer's elementwise work in its epilogue,
3L - 1 launches a step and nothing from cuBLAS. Workspaces are made the first time a batch size
is seen, so after the first step a training step allocates nothing, copies nothing and waits
for nothing.

Every array above may carry leading model axes (``lead``): () for one network, (K,) for the K
networks of a gpubp.sweeps.stack.Stack, whose parameters are one (K, P) buffer, W[l] (K, n_out, n_in)
and A[l] (K, m, n_l); the products are then batched and the same equations run unchanged.
"""

from __future__ import annotations

import numpy as np

from . import checkpoint
from .activations import INITS, get_activation
from .backends import get_backend
from .costs import get_cost
from .errors import GpubpError, ModelFileError
from .optimizers import SGD, Optimizer, make_optimizer
from .routes import ROUTES, route_name

EVAL_ROWS = 10_000  # rows per forward pass when evaluating a whole data set
MAX_PARAMETERS = 1_000_000_000  # 4 GB of float32 for the weights alone; larger is a typo, not a model
INIT_CHOICES = ("default", *INITS)
GEMM_ROUTES = tuple(ROUTES)


def count_parameters(sizes) -> int:
    """Weights and biases of a network with these layer widths: sum of n_out*n_in + n_out."""
    return sum(o * i + o for o, i in zip(sizes[1:], sizes[:-1]))


def check_sizes(sizes) -> list[int]:
    """``sizes`` as a list of ints: two or more positive widths, at most MAX_PARAMETERS parameters
    (checked before anything is allocated)."""
    try:
        out = [int(s) for s in sizes]
    except (TypeError, ValueError):
        raise GpubpError(f"sizes must be integers like 784,30,10 (got {sizes!r})") from None
    if len(out) < 2 or min(out) < 1 or list(sizes) != out:
        raise GpubpError(f"sizes must be two or more positive integers, e.g. 784,30,10 (got {list(sizes)})")
    n = count_parameters(out)
    if n > MAX_PARAMETERS:
        raise GpubpError(f"sizes {','.join(map(str, out))} make {n:,} parameters; gpubp allows at most "
                         f"{MAX_PARAMETERS:,} (4 GB in float32): check the layer widths")
    return out


def check_settings(dtype, init, tf32, seed) -> tuple:
    """(dtype, tf32, seed) of a Network as it keeps them, or a one-line error; seed None draws one."""
    if init not in INIT_CHOICES:
        raise GpubpError(f"unknown init {init!r}: choose one of {', '.join(INIT_CHOICES)}")
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise GpubpError(f"dtype {dtype} is not supported: use float32 or float64")
    if tf32 and dt != np.float32:
        raise GpubpError(f"tf32 is a float32 format: it cannot apply to a {dt.name} network")
    drawn = int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else int(seed)
    if drawn < 0:
        raise GpubpError(f"seed must be a non-negative integer, got {seed}")
    return dt, bool(tf32), drawn


class Workspace:
    """Activations A[1..L], errors D[0..L-1] (and their transposed views) and a row of ones, for
    batches of m rows (each array with the leading model axes ``lead``); made once per batch size,
    so a step allocates nothing."""

    def __init__(self, be, sizes, m, dtype, backward, lead=()):
        self.m = m
        self.A = [None] + [be.empty((*lead, m, n), dtype) for n in sizes[1:]]
        self.D = [be.empty((*lead, m, n), dtype) for n in sizes[1:]] if backward else None
        self.DT = [d.swapaxes(-1, -2) for d in self.D] if backward else None
        self.ones = None
        if backward:
            self.ones = be.empty((1, m), dtype)
            self.ones.fill(1)
        self._targets = None
        self.step = 0  # the step of the epoch being trained (its dropout masks)
        self.inputs = None  # under input dropout: the step's dropped inputs (Network.workspace)
        self.route = None  # what the network's route made for this batch size (gpubp.routes)

    def targets(self, be, n_out, dtype):
        """A one-hot target buffer (m, n_out) for evaluation, made on first use."""
        if self._targets is None:
            self._targets = be.empty((self.m, n_out), dtype)
        return self._targets


class Network:
    """A fully connected network trained by backprop.

    Args:
        sizes: neurons per layer, e.g. [784, 30, 10].
        cost: "quadratic" | "cross_entropy" | "log_likelihood" (softmax output layer).
        activation: hidden layers' "sigmoid" (default) | "tanh" | "relu".
        backend: "auto" | "numpy" | "cupy" | "emulated" | "native" or a Backend (default: $GPUBP_BACKEND, auto).
        dtype: "float32" (default) or "float64".
        seed: one seed for the weights and, unless ``sgd(seed=...)`` gives another, the shuffling;
            None draws one (kept in ``.seed``, so the run can be repeated).
        init: "default" (the activation's: network2's N(0, 1/n_in) for sigmoid and tanh, He's
            N(0, 2/n_in) with zero biases for relu), or one of "network2", "large" (network.py's
            N(0, 1)), "he". Biases are N(0, 1) except under "he".
        gemm: the route of training steps (``.route``, gpubp/routes.py): "blas" (BLAS products, then
            fused elementwise kernels) or "own" (our layer kernels; the cupy, emulated or native backend);
            None (default): own on native where the network allows it, blas elsewhere. Evaluation's
            forward pass always runs through the BLAS.
        tf32: float32 products read their inputs as TF32 (10-bit mantissa): cuBLAS's tensor-core
            math on a GPU; our layer kernels and the CPU backends round the inputs (so TF32's effect
            on accuracy is measured anywhere). Off by default.
        dropout: p, the probability that a hidden unit's output is dropped in a training step
            (inverted dropout: kept outputs are scaled by 1/(1-p)); 0 (default) trains without.
        input_dropout: q, the same for the inputs of a training step (Srivastava et al. keep 0.8: q = 0.2).
    """

    lead: tuple = ()  # leading model axes of every parameter and activation array: (K,) in a Stack

    def __init__(self, sizes, cost="quadratic", activation="sigmoid", backend=None, dtype="float32",
                 seed=None, init="default", gemm=None, tf32=False, dropout=0.0, input_dropout=0.0):
        self.sizes = check_sizes(sizes)
        self.cost, self.activation = get_cost(cost), get_activation(activation)
        self.dtype, self.tf32, self.seed = check_settings(dtype, init, tf32, seed)
        self.dropout, self.input_dropout = check_dropouts(dropout, input_dropout, self.lead, self.seed)
        self.init = self.activation.init if init == "default" else init
        self.be = get_backend(backend)
        self.xp = self.be.xp
        self.gemm = route_name(self, gemm)
        self.rng = np.random.default_rng(self.seed)  # the shuffle's generator (gpubp.training draws from it)
        self.optimizer: Optimizer | None = None  # the last one trained with, and its state
        self.epochs_trained = 0
        self.run_settings: dict = {}  # augmentation, max-norm, schedule of the last run (gpubp.training keeps it)
        self.mini_batch_size: int | None = None  # the last training run's, so that a resumed run keeps it

        self.L = len(self.sizes) - 1
        self.shapes = list(zip(self.sizes[1:], self.sizes[:-1]))  # W[l]: (n_out, n_in)
        self.n_weights = sum(o * i for o, i in self.shapes)
        self.n_params = count_parameters(self.sizes)
        self.params, self.grads = (flat_buffer(self.be, self.lead, self.n_params, self.dtype) for _ in range(2))
        self.weights, self.biases = layer_views(self.shapes, self.n_weights, self.params)
        self.grad_weights, self.grad_biases = layer_views(self.shapes, self.n_weights, self.grads)
        self.layer_activations = [self.activation] * (self.L - 1) + [self.cost.output]
        # (seed, epoch) of the dropout masks, on the device: uploaded once an epoch (begin_epoch)
        self.dropout_key = self.be.empty((2,), np.uint64) if self.dropout or self.input_dropout else None
        self.dropout_epoch, self.steps_taken = 0, 0  # the epoch uploaded; steps since (when step() is not told)
        self.begin_epoch(0)
        self.route = ROUTES[self.gemm](self)  # how a step's products and kernels are issued
        self.set_params(self.initial_params())
        self._ws: dict[tuple, Workspace] = {}

    def initial_params(self, seed=None) -> np.ndarray:
        """The starting parameters (P,) on the host: weights N(0, std(n_in)^2) by ``init``, biases
        N(0, 1) (0 under "he"), drawn in float64 from the seed (default: this network's), so every
        backend and dtype starts from the same numbers."""
        return draw_params(self.shapes, self.n_weights, self.n_params, self.init, self.seed if seed is None else seed)

    def set_params(self, flat) -> None:
        """Copy a flat host vector (every W, then every b; (*lead, P) for a stack) into the parameter buffer."""
        flat = np.asarray(flat)
        if flat.shape != (*self.lead, self.n_params):
            raise GpubpError(f"expected {(*self.lead, self.n_params)} parameters for sizes {self.sizes}, "
                             f"got {flat.shape}")
        self.params[...] = self.be.to_device(flat, self.dtype)

    def get_params(self) -> np.ndarray:
        """The flat parameter vector, on the host."""
        return self.be.to_host(self.params)

    # Inputs: what training and the bench hand the network, moved to the device once

    def to_device(self, X):
        """Inputs X (m, n_0) as a C-contiguous device array of the network's dtype (no copy when it is one)."""
        X = on_device(self.be, X, self.dtype)
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise GpubpError(f"inputs must have shape (m, {self.sizes[0]}), got {tuple(X.shape)}")
        return X

    def labels(self, y, m=None):
        """Integer labels (m,) in [0, n_L) as an int64 device array. Host labels are range-checked
        before they go up; labels already on the device are trusted (a check would cost a sync)."""
        return device_labels(self.be, y, self.sizes[-1], m)

    def one_hot(self, labels):
        """One-hot rows (m, n_L) of device labels (m,), made on the device (a new array)."""
        Y = self.be.empty((labels.shape[0], self.sizes[-1]), self.dtype)
        self.be.kernel("one_hot", self.dtype)(Y.size, Y, labels, Y.shape[0], Y.shape[1])
        return Y

    def targets(self, Y, m):
        """Y as one-hot device rows (m, n_L); integer labels (m,) are one-hot encoded on the device."""
        if np.ndim(Y) == 1:
            return self.one_hot(self.labels(Y, m))
        return device_targets(self.be, Y, m, self.sizes[-1], self.dtype)

    def workspace(self, m: int, backward: bool = True) -> Workspace:
        """The workspace for batches of m rows (made on first use, with what the route binds to it;
        under input dropout, the buffer of a step's dropped inputs)."""
        key = (m, backward)
        if key not in self._ws:
            ws = self._ws[key] = Workspace(self.be, self.sizes, m, self.dtype, backward, self.lead)
            if backward:
                self.route.prepare(ws)
                if self.input_dropout:
                    ws.inputs = self.be.empty((m, self.sizes[0]), self.dtype)
        return self._ws[key]

    def begin_epoch(self, epoch: int) -> None:
        """Set the epoch (counted from 0 over the network's life) whose dropout masks the next steps
        draw: (seed, epoch) go up to ``dropout_key`` in one copy, outside any captured graph, so the
        same graph replays each epoch with its own masks. Nothing happens without dropout."""
        self.dropout_epoch, self.steps_taken = int(epoch), 0
        if self.dropout_key is not None:
            self.be.upload(self.dropout_key, np.array([self.seed, self.dropout_epoch], dtype=np.uint64))

    # Forward and backward: Nielsen's equations, each move issued by the route

    def _forward(self, X, ws):
        """Fill ws.A with every layer's activations for X (m, n_0) (or (*lead, m, n_0)); returns A[L]."""
        ws.A[0] = X
        for l in range(self.L):
            self.route.infer(l, ws)  # a = f(a W^T + b)
        return ws.A[self.L]

    def _train_pass(self, X, Y, optimizer=None, step=None) -> None:
        """Forward, BP1-BP4 on ws.D (each delta over m: the mean cost), and, given an optimizer, its
        update. With none, or one not fused, the gradient goes to ``grads``; a fused one (plain SGD)
        writes its update into ``params`` inside the BP3/BP4 products, and no gradient is stored.
        ``step``: the step of the epoch whose dropout masks it draws (None: the next one)."""
        route, L = self.route, self.L
        ws = self.workspace(X.shape[-2])
        ws.step = self.steps_taken if step is None else int(step)
        self.steps_taken = ws.step + 1
        ws.A[0] = X
        if self.input_dropout:  # the step's inputs, dropped into a buffer of its own (X is never changed)
            ws.A[0] = drop_inputs(self, ws, X)
        for l in range(L - 1):
            route.forward(l, ws)  # a^{l+1} = f(a^l W^T + b)
        route.output(ws, Y)  # a^L, and BP1: delta^L = grad_a C (.) f'(z^L)
        fused = route.fuses(optimizer)
        for l in range(L - 1, -1, -1):
            if l > 0:
                route.delta(l, ws)  # BP2, before this layer's update changes W[l]
            if fused:
                route.update(l, ws, optimizer)  # BP3 and BP4 as network2's update of W[l], b[l]
            else:
                route.gradient(l, ws)  # BP3: dC/db = sum_rows delta; BP4: dC/dW = delta^T a
        if optimizer is not None and not fused:
            optimizer.update()

    def step(self, X, Y, optimizer: Optimizer, step: int | None = None) -> None:
        """One training step on device arrays X (m, n_0) and one-hot Y (m, n_L): forward, BP1-BP4 and
        the optimizer's update of every parameter. After a batch size's first step, nothing is
        allocated, copied or synchronized (gpubp.training gives it slices of the device data).
        ``step``: its index in the epoch (begin_epoch), which picks its dropout masks; None: the step
        after the last one (0 after begin_epoch)."""
        self._train_pass(X, Y, optimizer.bind(self), step)

    def feedforward(self, X):
        """The network's output for X (m, n_0): a new device array (m, n_L)."""
        X = self.to_device(X)
        return self._forward(X, self.workspace(X.shape[0], False)).copy()

    def backprop(self, X, Y, step=None):
        """Gradient of the MEAN cost over the m rows (no L2 term); under dropout, of the network with
        step ``step``'s masks (None: the next step's) of the epoch set by begin_epoch.

        X (m, n_0); Y (m, n_L) one-hot (or (m,) integer labels). Returns (nabla_b, nabla_w):
        lists of L device arrays shaped like ``biases`` and ``weights`` (copies).
        """
        X = self.to_device(X)
        self._train_pass(X, self.targets(Y, X.shape[0]), step=step)
        return [g.copy() for g in self.grad_biases], [g.copy() for g in self.grad_weights]

    def update_mini_batch(self, X, Y, eta, lmbda=0.0, n=None) -> None:
        """One SGD step on one mini-batch, network2's rule with L2 on the weights only:
        w <- (1 - eta*lmbda/n) w - eta * mean gradient;  b <- b - eta * mean gradient.

        X (m, n_0); Y (m, n_L) one-hot or (m,) labels; n = training-set size (needed when lmbda > 0).
        """
        X = self.to_device(X)
        self.step(X, self.targets(Y, X.shape[0]), SGD(eta, lmbda, n))

    # Evaluation

    def measure(self, X, y, lmbda=0.0, cost=True, accuracy=True) -> dict:
        """Total cost (mean over rows, plus network2's L2 term 0.5*lmbda/n*sum w^2) and accuracy of
        (X (n, n_0), y (n,) labels), computed on the device and brought back in one copy."""
        return self.measure_all([(X, y, lmbda, cost, accuracy)])[0]

    def measure_all(self, sets) -> list[dict]:
        """``measure`` for several data sets [(X, y, lmbda, cost, accuracy), ...], every sum kept
        on the device in float64 and all of them brought back in ONE copy. With neither cost nor
        accuracy asked for, a set still gets "finite": whether every parameter is finite."""
        return [models[0] for models in self.measure_models(sets)]

    def measure_models(self, sets) -> list[list[dict]]:
        """``measure_all`` for every model: per set, [one dict] for a network, K for a stack (whose
        lmbda may be one value per model). Still one copy back for everything."""
        return measure_sets(self, sets)

    def evaluate(self, X, y) -> float:
        """Fraction of rows of X (n, n_0) whose largest output is the label y (n,)."""
        return self.measure(X, y, cost=False)["accuracy"]

    def total_cost(self, X, y, lmbda=0.0) -> float:
        """Mean cost over (X, y) plus the L2 term 0.5*(lmbda/n)*sum ||w||^2, as network2's total_cost."""
        return self.measure(X, y, lmbda=lmbda, accuracy=False)["cost"]

    # Training and files

    def sgd(self, training_data, epochs=30, mini_batch_size=None, eta=None, lmbda=None,
            evaluation_data=None, **options):
        """Mini-batch training (mini_batch_size 10 and lmbda 0 unless given, or the saved run's with
        resume=True); see gpubp.training.train for every option. Returns the per-epoch History."""
        from .training import train

        return train(self, training_data, epochs=epochs, mini_batch_size=mini_batch_size, eta=eta,
                     lmbda=lmbda, evaluation_data=evaluation_data, **options)

    def config(self) -> dict:
        """What rebuilds this network (with ``Network(**config)``), as JSON-ready values."""
        return {"sizes": list(self.sizes), "cost": self.cost.name, "activation": self.activation.name,
                "dtype": self.dtype.name, "seed": self.seed, "init": self.init, "gemm": self.gemm, "tf32": self.tf32,
                "dropout": self.dropout, "input_dropout": self.input_dropout}

    def save(self, path) -> None:
        """Write the model, its optimizer's state and its training progress to ``path`` (.npz, no
        pickle), atomically: a crash leaves the old file or none, never half of one."""
        save_network(self, path)

    @classmethod
    def load(cls, path, backend=None, gemm=None, tf32=None) -> Network:
        """The network saved in ``path``, with its optimizer state and training progress when the
        file has them; ModelFileError if it is not a whole, consistent gpubp model."""
        return load_network(cls, path, backend, gemm, tf32)

    def __repr__(self) -> str:
        drop = "".join(f", {k}={getattr(self, k):g}" for k in ("dropout", "input_dropout") if getattr(self, k))
        return (f"Network({self.sizes}, cost={self.cost.name!r}, activation={self.activation.name!r}, "
                f"dtype={self.dtype.name!r}, backend={self.be.name!r}, gemm={self.gemm!r}{drop})")


def drop_inputs(net, ws, X):
    """Input dropout of a step: X's rows with q's masks (layer 0 of step ws.step) into ws.inputs, returned."""
    n = X.size
    net.be.kernel("dropout", net.dtype)(n, ws.inputs, X, n, net.dropout_key, ws.step, 0, net.input_dropout)
    return ws.inputs


def check_dropouts(dropout, input_dropout, lead, seed) -> tuple[float, float]:
    """(p, q) checked: probabilities in [0, 1), one network (not a stack), a seed below 2^64 (the masks' key)."""
    p, q = check_dropout(dropout, "dropout"), check_dropout(input_dropout, "input_dropout")
    if (p or q) and lead:
        raise GpubpError("dropout trains one network at a time, not a stack: train each model on its own")
    if (p or q) and seed >= 2**64:
        raise GpubpError(f"dropout's masks are keyed by the seed, which must be below 2^64 (got {seed})")
    return p, q


def check_dropout(p, what) -> float:
    """A dropout probability as a float in [0, 1), or a one-line error."""
    try:
        out = float(p)
    except (TypeError, ValueError):
        raise GpubpError(f"{what} must be a probability in [0, 1), got {p!r}") from None
    if not 0.0 <= out < 1.0:
        raise GpubpError(f"{what} must be a probability in [0, 1) (the share of units dropped), got {p!r}")
    return out


def flat_buffer(be, lead, n_params, dtype):
    """A (*lead, P) device buffer for every parameter (or gradient), or a one-line error when memory runs out."""
    try:
        return be.empty((*lead, n_params), dtype)
    except MemoryError:
        raise GpubpError(f"not enough memory for {n_params:,} parameters of {dtype}"
                         + (f" times {lead[0]} models" if lead else "")) from None


def draw_params(shapes, n_weights, n_params, init, seed) -> np.ndarray:
    """Network.initial_params: every W from N(0, INITS[init](n_in)^2), then every b from N(0, 1) (0 under
    "he"), in float64 from one generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    flat = np.empty(n_params)
    ws, bs = layer_views(shapes, n_weights, flat)
    for w, (o, i) in zip(ws, shapes):
        w[...] = rng.standard_normal((o, i)) * INITS[init](i)
    for b, (o, _) in zip(bs, shapes):
        b[...] = 0.0 if init == "he" else rng.standard_normal(o)
    return flat


def layer_views(shapes, n_weights, flat):
    """Lists of W[l] (*lead, n_out, n_in) and b[l] (*lead, n_out) views into one buffer (*lead, P):
    every W (shapes[l] = (n_out, n_in)), then from ``n_weights`` on every b."""
    lead, ws, bs, k = flat.shape[:-1], [], [], 0
    for o, i in shapes:
        ws.append(flat[..., k:k + o * i].reshape(*lead, o, i))
        k += o * i
    for o, _ in shapes:
        bs.append(flat[..., k:k + o])
        k += o
    return ws, bs


def device_labels(be, y, n_out, m=None):
    """Network.labels: y as (m,) int64 on the device, host labels range-checked against [0, n_out)."""
    on_gpu = be.xp is not np and isinstance(y, be.xp.ndarray)
    y = y if on_gpu else np.asarray(y)
    m = len(y) if m is None else m
    if y.shape != (m,) or y.dtype.kind not in "iu":
        raise GpubpError(f"labels must be {m} integers, got shape {y.shape} dtype {y.dtype}")
    if not on_gpu and m and (y.min() < 0 or y.max() >= n_out):
        raise GpubpError(f"labels must lie in [0, {n_out - 1}], got {y.min()}..{y.max()}")
    return on_device(be, y, np.dtype(np.int64))


def device_targets(be, Y, m, n_out, dtype):
    """One-hot targets Y as (m, n_out) device rows of ``dtype``, or a one-line error."""
    Y = on_device(be, Y, dtype)
    if Y.shape != (m, n_out):
        raise GpubpError(f"targets must have shape ({m}, {n_out}) or be {m} integer labels, got {tuple(Y.shape)}")
    return Y


def on_device(be, a, dtype):
    """``a`` as a C-contiguous device array of ``dtype``; no copy when it already is one."""
    if isinstance(a, be.xp.ndarray) and a.dtype == dtype and a.flags.c_contiguous:
        return a
    return be.to_device(a, dtype)


def measure_sets(net, sets) -> list[list[dict]]:
    """Network.measure_models: every set's sums for every model of ``net`` in one float64 device
    buffer (made once per size), filled by ``add_sums`` and brought back in one copy."""
    models = list(np.ndindex(*net.lead))  # [()] for one network, [(0,), ..., (K-1,)] for a stack
    prepared = []
    for X, y, lmbda, cost, accuracy in sets:
        X = net.to_device(X)
        if X.shape[0] == 0:
            raise GpubpError("cannot evaluate on an empty data set")
        lmbdas = np.broadcast_to(np.asarray(lmbda, dtype=np.float64), net.lead)
        prepared.append((X, net.labels(y, X.shape[0]), lmbdas, bool(cost), bool(accuracy)))
    per = 3 * len(models)  # per set and model: [summed cost, correct, sum of w^2 or of params]
    if ("totals", per * len(prepared)) not in net._ws:  # made once per size
        net._ws["totals", per * len(prepared)] = net.be.empty((per * len(prepared),), np.float64)
    totals = net._ws["totals", per * len(prepared)]
    net.be.kernel("fill", np.float64)(totals.size, totals, totals.size, 0.0)
    for i, (X, labels, lmbdas, cost, accuracy) in enumerate(prepared):
        add_sums(net, X, labels, totals[per * i:per * (i + 1)], lmbdas, cost, accuracy, models)
    host = net.be.to_host(totals).reshape(len(prepared), len(models), 3)
    out = []
    for (X, _, lmbdas, cost, accuracy), sums in zip(prepared, host):
        n, per_model = X.shape[0], []
        for i, (summed, correct, extra) in zip(models, sums):
            per_model.append({"cost": (summed + 0.5 * float(lmbdas[i]) * extra) / n if cost else None,
                              "correct": int(correct) if accuracy else None,
                              "accuracy": float(correct) / n if accuracy else None, "n": n,
                              "finite": bool(np.isfinite(summed + extra))})
        out.append(per_model)
    return out


def add_sums(net, X, labels, slots, lmbdas, cost, accuracy, models) -> None:
    """Add one data set's summed cost, number correct and (for L2, or for the finiteness check)
    sum of squared weights or of parameters into slots[3j], [3j + 1], [3j + 2] for the j-th of
    ``models`` (indices into ``net``'s leading axes), on the device: one forward pass for all of them."""
    be, dt = net.be, net.dtype
    for k in range(0, X.shape[0] if cost or accuracy else 0, EVAL_ROWS):
        Xc, lc = X[k:k + EVAL_ROWS], labels[k:k + EVAL_ROWS]
        rows = Xc.shape[0]
        ws = net.workspace(rows, False)
        out = net._forward(Xc, ws)  # (*lead, rows, n_L)
        if cost:
            Y = ws.targets(be, net.sizes[-1], dt)
            be.kernel("one_hot", dt)(Y.size, Y, lc, rows, Y.shape[1])
        for j, i in enumerate(models):
            if cost:
                be.kernel(net.cost.value_kernel, dt)(rows, slots[3 * j:3 * j + 1], out[i], Y, rows, Y.shape[1])
            if accuracy:
                be.kernel("argmax_count", dt)(rows, slots[3 * j + 1:3 * j + 2], out[i], lc, rows, out.shape[-1])
    for j, i in enumerate(models):
        params = net.params[i]
        if cost and lmbdas[i]:
            w = params[:net.n_weights]
            be.kernel("sum_squares_into", dt)(w.size, slots[3 * j + 2:3 * j + 3], w, w.size)
        elif not (cost or accuracy):
            be.kernel("sum_into", dt)(net.n_params, slots[3 * j + 2:3 * j + 3], params, net.n_params)


def save_network(net, path) -> None:
    """Network.save: the parameters, the optimizer's config and state arrays, the shuffle's state, the
    epochs and batch size, and the run's settings (augmentation, max-norm, schedule)."""
    arrays = {"params": net.get_params()}
    meta = {"model": net.config(), "epochs_trained": net.epochs_trained,
            "rng": net.rng.bit_generator.state, "mini_batch_size": net.mini_batch_size}
    if net.optimizer is not None:
        meta["optimizer"] = net.optimizer.config()
        arrays.update({f"optimizer_{k}": v for k, v in net.optimizer.state_arrays().items()})
    if net.run_settings:
        meta["run_settings"] = net.run_settings
    checkpoint.save(path, meta, arrays)


def load_network(cls, path, backend=None, gemm=None, tf32=None) -> Network:
    """Network.load: the model in ``path`` as a ``cls``, or ModelFileError."""
    meta, arrays = checkpoint.load(path)
    cfg = meta["model"]
    try:  # the declared sizes must match the stored vector before anything is allocated
        if cfg.get("gemm") not in (None, *GEMM_ROUTES):
            raise GpubpError(f"gemm {str(cfg['gemm'])[:40]!r} is none of {', '.join(GEMM_ROUTES)}")
        sizes = check_sizes(cfg["sizes"])
        if count_parameters(sizes) != arrays["params"].size:
            raise GpubpError(f"sizes {','.join(map(str, sizes))} need {count_parameters(sizes):,} "
                             f"parameters, the file holds {arrays['params'].size:,}")
    except (GpubpError, TypeError) as e:
        raise ModelFileError(f"{path} is inconsistent: {e}") from None
    try:
        net = cls(cfg["sizes"], cost=cfg["cost"], activation=cfg.get("activation", "sigmoid"),
                  backend=backend, dtype=cfg["dtype"], seed=cfg.get("seed"), init=cfg.get("init", "default"),
                  gemm=gemm, tf32=cfg.get("tf32", False) if tf32 is None else tf32,
                  dropout=cfg.get("dropout", 0.0), input_dropout=cfg.get("input_dropout", 0.0))
        net.set_params(arrays["params"])
        net.epochs_trained = int(meta.get("epochs_trained", 0))
        net.mini_batch_size = int(meta["mini_batch_size"]) if meta.get("mini_batch_size") else None
        if meta.get("rng"):
            net.rng.bit_generator.state = meta["rng"]
        net.run_settings = dict(meta.get("run_settings") or {})
        if meta.get("optimizer"):
            opt = dict(meta["optimizer"])
            net.optimizer = make_optimizer(opt.pop("optimizer"), **opt).bind(net)
            prefix = "optimizer_"
            net.optimizer.load_state({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
    except (GpubpError, KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{path} is inconsistent: {e}") from None
    return net
