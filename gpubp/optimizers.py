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

Adding an optimizer: a class here and an entry in OPTIMIZERS, its kernel in kernels/<name>.cu
and its reference in gpubp/reference.py.
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
            self.state = {k: net.be.zeros((net.n_params,), net.dtype) for k in self.state_names}
            self._kernel = net.be.kernel(self.kernel_name, net.dtype) if self.kernel_name else None
        return self

    def update(self) -> None:
        """One update of every parameter from ``net.grads`` (the mean gradient): one kernel."""
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

    def update(self) -> None:
        net = self.net
        self._kernel(net.n_params, net.params, net.grads, net.n_params, net.n_weights, self.decay, self.eta)


class Momentum(Optimizer):
    """Momentum SGD, Nielsen ch. 3: v <- mu*v - eta*grad; w <- w + v, with network2's L2 in grad."""

    name = "momentum"
    kernel_name = "momentum_update"
    default_eta = 0.3  # network.py's 3.0 times (1 - mu): the same step once v has built up
    state_names = ("velocity",)

    def __init__(self, eta=None, lmbda=0.0, n=None, momentum=0.9):
        super().__init__(eta, lmbda, n)
        self.mu = _number("momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)")

    def hyperparameters(self) -> dict:
        return {**super().hyperparameters(), "momentum": self.mu}

    def update(self) -> None:
        net = self.net
        self._kernel(net.n_params, net.params, net.grads, self.state["velocity"], net.n_params, net.n_weights,
                     self.eta, self.mu, self.l2)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with lmbda as decoupled weight decay; the step count lives on the device."""

    name = "adam"
    kernel_name = "adam_update"
    default_eta = 0.001
    state_names = ("m", "v")

    def __init__(self, eta=None, lmbda=0.0, n=None, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(eta, lmbda, n)
        self.beta1 = _number("beta1", beta1, lambda v: 0 <= v < 1, "in [0, 1)")
        self.beta2 = _number("beta2", beta2, lambda v: 0 <= v < 1, "in [0, 1)")
        self.eps = _number("eps", eps, lambda v: v > 0, "> 0")

    def hyperparameters(self) -> dict:
        return {**super().hyperparameters(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def bind(self, net) -> Optimizer:
        fresh = self.net is None
        super().bind(net)
        if fresh:  # steps taken so far (on the device), and the kernel's count of finished blocks
            self.state["steps"] = net.be.zeros((1,), np.int64)
            self.done = net.be.zeros((1,), np.uint32)
        return self

    def update(self) -> None:
        net, s = self.net, self.state
        self._kernel(net.n_params, net.params, net.grads, s["m"], s["v"], s["steps"], self.done, net.n_params,
                     net.n_weights, self.eta, self.beta1, self.beta2, self.eps, self.decay)


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
