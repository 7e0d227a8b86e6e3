"""Optimizers: each owns its hyperparameters and its state, and updates every parameter in one kernel.

As in tinygrad's optim.py, an optimizer works on the network's flat buffers: ``params`` (every
W, then every b) and ``grads`` (the MEAN gradient over the mini-batch, no L2 term), and keeps
its own state in flat buffers of the same length beside them. L2 regularization follows
network2.py: lambda (``lmbda``) over n, the size of the training set, on the weights only.

    sgd       w <- (1 - eta*lmbda/n)*w - eta*grad_w;  b <- b - eta*grad_b           (network2.py)
    momentum  v <- mu*v - eta*(grad + (lmbda/n)*w);  w <- w + v   (biases: no L2)   (Nielsen ch. 3)
    adam      m, v <- moving averages of grad and grad^2 (beta1, beta2), bias-corrected;
              w <- (1 - eta*lmbda/n)*w - eta*m_hat/(sqrt(v_hat) + eps)   (lmbda as decoupled weight
              decay, Loshchilov & Hutter: it shrinks the weights directly instead of entering the
              moments, so Adam's per-parameter step size does not rescale it)

Plain SGD needs no gradient buffer: its update rides in the BP3/BP4 products themselves
(W <- decay*W - eta*delta^T a, one GEMM with alpha and beta), so ``fused`` tells the network to
do that; the others read ``grads`` and launch their kernel.

The K networks of a gpubp.sweeps.stack.Stack each have an optimizer of one kind, with its own eta and
lmbda: ``ModelOptimizers`` holds them and updates the (K, P) buffers in one ``<kernel>_models``
kernel, which reads each model's values (``per_model``) from device arrays.

Adding an optimizer: a class here (``update`` and ``update_models``) and an entry in OPTIMIZERS,
its two kernels in kernels/<name>.cu and their references in gpubp/reference.py.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import GpubpError


def _number(what: str, v, ok, rule: str) -> float:
    """``v`` as a float when ``ok(v)``, else a one-line error naming the rule."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise GpubpError(f"{what} must be a number, got {v!r}") from None
    if not (math.isfinite(f) and ok(f)):
        raise GpubpError(f"{what} must be {rule}, got {v!r}")
    return f


