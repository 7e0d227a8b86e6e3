"""Network: Nielsen's sigmoid network in matrix form over a whole mini-batch.

Shapes, in words (rows are samples):
    L            number of weight layers, len(sizes) - 1; sizes = [n_0, n_1, ..., n_L]
    m            rows in the mini-batch
    n_l          width of layer l (n_0 = 784 pixels, n_L = 10 digits)
    W[l]         (n_{l+1}, n_l)  w_jk: from neuron k of layer l to neuron j of layer l+1
    b[l]         (n_{l+1},)
    A[l]         (m, n_l)        activations; A[0] = X, A[l+1] = sigma(A[l] W[l]^T + b[l])
    D[l]         (m, n_{l+1})    the error delta of layer l+1, times a scale (1/m, or eta/m in a step)

Backpropagation, the seed notes' four equations with rows as samples:
    BP1  delta^L = grad_a C (.) sigma'(z^L)                   cost.delta (one fused kernel)
    BP2  delta^l = (delta^{l+1} W^{l+1}) (.) sigma'(z^l)      GEMM, then hidden_delta kernel
    BP3  dC/db^l = sum over rows of delta^l                   GEMM: ones(m) @ D
    BP4  dC/dW^l = delta^l^T a^{l-1}                          GEMM: D^T @ A
sigma'(z) is computed from the stored activation as a(1-a), so z is never kept. Scaling
delta^L by 1/m makes every gradient that of the MEAN cost over the m rows; a training step
scales by eta/m instead, so the gradient buffer already holds the step and the update is
p <- decay*p - grads in one pass.

All weights and biases live in ONE contiguous buffer ``params`` (every W first, then every b),
and ``weights[l]`` / ``biases[l]`` are writable views into it; the gradients likewise live in
``grads``. One fused kernel updates every parameter. Workspaces are allocated the first time
a batch size is seen, so after the first step a training step allocates nothing.
"""

from __future__ import annotations

import numpy as np

from .backend import get_backend
from .costs import get_cost
from .errors import GpubpError

INITS = ("default", "large")
EVAL_ROWS = 10_000  # rows per forward pass when evaluating a whole data set


class _Workspace:
    """Activations A[1..L], errors D[0..L-1] and a ones vector for batches of m rows."""

    def __init__(self, be, sizes, m, dtype, backward):
        self.A = [None] + [be.empty((m, n), dtype) for n in sizes[1:]]
        self.D = [be.empty((m, n), dtype) for n in sizes[1:]] if backward else None
        self.DT = [d.T for d in self.D] if backward else None  # views, made once
        self.ones = None
        if backward:
            self.ones = be.empty((m,), dtype)
            self.ones.fill(1)


