"""`gpubp bench`: seconds per epoch of real MNIST training steps, CPU against GPU, told honestly.

Per case (network x batch size): build every contender (our backends, PyTorch when it imports),
put MNIST on the device, warm up outside the clock (kernel compilation, context creation, first
allocations, three steps), then time ``repeats`` runs of ``steps`` consecutive training steps,
each repeat timing every contender in turn and synchronizing before each clock stops. A run's
seconds per epoch are its seconds per step times ceil(50_000 / batch); we report the median over
runs and their spread (min..max), samples/s, achieved GFLOP/s from counted FLOPs, and the
GPU/CPU speed-up for each case both backends ran.
"""

from __future__ import annotations

import math
import statistics
import sys
import textwrap
import time

import numpy as np

from .errors import GpubpError
from .fileio import atomic_path

EPOCH_ROWS = 50_000
DEFAULT_SIZES = [[784, 30, 10], [784, 100, 10], [784, 1024, 1024, 10], [784, 4096, 4096, 10]]
DEFAULT_BATCHES = [10, 128, 1024]
QUICK_SIZES = [[784, 30, 10], [784, 100, 10], [784, 1024, 1024, 10]]
COST = "cross_entropy"
ETA = 0.1


def flops_per_sample(sizes) -> int:
    """Multiply-adds x 2 of one sample's training step: forward z = W a (all layers), dC/dW = delta a^T
    (all layers), and delta W (every layer but the first). Bias, sigma and the update are not counted."""
    pairs = list(zip(sizes[1:], sizes[:-1]))
    forward = sum(2 * o * i for o, i in pairs)
    return forward + forward + sum(2 * o * i for o, i in pairs[1:])


def step_bytes(sizes, batch, itemsize=4) -> int:
    """Minimum device memory traffic of one step: weights read three times (forward, delta W, update)
    and written twice (gradient, update), activations and deltas written and read once each."""
    n_w = sum(o * i + o for o, i in zip(sizes[1:], sizes[:-1]))
    acts = batch * sum(sizes)
    return itemsize * (5 * n_w + 4 * acts)


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
    """One way of running a case's training steps: warmed up once, then timed on demand."""

    def __init__(self, step, sync, batches, device, warmup_seconds=0.0, counters=None):
        self.step, self.sync, self.batches, self.device = step, sync, batches, device
        self.warmup_seconds, self.counters, self.per_step = warmup_seconds, counters, []

    def time(self) -> None:
        """Run every prepared batch once; record seconds per step (synchronized before the clock stops)."""
        self.sync()
        t0 = time.perf_counter()
        for Xb, Yb in self.batches:
            self.step(Xb, Yb)
        self.sync()
        self.per_step.append((time.perf_counter() - t0) / len(self.batches))


def ours(backend, sizes, batch, dtype, steps, data) -> Contender:
    """gpubp on ``backend``, warmed up: kernels compiled, workspaces allocated, three steps run."""
    from .backend import get_backend
    from .network import Network

    be = get_backend(backend)
    warm = be.warmup() if hasattr(be, "warmup") else 0.0
    net = Network(sizes, cost=COST, backend=be, dtype=dtype, seed=0)
    X = net._inputs(data[0])
    Y = net._one_hot(net._labels(data[1], len(data[1])))
    work = _batches(X, Y, batch, steps)

    def step(Xb, Yb):
        net._step(Xb, Yb, ETA, 1.0)

    for Xb, Yb in work[:3]:  # first allocations, cuBLAS handles, caches
        step(Xb, Yb)
    be.synchronize()
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
        for layer in layers:
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


