"""The contenders a benchmark case times: gpubp on a backend, PyTorch eager, and the machine's GEMM rate.

Each contender is built and warmed up once (kernel compilation, context creation, first
allocations, three steps), then timed on demand; ``time()`` synchronizes before its clock stops.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

COST = "cross_entropy"
ETA = 0.1


def gemm_rate(dtype="float32", n=2048, repeats=5) -> float:
    """The machine's measured GEMM rate in GFLOP/s (NumPy, square n x n, median of repeats)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float64).astype(dtype), rng.random((n, n), dtype=np.float64).astype(dtype)
    c = np.empty((n, n), dtype=dtype)
    np.matmul(a, b, out=c)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def _batches(X, Y, batch, steps):
    """``steps`` consecutive mini-batches (views) of the shuffled data, wrapping around."""
    n = X.shape[0]
    starts = [(s * batch) % max(n - batch + 1, 1) for s in range(steps)]
    return [(X[k:k + batch], Y[k:k + batch]) for k in starts]


class Contender:
    """One way of running a case's training steps: warmed up once, then timed on demand. ``step`` runs
    one prepared batch, or (``steps`` given) all of them at once, as a graph's launch does."""

    def __init__(self, step, sync, batches, device, warmup_seconds=0.0, counters=None, steps=None):
        self.step, self.sync, self.batches, self.device = step, sync, batches, device
        self.warmup_seconds, self.counters, self.per_step = warmup_seconds, counters, []
        self.steps = steps or len(batches)

    def time(self) -> None:
        """Run every prepared batch once; record seconds per step (synchronized before the clock stops).
        One untimed step goes first: after the pause between contenders, thread pools and caches are
        cold, and a case of a few milliseconds would time their waking."""
        self.step(*self.batches[0])
        self.sync()
        t0 = time.perf_counter()
        for Xb, Yb in self.batches:
            self.step(Xb, Yb)
        self.sync()
        self.per_step.append((time.perf_counter() - t0) / self.steps)


def ours(backend, sizes, batch, dtype, steps, data, gemm="blas", graph=False) -> Contender:
    """gpubp on ``backend`` and route ``gemm``, warmed up: kernels compiled, workspaces allocated,
    three steps run; with ``graph``, the ``steps`` steps captured once as one graph, which each
    timing replays (as an epoch's graph is)."""
    from ..backends import get_backend
    from ..network import Network
    from ..optimizers import SGD

    be = get_backend(backend)
    warm = be.warmup()
    net = Network(sizes, cost=COST, backend=be, dtype=dtype, seed=0, gemm=gemm)
    opt = SGD(ETA)
    X = net.to_device(data[0])
    Y = net.one_hot(net.labels(data[1]))
    work = _batches(X, Y, batch, steps)

    def step(Xb, Yb):
        net.step(Xb, Yb, opt)

    for Xb, Yb in work[:3]:  # first allocations, BLAS handles, caches
        step(Xb, Yb)
    be.synchronize()
    if graph:
        be.prepare_capture(gemm)
        with be.capture() as captured:
            for Xb, Yb in work:
                step(Xb, Yb)
        with be.counters() as c:
            captured.launch()
        contender = Contender(lambda *_: captured.launch(), be.synchronize, [(None, None)], be.device, warm,
                              c.as_dict(), steps=len(work))
        contender.recorded = (net, opt, X, Y, work)  # a CUDA graph holds raw pointers: keep what it writes into
        return contender
    with be.counters() as c:
        step(*work[0])
    return Contender(step, be.synchronize, work, be.device, warm, c.as_dict())


def torch_trainer(device, sizes, dtype, data):
    """The same network and loop in PyTorch eager: sigmoid layers, mean cross-entropy, plain SGD.

    Returns (step(xb, yb), sync(), X, Y, device name) with X, Y the data on the device."""
    import torch

    tdt = getattr(torch, dtype)
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    layers = [torch.nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:])]
    with torch.no_grad():
        for layer in layers:  # network2's initialisation, as gpubp's
            layer.weight.normal_(0, 1 / math.sqrt(layer.in_features), generator=gen)
            layer.bias.normal_(0, 1, generator=gen)
    model = torch.nn.Sequential(*[m for layer in layers for m in (layer, torch.nn.Sigmoid())]).to(dev, tdt)
    X = torch.as_tensor(data[0], dtype=tdt, device=dev)
    Y = torch.nn.functional.one_hot(torch.as_tensor(data[1], device=dev), sizes[-1]).to(tdt)
    params = list(model.parameters())

    def step(xb, yb):
        loss = torch.nn.functional.binary_cross_entropy(model(xb), yb, reduction="sum") / xb.shape[0]
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            torch._foreach_add_(params, grads, alpha=-ETA)

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return step, sync, X, Y, f"{name}, torch {torch.__version__}"


def pytorch(device, sizes, batch, dtype, steps, data) -> Contender:
    """PyTorch eager on ``device`` ("cpu" or "cuda"), warmed up with three steps."""
    step, sync, X, Y, name = torch_trainer(device, sizes, dtype, data)
    work = _batches(X, Y, batch, steps)
    for xb, yb in work[:3]:
        step(xb, yb)
    return Contender(step, sync, work, name)