class Network:
    """A fully connected sigmoid network trained by backprop.

    Args:
        sizes: neurons per layer, e.g. [784, 30, 10].
        cost: "quadratic" or "cross_entropy".
        backend: "auto" | "numpy" | "cupy" | "emulated" or a Backend (default: $GPUBP_BACKEND or auto).
        dtype: "float32" (default) or "float64".
        seed: seeds NumPy's generator; weights are drawn on the host, so every backend starts equal.
        init: "default" = network2's N(0, 1/n_in) weights; "large" = network.py's N(0, 1). Biases N(0, 1).
    """

    def __init__(self, sizes, cost="quadratic", backend=None, dtype="float32", seed=None, init="default"):
        self.sizes = [int(s) for s in sizes]
        if len(self.sizes) < 2 or any(s < 1 for s in self.sizes) or list(sizes) != self.sizes:
            raise GpubpError(f"sizes must be two or more positive integers, e.g. 784,30,10 (got {list(sizes)})")
        if init not in INITS:
            raise GpubpError(f"unknown init {init!r}: choose default or large")
        self.cost = get_cost(cost)
        self.be = get_backend(backend)
        self.xp = self.be.xp
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise GpubpError(f"dtype {dtype} is not supported: use float32 or float64")
        self.L = len(self.sizes) - 1
        self.shapes = list(zip(self.sizes[1:], self.sizes[:-1]))  # W[l]: (n_out, n_in)
        self.n_weights = sum(o * i for o, i in self.shapes)
        self.n_params = self.n_weights + sum(self.sizes[1:])
        self.params = self.be.empty((self.n_params,), self.dtype)
        self.grads = self.be.empty((self.n_params,), self.dtype)
        self.weights, self.biases = self._views(self.params)
        self.grad_weights, self.grad_biases = self._views(self.grads)
        self._weights_T = [w.T for w in self.weights]  # views, made once: a step makes none
        self.set_params(self._initial_params(seed, init))
        self._ws: dict[tuple[int, bool], _Workspace] = {}

    def _views(self, flat):
        """Lists of W[l] (n_out, n_in) and b[l] (n_out,) views into one flat buffer."""
        ws, bs, k = [], [], 0
        for o, i in self.shapes:
            ws.append(flat[k:k + o * i].reshape(o, i))
            k += o * i
        for o, _ in self.shapes:
            bs.append(flat[k:k + o])
            k += o
        return ws, bs

    def _initial_params(self, seed, init) -> np.ndarray:
        rng = np.random.default_rng(seed)
        flat = np.empty(self.n_params)
        ws, bs = self._views(flat)
        for w, (o, i) in zip(ws, self.shapes):
            w[...] = rng.standard_normal((o, i)) / (np.sqrt(i) if init == "default" else 1.0)
        for b, (o, _) in zip(bs, self.shapes):
            b[...] = rng.standard_normal(o)
        return flat

    def set_params(self, flat) -> None:
        """Copy a flat host vector (every W, then every b) into the parameter buffer."""
        flat = np.asarray(flat)
        if flat.shape != (self.n_params,):
            raise GpubpError(f"expected {self.n_params} parameters for sizes {self.sizes}, got {flat.shape}")
        self.params[...] = self.be.to_device(flat, self.dtype)

    def get_params(self) -> np.ndarray:
        """The flat parameter vector, on the host."""
        return self.be.to_host(self.params)

    # -----------------------------------------------------------------------------------------
    # Inputs
    # -----------------------------------------------------------------------------------------

    def _device(self, a, dtype):
        """``a`` as a C-contiguous device array of ``dtype``; no copy when it already is one."""
        if isinstance(a, self.xp.ndarray) and a.dtype == dtype and a.flags.c_contiguous:
            return a
        return self.be.to_device(a, dtype)

    def _inputs(self, X):
        """X (m, n_0) as a C-contiguous device array of the network's dtype."""
        X = self._device(X, self.dtype)
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise GpubpError(f"inputs must have shape (m, {self.sizes[0]}), got {tuple(X.shape)}")
        return X

    def _targets(self, Y, m):
        """Y as one-hot device rows (m, n_L); integer labels (m,) are one-hot encoded on the device."""
        if np.ndim(Y) == 1:
            return self._one_hot(self._labels(Y, m))
        Y = self._device(Y, self.dtype)
        n_out = self.sizes[-1]
        if Y.shape != (m, n_out):
            raise GpubpError(f"targets must have shape ({m}, {n_out}) or be {m} integer labels, got {tuple(Y.shape)}")
        return Y

    def _labels(self, y, m):
        """Integer labels (m,) in [0, n_L) as an int64 device array. Host labels are range-checked
        before they go up; labels already on the device are trusted (a check would cost a sync)."""
        on_device = self.xp is not np and isinstance(y, self.xp.ndarray)
        if not on_device:
            y = np.asarray(y)
        if y.shape != (m,) or y.dtype.kind not in "iu":
            raise GpubpError(f"labels must be {m} integers, got shape {y.shape} dtype {y.dtype}")
        n_out = self.sizes[-1]
        if not on_device and m and (y.min() < 0 or y.max() >= n_out):
            raise GpubpError(f"labels must lie in [0, {n_out - 1}], got {y.min()}..{y.max()}")
        return self._device(y, np.dtype(np.int64))

    def _one_hot(self, labels):
        Y = self.be.empty((labels.shape[0], self.sizes[-1]), self.dtype)
        self.be.one_hot(labels, Y)
        return Y

    def _workspace(self, m: int, backward: bool) -> _Workspace:
        key = (m, backward)
        if key not in self._ws:
            self._ws[key] = _Workspace(self.be, self.sizes, m, self.dtype, backward)
        return self._ws[key]

    # -----------------------------------------------------------------------------------------
    # Forward and backward
    # -----------------------------------------------------------------------------------------

    def _forward(self, X, ws):
        """Fill ws.A with every layer's activations for X (m, n_0); returns A[L] (m, n_L)."""
        A = ws.A
        A[0] = X
        for l in range(self.L):
            self.be.matmul(A[l], self._weights_T[l], out=A[l + 1])  # z = a W^T (+ b below)
            self.be.bias_sigmoid(A[l + 1], self.biases[l])  # a = sigma(z + b), fused
        return A[self.L]

    def _backward(self, Y, ws, scale) -> None:
        """BP1-BP4 from the activations in ws.A: fills ``grads`` with ``scale`` * the summed-cost
        gradient (scale = 1/m gives the mean-cost gradient)."""
        be, A, D = self.be, ws.A, ws.D
        self.cost.delta(be, D[-1], A[-1], Y, scale)  # BP1, times scale
        for l in range(self.L - 1, -1, -1):
            be.matmul(ws.ones, D[l], out=self.grad_biases[l])  # BP3
            be.matmul(ws.DT[l], A[l], out=self.grad_weights[l])  # BP4: delta^T a
            if l > 0:
                be.matmul(D[l], self.weights[l], out=D[l - 1])  # BP2: delta W ...
                be.hidden_delta(D[l - 1], A[l])  # ... (.) sigma'(z), from a = A[l]

    def _step(self, X, Y, eta: float, decay: float) -> None:
        """One SGD step on device arrays X (m, n_0), Y (m, n_L): nothing is copied, synced or allocated."""
        m = X.shape[0]
        ws = self._workspace(m, True)
        self._forward(X, ws)
        # grads <- eta * mean gradient: eta rides along in delta^L's scale, so the update is one pass.
        self._backward(Y, ws, eta / m)
        self.be.sgd_update(self.params, self.grads, self.n_weights, decay, 1.0)

    def feedforward(self, X):
        """The network's output for X (m, n_0): a new device array (m, n_L)."""
        X = self._inputs(X)
        return self._forward(X, self._workspace(X.shape[0], False)).copy()

    def backprop(self, X, Y):
        """Gradient of the MEAN cost over the m rows (no L2 term).

        X (m, n_0); Y (m, n_L) one-hot (or (m,) integer labels). Returns (nabla_b, nabla_w):
        lists of L device arrays shaped like ``biases`` and ``weights`` (copies).
        """
        X = self._inputs(X)
        Y = self._targets(Y, X.shape[0])
        ws = self._workspace(X.shape[0], True)
        self._forward(X, ws)
        self._backward(Y, ws, 1.0 / X.shape[0])
        return [g.copy() for g in self.grad_biases], [g.copy() for g in self.grad_weights]

    def update_mini_batch(self, X, Y, eta, lmbda=0.0, n=None) -> None:
        """One SGD step on one mini-batch, network2's rule with L2 on the weights only:
        w <- (1 - eta*lmbda/n) w - eta * mean gradient;  b <- b - eta * mean gradient.

        X (m, n_0); Y (m, n_L) one-hot or (m,) labels; n = training-set size (needed when lmbda > 0).
        """
        X = self._inputs(X)
        Y = self._targets(Y, X.shape[0])
        self._step(X, Y, float(eta), self.decay(eta, lmbda, n))

    @staticmethod
    def decay(eta, lmbda, n) -> float:
        """The weight-decay factor 1 - eta*lmbda/n of network2's L2 rule."""
        if not lmbda:
            return 1.0
        if not n or n < 1:
            raise GpubpError("L2 regularization (lmbda > 0) needs n, the size of the training set")
        return 1.0 - float(eta) * float(lmbda) / float(n)

    # -----------------------------------------------------------------------------------------
    # Evaluation
    # -----------------------------------------------------------------------------------------

    def measure(self, X, y, lmbda=0.0, cost=True, accuracy=True) -> dict:
        """Total cost (mean over rows, plus network2's L2 term 0.5*lmbda/n*sum w^2) and accuracy of
        (X (n, n_0), y (n,) labels), computed on the device and brought back in one copy."""
        X = self._inputs(X)
        n = X.shape[0]
        if n == 0:
            raise GpubpError("cannot evaluate on an empty data set")
        labels = self._labels(y, n)
        xp = self.xp
        totals = xp.zeros(2, dtype=xp.float64)  # [summed cost, number correct]
        for k in range(0, n, EVAL_ROWS):
            Xc, lc = X[k:k + EVAL_ROWS], labels[k:k + EVAL_ROWS]
            ws = self._workspace(Xc.shape[0], False)
            out = self._forward(Xc, ws)
            if cost:
                totals[0] += self.cost.fn(xp, out, self._one_hot(lc))
            if accuracy:
                hits = self.be.empty((Xc.shape[0],), np.int32)
                self.be.argmax_hits(out, lc, hits)
                totals[1] += xp.sum(hits)
        if cost and lmbda:
            totals[0] += 0.5 * lmbda * sum(xp.sum(w.astype(xp.float64) ** 2) for w in self.weights)
        total_cost, correct = self.be.to_host(totals)
        return {"cost": float(total_cost) / n if cost else None,
                "correct": int(correct) if accuracy else None,
                "accuracy": float(correct) / n if accuracy else None, "n": n}

    def evaluate(self, X, y) -> float:
        """Fraction of rows of X (n, n_0) whose largest output is the label y (n,)."""
        return self.measure(X, y, cost=False)["accuracy"]

    def total_cost(self, X, y, lmbda=0.0) -> float:
        """Mean cost over (X, y) plus the L2 term 0.5*(lmbda/n)*sum ||w||^2, as network2's total_cost."""
        return self.measure(X, y, lmbda=lmbda, accuracy=False)["cost"]

    # -----------------------------------------------------------------------------------------
    # Training and files
    # -----------------------------------------------------------------------------------------

    def sgd(self, training_data, epochs=30, mini_batch_size=10, eta=3.0, lmbda=0.0,
            evaluation_data=None, **options):
        """Mini-batch SGD; see gpubp.training.train for every option. Returns the per-epoch history."""
        from .training import train

        return train(self, training_data, epochs=epochs, mini_batch_size=mini_batch_size, eta=eta,
                     lmbda=lmbda, evaluation_data=evaluation_data, **options)

    def save(self, path) -> None:
        """Write the model to ``path`` (.npz, no pickle), atomically."""
        from .checkpoint import save

        save(self, path)

    @classmethod
    def load(cls, path, backend=None) -> Network:
        from .checkpoint import load

        return load(path, backend=backend)

    def __repr__(self) -> str:
        return f"Network({self.sizes}, cost={self.cost.name!r}, dtype={self.dtype.name!r}, backend={self.be.name!r})"
