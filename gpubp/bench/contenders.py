"""The contenders a benchmark case times: gpubp on a backend, PyTorch eager, and the machine's GEMM rate.

Each contender is built and warmed up once (kernel compilation, context creation, first
allocations, a first run of its steps), then timed on demand; ``time()`` synchronizes before its
clock stops. gpubp's contender runs its steps through the epoch driver, as training does.
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
    """``steps`` consecutive mini-batches (views) of the data, wrapping around (PyTorch's contender)."""
    n = X.shape[0]
    starts = [(s * batch) % max(n - batch + 1, 1) for s in range(steps)]
    return [(X[k:k + batch], Y[k:k + batch]) for k in starts]


class Contender:
    """One way of running a case's training steps: warmed up once, then timed on demand. ``run()``
    runs ``steps`` steps (and waits for them where it says so); ``sync`` waits for the device."""

    def __init__(self, run, steps, sync, device, warmup_seconds=0.0, counters=None):
        self.run, self.steps, self.sync, self.device = run, steps, sync, device
        self.warmup_seconds, self.counters, self.per_step = warmup_seconds, counters, []

    def time(self) -> None:
        """Run the steps once; record seconds per step (synchronized before the clock stops). One
        untimed run goes first: after the pause between contenders, thread pools and caches are
        cold, and a case of a few milliseconds would time their waking."""
        self.run()
        self.sync()
        t0 = time.perf_counter()
        self.run()
        self.sync()
        self.per_step.append((time.perf_counter() - t0) / self.steps)


def ours(backend, sizes, batch, dtype, steps, data, gemm="blas", graph=False) -> Contender:
    """gpubp on ``backend`` and route ``gemm``, through the epoch driver that training uses
    (gpubp.training.Epochs): a timed run is one epoch of the first ``steps`` batches' rows (all the
    rows, in one step, when a batch is larger than the data), shuffled, gathered and stepped as
    training does, eagerly or (``graph``) as one replay of its captured graph. Warmed up first:
    kernels compiled, workspaces allocated, the graph captured, one epoch run. ``counters``: what
    one timed run asks of the device."""
    from ..backends import get_backend
    from ..network import Network
    from ..optimizers import SGD
    from ..training import Epochs

    be = get_backend(backend)
    warm = be.warmup()
    net = Network(sizes, cost=COST, backend=be, dtype=dtype, seed=0, gemm=gemm)
    rows = min(len(data[0]), steps * batch)
    driver = Epochs(net, net.to_device(data[0][:rows]), net.labels(data[1][:rows]), batch, SGD(ETA).bind(net),
                    graph=graph)
    driver.epoch()  # first allocations, BLAS handles, caches; the capture
    with be.counters() as c:
        driver.epoch()
    return Contender(driver.epoch, math.ceil(rows / batch), be.synchronize, be.device,
                     warm + (driver.capture_seconds or 0.0), c.as_dict())


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

    def run():
        for xb, yb in work:
            step(xb, yb)

    return Contender(run, len(work), sync, name)


