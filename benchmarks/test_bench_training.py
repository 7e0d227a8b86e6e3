"""One training step and one epoch on real MNIST, per backend; and network.py's per-example loop.

Network A = [784, 30, 10], batch 10, quadratic; network B = [784, 1024, 1024, 10], batch 128,
cross-entropy; float32. B's achieved GFLOP/s is recorded beside the machine's GEMM rate.
"""

import numpy as np
import pytest
from benchutil import NETS, backend_params, device_data, timed

from gpubp import Network
from gpubp.backends import get_backend
from gpubp.bench import flops_per_sample, gemm_rate
from gpubp.bench.nielsen import epoch_slice
from gpubp.optimizers import SGD


@pytest.mark.parametrize("net_name", ["A", "B"])
@pytest.mark.parametrize("backend", backend_params("numpy", "emulated", "cupy"))
def test_one_step(benchmark, mnist_train, backend, net_name):
    sizes, bs, cost, eta = NETS[net_name]
    be = get_backend(backend)
    net = Network(sizes, cost=cost, backend=be, seed=1)
    X, Y = device_data(net, mnist_train[0][:bs], mnist_train[1][:bs])
    opt = SGD(eta)
    timed(benchmark, be, lambda: net.step(X, Y, opt), rounds=50)


@pytest.mark.parametrize("net_name", ["A", "B"])
@pytest.mark.parametrize("backend", backend_params("numpy", "cupy"))
def test_one_epoch(benchmark, mnist_train, backend, net_name):
    sizes, bs, cost, eta = NETS[net_name]
    be = get_backend(backend)
    net = Network(sizes, cost=cost, backend=be, seed=1)
    X, Y = device_data(net, *mnist_train)
    n, opt = X.shape[0], SGD(eta)

    def epoch():
        for k in range(0, n, bs):
            net.step(X[k:k + bs], Y[k:k + bs], opt)

    rounds = 3 if benchmark.enabled else 1
    timed(benchmark, be, epoch, rounds=rounds, warmup=1 if benchmark.enabled else 0)
    if net_name == "B" and benchmark.enabled:
        flops = flops_per_sample(sizes) * n
        rate = gemm_rate()
        benchmark.extra_info.update(gflops_achieved=flops / benchmark.stats.stats.median / 1e9,
                                    gemm_gflops=rate, gemm_floor_seconds=flops / rate / 1e9)


@pytest.mark.parametrize("backend", ["network-py-loop"])
@pytest.mark.parametrize("net_name", ["A"])
def test_network_py_per_example_reference(benchmark, mnist_train, backend, net_name):
    """Network A the network.py way on 1,000 images; extra_info extrapolates to a 50k epoch."""
    X, y = mnist_train[0][:1000].astype(np.float64), mnist_train[1][:1000]
    benchmark.pedantic(lambda: epoch_slice(X, y, [784, 30, 10], 3.0, 10),
                       rounds=3 if benchmark.enabled else 1, iterations=1)
    if benchmark.enabled:
        benchmark.extra_info["seconds_per_50k_epoch"] = benchmark.stats.stats.median * 50


@pytest.mark.parametrize("backend", ["torch-cpu"])
@pytest.mark.parametrize("net_name", ["A", "B"])
def test_pytorch_eager_epoch(benchmark, mnist_train, backend, net_name):
    """The same network and loop in PyTorch eager on the CPU, when torch is installed."""
    pytest.importorskip("torch", reason="PyTorch is not installed: no PyTorch column")
    from gpubp.bench.contenders import torch_trainer

    sizes, bs, cost, eta = NETS[net_name]
    step, sync, X, Y, name = torch_trainer("cpu", sizes, "float32", mnist_train)
    n = X.shape[0]

    def epoch():
        for k in range(0, n, bs):
            step(X[k:k + bs], Y[k:k + bs])

    benchmark.extra_info["device"] = name
    benchmark.pedantic(epoch, rounds=3 if benchmark.enabled else 1, warmup_rounds=1 if benchmark.enabled else 0,
                       iterations=1)