def plan(args):
    """Backends, networks, batch sizes, steps and repeats from the CLI arguments (and --quick)."""
    from .backend import BACKEND_NAMES, cupy_status

    ok, why = cupy_status()
    backends = args.backends or ["numpy", "cupy"]
    for b in backends:
        if b not in BACKEND_NAMES or b == "auto":
            raise GpubpError(f"unknown benchmark backend {b!r}: choose from numpy, cupy, emulated")
    skipped = []
    if "cupy" in backends and not ok:  # asked for, or the default: say why it did not run
        backends = [b for b in backends if b != "cupy"]
        skipped.append(f"cupy: {why}")
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    batches = args.batch_sizes or DEFAULT_BATCHES
    if any(b < 1 for b in batches):
        raise GpubpError("batch sizes must be >= 1")
    steps = args.steps or (10 if args.quick else 20)
    repeats = args.repeats or (3 if args.quick else 5)
    if not backends:
        raise GpubpError("no backend left to benchmark: " + "; ".join(skipped))
    return backends, sizes, batches, steps, repeats, skipped


def torch_devices(backends):
    try:
        import torch
    except ImportError:
        return [], "torch is not installed"
    devices = ["cpu"] if "numpy" in backends else []
    if "cupy" in backends and torch.cuda.is_available():
        devices.append("cuda")
    return devices, None


def run(args, log=print) -> dict:
    from . import sysinfo
    from .data import load_mnist

    backends, sizes, batches, steps, repeats, skipped = plan(args)
    tdevs, why_not = torch_devices(backends)
    if why_not:
        skipped.append(f"PyTorch column: {why_not}")
    data = load_mnist(args.data_dir)["train"]
    rate = gemm_rate(args.dtype)
    log(f"{args.dtype} GEMM rate (NumPy, 2048^3): {rate:.0f} GFLOP/s")
    cases = []
    makers = [(b, lambda *a, b=b: ours(b, *a)) for b in backends]
    makers += [(f"torch-{d}", lambda *a, d=d: pytorch(d, *a)) for d in tdevs]
    for s in sizes:
        for batch in batches:
            contenders = [(name, make(s, batch, args.dtype, steps, data)) for name, make in makers]
            for _ in range(repeats):  # each repeat times every contender in turn: ratios from one run
                for _, c in contenders:
                    c.time()
            for name, c in contenders:
                cases.append(summarize(name, s, batch, steps, repeats, c, rate))
                log(f"  {name:10s} {','.join(map(str, s)):>18s} batch {batch:5d}: "
                    f"{cases[-1]['seconds_per_epoch']:8.3f} s/epoch")
            del contenders  # free one case's device memory before the next
    speedups(cases)
    return {"machine": sysinfo.machine(), "dtype": args.dtype, "cost": COST, "steps": steps, "repeats": repeats,
            "epoch_rows": EPOCH_ROWS, "gemm_gflops": rate, "cases": cases, "skipped": skipped}


def summarize(name, sizes, batch, steps, repeats, c: Contender, rate) -> dict:
    per_step = c.per_step
    steps_per_epoch = math.ceil(EPOCH_ROWS / batch)
    epoch = [t * steps_per_epoch for t in per_step]
    med = statistics.median(per_step)
    flops = flops_per_sample(sizes) * batch
    return {"backend": name, "sizes": list(sizes), "batch": batch, "steps": steps, "repeats": repeats,
            "device": c.device, "per_step_seconds": list(per_step), "seconds_per_epoch": statistics.median(epoch),
            "seconds_per_epoch_min": min(epoch), "seconds_per_epoch_max": max(epoch),
            "samples_per_second": batch / med, "gflops": flops / med / 1e9,
            "flops_per_step": flops, "bytes_per_step": step_bytes(sizes, batch),
            "gemm_floor_seconds_per_epoch": flops * steps_per_epoch / (rate * 1e9),
            "warmup_seconds": c.warmup_seconds, "counters_per_step": c.counters}


def speedups(cases) -> None:
    """speedup_vs_numpy: numpy's median seconds / this case's, for every case numpy also ran."""
    base = {(tuple(c["sizes"]), c["batch"]): c["seconds_per_epoch"] for c in cases if c["backend"] == "numpy"}
    for c in cases:
        ref = base.get((tuple(c["sizes"]), c["batch"]))
        c["speedup_vs_numpy"] = ref / c["seconds_per_epoch"] if ref else None