class Optimizer:
    """Base: hyperparameters eta, lmbda and n; subclasses add theirs, their state and ``update``."""

    name = "?"
    kernel_name = ""
    fused = False
    default_eta = 0.1
    state_names: tuple[str, ...] = ()
    per_model: tuple[str, ...] = ("eta",)  # the values each model of a stack has its own of (see ModelOptimizers)
    block_counter = False  # its kernel counts finished blocks in a device word (``done``)

    def __init__(self, eta=None, lmbda=0.0, n=None):
        self.eta = _number("eta", self.default_eta if eta is None else eta, lambda v: v > 0, "> 0")
        self.lmbda = _number("lmbda", lmbda, lambda v: v >= 0, ">= 0")
        if self.lmbda and (n is None or int(n) < 1):
            raise GpubpError("L2 regularization (lmbda > 0) needs n, the size of the training set")
        self.n = int(n) if n else None
        self.net = None
        self.state: dict[str, object] = {}

    @property
    def decay(self) -> float:
        """The weight-decay factor 1 - eta*lmbda/n (1 without L2)."""
        return 1.0 - self.eta * self.lmbda / self.n if self.lmbda else 1.0

    @property
    def l2(self) -> float:
        """lambda/n: the L2 term's coefficient in the gradient of the weights."""
        return self.lmbda / self.n if self.lmbda else 0.0

    def hyperparameters(self) -> dict:
        return {"eta": self.eta, "lmbda": self.lmbda, "n": self.n}

    def config(self) -> dict:
        return {"optimizer": self.name, **self.hyperparameters()}

    def bind(self, net) -> Optimizer:
        """Allocate this optimizer's state (zeros) beside ``net``'s flat buffers; once per network."""
        if self.net is not None and self.net is not net:
            raise GpubpError(f"this {self.name} optimizer already belongs to another network")
        if self.net is None:
            self.net = net
            self.state = self.new_state(net.be, net.params.shape, net.dtype)
            self._kernel = net.be.kernel(self.kernel_name, net.dtype) if self.kernel_name else None
            self.done = net.be.zeros((1,), np.uint32) if self.block_counter else None
        return self

    def new_state(self, be, shape, dtype) -> dict:
        """Zeroed state beside parameters of ``shape``: one buffer per ``state_names``."""
        return {k: be.zeros(shape, dtype) for k in self.state_names}

    def update(self) -> None:
        """One update of every parameter from ``net.grads`` (the mean gradient): one kernel."""
        raise NotImplementedError

    def update_models(self, group: ModelOptimizers) -> None:
        """One update of every model of ``group``'s stack (this optimizer's kind), one kernel."""
        raise NotImplementedError

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The state as host arrays, for a checkpoint."""
        return {k: self.net.be.to_host(v) for k, v in self.state.items()}

    def load_state(self, arrays: dict) -> None:
        """Restore state saved by ``state_arrays`` (shapes and names checked)."""
        for k, buf in self.state.items():
            a = np.asarray(arrays.get(k))
            if a.shape != buf.shape:
                raise GpubpError(f"{self.name} state {k!r} has shape {a.shape}, expected {buf.shape}")
            buf[...] = self.net.be.to_device(a, buf.dtype)


class SGD(Optimizer):
    """network2.py's rule. ``fused=True`` (the default) folds the update into the BP3/BP4 products;
    ``fused=False`` writes the gradient and runs the sgd_update kernel (same result, one pass more)."""

    name = "sgd"
    kernel_name = "sgd_update"
    default_eta = 3.0  # network.py's

    def __init__(self, eta=None, lmbda=0.0, n=None, fused=True):
        super().__init__(eta, lmbda, n)
        self.fused = bool(fused)

    per_model = ("decay", "eta")

    def update(self) -> None:
        net = self.net
        self._kernel(net.n_params, net.params, net.grads, net.n_params, net.n_weights, self.decay, self.eta)

    def update_models(self, group) -> None:
        s, v = group.net, group.values
        group.kernel(s.params.size, s.params, s.grads, s.params.size, s.n_params, s.n_weights, v["decay"], v["eta"])


class Momentum(Optimizer):
    """Momentum SGD, Nielsen ch. 3: v <- mu*v - eta*grad; w <- w + v, with network2's L2 in grad."""

    name = "momentum"
    kernel_name = "momentum_update"
    default_eta = 0.3  # network.py's 3.0 times (1 - mu): the same step once v has built up
    state_names = ("velocity",)
    per_model = ("eta", "l2")

    def __init__(self, eta=None, lmbda=0.0, n=None, momentum=0.9):
        super().__init__(eta, lmbda, n)
        self.mu = _number("momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)")

    def hyperparameters(self) -> dict:
        return {**super().hyperparameters(), "momentum": self.mu}

    def update(self) -> None:
        net = self.net
        self._kernel(net.n_params, net.params, net.grads, self.state["velocity"], net.n_params, net.n_weights,
                     self.eta, self.mu, self.l2)

    def update_models(self, group) -> None:
        s, v = group.net, group.values
        group.kernel(s.params.size, s.params, s.grads, group.state["velocity"], s.params.size, s.n_params,
                     s.n_weights, v["eta"], self.mu, v["l2"])


