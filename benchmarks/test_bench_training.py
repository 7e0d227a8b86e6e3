"""One training step and one epoch on real MNIST, per backend; and the per-example reference.

Network A = [784, 30, 10], batch 10, quadratic; network B = [784, 1024, 1024, 10], batch 128,
cross-entropy; float32. B's achieved GFLOP/s is recorded beside the machine's GEMM rate.
"""

import math

import numpy as np
import pytest
from benchutil import backend_params, device_data, timed

from gpubp import Network
from gpubp.backend import get_backend
from gpubp.bench import flops_per_sample, gemm_rate

NETS = {"A": ([784, 30, 10], 10, "quadratic", 3.0), "B": ([784, 1024, 1024, 10], 128, "cross_entropy", 0.5)}


@pytest.mark.parametrize("net_name", ["A", "B"])
@pytest.mark.parametrize("backend", backend_params("numpy", "emulated", "cupy"))
def test_one_step(benchmark, mnist_train, backend, net_name):
    sizes, bs, cost, eta = NETS[net_name]
    be = get_backend(backend)
    net = Network(sizes, cost=cost, backend=be, seed=1)
    X, Y = device_data(be, mnist_train[0][:bs], mnist_train[1][:bs], 10)
    timed(benchmark, be, lambda: net._step(X, Y, eta, 1.0), rounds=50)


@pytest.mark.parametrize("net_name", ["A", "B"])
@pytest.mark.parametrize("backend", backend_params("numpy", "cupy"))
def test_one_epoch(benchmark, mnist_train, backend, net_name):
    sizes, bs, cost, eta = NETS[net_name]
    be = get_backend(backend)
    net = Network(sizes, cost=cost, backend=be, seed=1)
    X, Y = device_data(be, *mnist_train, 10)
    n = X.shape[0]

    def epoch():
        for k in range(0, n, bs):
            net._step(X[k:k + bs], Y[k:k + bs], eta, 1.0)

    rounds = 3 if benchmark.enabled else 1
    timed(benchmark, be, epoch, rounds=rounds, warmup=1 if benchmark.enabled else 0)
    if net_name == "B" and benchmark.enabled:
        flops = flops_per_sample(sizes) * n
        rate = gemm_rate()
        benchmark.extra_info.update(gflops_achieved=flops / benchmark.stats.stats.median / 1e9,
                                    gemm_gflops=rate, gemm_floor_seconds=flops / rate / 1e9)


def seed_notes_epoch_slice(X, y, sizes, eta, bs):
    """network.py's update_mini_batch: a Python loop over examples as column vectors (float64)."""
    rng = np.random.default_rng(1)
    ws = [rng.standard_normal((o, i)) / math.sqrt(i) for i, o in zip(sizes[:-1], sizes[1:])]
    bs_ = [rng.standard_normal((o, 1)) for o in sizes[1:]]
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    for k in range(0, len(X), bs):
        nb = [np.zeros(b.shape) for b in bs_]
        nw = [np.zeros(w.shape) for w in ws]
        for x, t in zip(X[k:k + bs], y[k:k + bs]):
            a, acts, zs = x.reshape(-1, 1), [x.reshape(-1, 1)], []
            for w, b in zip(ws, bs_):
                zs.append(w @ a + b)
                a = sig(zs[-1])
                acts.append(a)
            yy = np.zeros((sizes[-1], 1))
            yy[t] = 1
            delta = (acts[-1] - yy) * sig(zs[-1]) * (1 - sig(zs[-1]))
            nb[-1] += delta
            nw[-1] += delta @ acts[-2].T
            for l in range(2, len(sizes)):
                sp = sig(zs[-l]) * (1 - sig(zs[-l]))
                delta = (ws[-l + 1].T @ delta) * sp
                nb[-l] += delta
                nw[-l] += delta @ acts[-l - 1].T
        ws = [w - eta / bs * d for w, d in zip(ws, nw)]
        bs_ = [b - eta / bs * d for b, d in zip(bs_, nb)]
    return ws


@pytest.mark.parametrize("backend", ["seed-notes-loop"])
@pytest.mark.parametrize("net_name", ["A"])
def test_network_py_per_example_reference(benchmark, mnist_train, backend, net_name):
    """Network A the network.py way on 1,000 images; extra_info extrapolates to a 50k epoch."""
    X, y = mnist_train[0][:1000].astype(np.float64), mnist_train[1][:1000]
    with np.errstate(over="ignore"):  # network.py's exp overflows for large negative z
        benchmark.pedantic(lambda: seed_notes_epoch_slice(X, y, [784, 30, 10], 3.0, 10),
                           rounds=3 if benchmark.enabled else 1, iterations=1)
    if benchmark.enabled:
        benchmark.extra_info["seconds_per_50k_epoch"] = benchmark.stats.stats.median * 50


@pytest.mark.parametrize("backend", ["torch-cpu"])
@pytest.mark.parametrize("net_name", ["A", "B"])
def test_pytorch_eager_epoch(benchmark, mnist_train, backend, net_name):
    """The same network and loop in PyTorch eager on the CPU, when torch is installed."""
    pytest.importorskip("torch", reason="PyTorch is not installed: no PyTorch column")
    from gpubp.bench import torch_trainer

    sizes, bs, cost, eta = NETS[net_name]
    step, sync, X, Y, name = torch_trainer("cpu", sizes, "float32", mnist_train)
    n = X.shape[0]

    def epoch():
        for k in range(0, n, bs):
            step(X[k:k + bs], Y[k:k + bs])

    benchmark.extra_info["device"] = name
    benchmark.pedantic(epoch, rounds=3 if benchmark.enabled else 1, warmup_rounds=1 if benchmark.enabled else 0,
                       iterations=1)