def table(result) -> str:
    rows = ["| backend | network | batch | s/epoch (median) | spread (min..max) | samples/s | GFLOP/s | vs numpy |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in result["cases"]:
        sp = f"{c['speedup_vs_numpy']:.2f}x" if c["speedup_vs_numpy"] else "-"
        rows.append(f"| {c['backend']} | {','.join(map(str, c['sizes']))} | {c['batch']} | "
                    f"{c['seconds_per_epoch']:.3f} | {c['seconds_per_epoch_min']:.3f}..{c['seconds_per_epoch_max']:.3f} | "
                    f"{c['samples_per_second']:,.0f} | {c['gflops']:.1f} | {sp} |")
    return "\n".join(rows)


def _pyplot():
    """matplotlib.pyplot on the non-interactive backend, or a one-line error naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GpubpError("--plot needs matplotlib: pip install 'gpubp[plot]'") from None
    return plt


def plot(result, path) -> None:
    """Write the figure of ``result`` to ``path`` (PNG), atomically."""
    plt = _pyplot()
    fig = figure(result)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


def figure(result):
    """Two panels: samples/s vs batch size (a line per network and backend), and GPU/CPU speed-up
    vs batch size (a line per network), or the reason there is none."""
    fig, (left, right) = _pyplot().subplots(1, 2, figsize=(12, 4.8))
    nets = sorted({tuple(c["sizes"]) for c in result["cases"]}, key=lambda s: sum(s))
    backends = list(dict.fromkeys(c["backend"] for c in result["cases"]))
    styles = ["-", "--", ":", "-."]
    for ni, s in enumerate(nets):
        for bi, b in enumerate(backends):
            pts = sorted((c["batch"], c["samples_per_second"]) for c in result["cases"]
                         if tuple(c["sizes"]) == s and c["backend"] == b)
            if pts:
                left.plot(*zip(*pts), styles[bi % 4], marker="o", color=f"C{ni}", label=f"{b} {','.join(map(str, s))}")
        gpu = sorted((c["batch"], c["speedup_vs_numpy"]) for c in result["cases"]
                     if tuple(c["sizes"]) == s and c["backend"] == "cupy" and c["speedup_vs_numpy"])
        if gpu:
            right.plot(*zip(*gpu), marker="o", color=f"C{ni}", label=",".join(map(str, s)))
    left.set(xscale="log", yscale="log", xlabel="batch size", ylabel="training samples / s",
             title=f"Throughput ({result['dtype']}, {result['machine']['cpu']})")
    left.legend(fontsize=7)
    right.set(xscale="log", xlabel="batch size", ylabel="GPU / CPU speed-up (x)", title="CuPy vs NumPy")
    if right.lines:
        right.axhline(1.0, color="grey", lw=0.8)
        right.legend(fontsize=8)
    else:
        reason = next((s for s in result["skipped"] if s.startswith("cupy")), "no GPU case was run")
        right.text(0.5, 0.5, "no GPU measured here:\n" + textwrap.fill(reason, 48), ha="center", va="center",
                   transform=right.transAxes, fontsize=9)
        right.set_xticks([])
        right.set_yticks([])
    fig.tight_layout()
    return fig


def run_cli(args) -> int:
    from .cli import write_json

    if args.plot:
        _pyplot()  # fail now, not after the sweep
    result = run(args, log=lambda m: print(m, file=sys.stderr))
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, NumPy {m['numpy']} ({m['blas']['name']} "
          f"{m['blas']['version']}, {m['blas']['threads']} threads), GPU: {m['gpu'] or 'none'}")
    print(f"{result['dtype']}, cost {result['cost']}, {result['steps']} steps x {result['repeats']} repeats per case, "
          f"epoch = {EPOCH_ROWS} samples; GEMM rate {result['gemm_gflops']:.0f} GFLOP/s\n")
    print(table(result))
    for s in result["skipped"]:
        print(f"\nskipped: {s}")
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot(result, args.plot)
    return 0