class Adam(Optimizer):
    """Adam (Kingma & Ba) with lmbda as decoupled weight decay; the step count lives on the device."""

    name = "adam"
    kernel_name = "adam_update"
    default_eta = 0.001
    state_names = ("m", "v")
    per_model = ("eta", "decay")
    block_counter = True

    def __init__(self, eta=None, lmbda=0.0, n=None, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(eta, lmbda, n)
        self.beta1 = _number("beta1", beta1, lambda v: 0 <= v < 1, "in [0, 1)")
        self.beta2 = _number("beta2", beta2, lambda v: 0 <= v < 1, "in [0, 1)")
        self.eps = _number("eps", eps, lambda v: v > 0, "> 0")

    def hyperparameters(self) -> dict:
        return {**super().hyperparameters(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def new_state(self, be, shape, dtype) -> dict:
        state = super().new_state(be, shape, dtype)
        state["steps"] = be.zeros((1,), np.int64)  # steps taken so far, on the device
        return state

    def update(self) -> None:
        net, s = self.net, self.state
        self._kernel(net.n_params, net.params, net.grads, s["m"], s["v"], s["steps"], self.done, net.n_params,
                     net.n_weights, self.eta, self.beta1, self.beta2, self.eps, self.decay)

    def update_models(self, group) -> None:
        net, s, v = group.net, group.state, group.values
        group.kernel(net.params.size, net.params, net.grads, s["m"], s["v"], s["steps"], group.done,
                     net.params.size, net.n_params, net.n_weights, v["eta"], self.beta1, self.beta2, self.eps,
                     v["decay"])


class ModelOptimizers:
    """The optimizers of a stack's K models, one each and in model order: one kind, the same
    hyperparameters but eta and lmbda (so each model has its own decay), updating the stack's
    (K, P) parameters from its (K, P) gradients in one ``<kernel>_models`` launch. Each model's
    values (its optimizer's ``per_model``: eta, decay, l2) live in device arrays of length K.

    ``fused``: plain SGD's update may be folded into each model's BP4 product; the stack's route
    (gpubp.sweeps.stack.StackRoute.fuses) does that where its products are host BLAS calls, one per
    model; elsewhere a batched product has one alpha and one beta for all K models, so the gradient
    goes to ``grads``, then the kernel."""

    fused = False

    def __init__(self, optimizers):
        self.optimizers = list(optimizers)
        if not self.optimizers:
            raise GpubpError("a stack needs one optimizer per model, got none")
        first = self.optimizers[0]
        shared = {k: v for k, v in first.hyperparameters().items() if k not in ("eta", "lmbda")}
        for o in self.optimizers:
            if type(o) is not type(first) or {k: v for k, v in o.hyperparameters().items()
                                              if k not in ("eta", "lmbda")} != shared:
                raise GpubpError(f"the models of a stack share one optimizer kind and its settings but eta and "
                                 f"lmbda: got {first.config()} and {o.config()}")
        self.kind = first
        self.name = first.name
        self.net = None
        self.state: dict[str, object] = {}

    def bind(self, stack) -> ModelOptimizers:
        """Allocate the state (zeros, (K, P) like the stack's parameters) and upload each model's values."""
        if self.net is not None and self.net is not stack:
            raise GpubpError(f"these {self.name} optimizers already belong to another stack")
        if self.net is None:
            if stack.params.shape[:-1] != (len(self.optimizers),):
                raise GpubpError(f"{len(self.optimizers)} optimizers for a stack of {stack.params.shape[:-1]} models")
            be, kind = stack.be, self.kind
            self.net = stack
            self.state = kind.new_state(be, stack.params.shape, stack.dtype)
            self.values = {name: be.to_device(np.array([getattr(o, name) for o in self.optimizers]), stack.dtype)
                           for name in kind.per_model}
            self.kernel = be.kernel(kind.kernel_name + "_models", stack.dtype)
            self.done = be.zeros((1,), np.uint32) if kind.block_counter else None
            self.fused = kind.fused
        return self

    def update(self) -> None:
        """One update of every model's parameters from the stack's gradients: one kernel."""
        self.kind.update_models(self)


OPTIMIZERS = {o.name: o for o in (SGD, Momentum, Adam)}
DEFAULT = "sgd"


def make_optimizer(name="sgd", eta=None, lmbda=0.0, n=None, **hyper) -> Optimizer:
    """An optimizer by name ("sgd" | "momentum" | "adam"); hyper: momentum=, beta1=, beta2=, eps=, fused=.
    Hyperparameters an optimizer does not take are refused, not ignored."""
    if isinstance(name, Optimizer):
        return name
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        raise GpubpError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    try:
        return OPTIMIZERS[key](eta=eta, lmbda=lmbda, n=n, **hyper)
    except TypeError:
        raise GpubpError(f"optimizer {key} does not take {', '.join(sorted(hyper))}") from None
