"""`gpubp bench`: seconds per epoch of real MNIST training steps, CPU against GPU, told honestly.

Per case (network x batch size): build every contender (our backends, PyTorch when it imports),
put MNIST on the device, warm up outside the clock (kernel compilation, context creation, first
allocations, a first run), then time ``repeats`` runs of ``steps`` training steps (ours: one epoch
of the driver that training uses over those steps' rows), each repeat timing every contender in
turn and synchronizing before each clock stops. A run's
seconds per epoch are its seconds per step times ceil(rows / batch), rows being the training set
(50 000 for MNIST; a batch larger than that runs all of them); we report the median over runs and
their spread (min..max), samples/s, achieved GFLOP/s from counted FLOPs, and the GPU/CPU speed-up
for each case both backends ran. A busy machine (load average per core) and repeats that disagree
by more than 2x are warned about and recorded, as is Ctrl-C, which keeps the cases finished.

Modules: contenders (what is timed), report (what the numbers mean, the table), plot (the
figure), nielsen (network.py's per-example loop, the book's own speed).
"""

from __future__ import annotations

import os
import time

from ..backends import REGISTRY
from ..errors import GpubpError
from .contenders import gemm_rate, ours, pytorch
from .report import (
    EPOCH_ROWS,
    case_name,
    flops_per_sample,
    speedups,
    step_bytes,
    summarize,
    table,
)

DEFAULT_SIZES = [[784, 30, 10], [784, 100, 10], [784, 1024, 1024, 10], [784, 4096, 4096, 10]]
DEFAULT_BATCHES = [10, 128, 1024]
QUICK_SIZES = [[784, 30, 10], [784, 100, 10], [784, 1024, 1024, 10]]
BENCH_BACKENDS = tuple(REGISTRY)
# NumPy (the reference every speed-up is against), our kernels compiled for the CPU (the fast one
# there), and CuPy where a GPU answers (else skipped, saying why).
DEFAULT_BACKENDS = ("numpy", "native", "cupy")
# Load average per core above which the numbers are suspect. BLAS runs a thread on every core and
# waits for the slowest, so one other busy process already distorts a CPU case: before the start
# (only other work counts) a quarter of the cores busy is too many; while running, this benchmark
# itself keeps every core busy, so only a quarter beyond one per core says that something else competed.
BUSY_BEFORE, BUSY_DURING = 0.25, 1.25
# A pause before each contender's timing: OpenBLAS's threads (NumPy, PyTorch) spin for a while after
# their last call, and on a machine with few cores they would take the next contender's cores (the
# native backend's 20 steps of [784,1024,1024,10] timed right after NumPy's ran 1.5x slower than
# after 0.2 s of quiet).
SETTLE_SECONDS = 0.25

__all__ = [
    "EPOCH_ROWS",
    "SETTLE_SECONDS",
    "case_name",
    "flops_per_sample",
    "gemm_rate",
    "machine_load",
    "plan",
    "run",
    "step_bytes",
    "table",
]


def plan(backends=None, sizes=None, batch_sizes=None, steps=None, repeats=None, quick=False):
    """Backends, networks, batch sizes, steps, repeats and the skipped backends' reasons."""
    from ..backends import cupy_status

    ok, why = cupy_status()
    default = not backends
    backends = list(backends or DEFAULT_BACKENDS)
    for b in backends:
        if b not in BENCH_BACKENDS:
            raise GpubpError(f"unknown benchmark backend {b!r}: choose from {', '.join(BENCH_BACKENDS)}")
    skipped = []
    if "cupy" in backends and not ok:  # asked for, or the default: say why it did not run
        backends = [b for b in backends if b != "cupy"]
        skipped.append(f"cupy: {why}")
    if default:  # the native backend needs a C++ compiler: without one, the default says so and goes on
        from ..backends import get_backend

        try:
            get_backend("native")
        except GpubpError as e:
            backends.remove("native")
            skipped.append(f"native: {e}")
    sizes = sizes or (QUICK_SIZES if quick else DEFAULT_SIZES)
    batches = batch_sizes or DEFAULT_BATCHES
    if any(b < 1 for b in batches):
        raise GpubpError("batch sizes must be >= 1")
    steps = steps or (10 if quick else 20)
    repeats = repeats or (3 if quick else 5)
    if not backends:
        raise GpubpError("no backend left to benchmark: " + "; ".join(skipped))
    return backends, sizes, batches, steps, repeats, skipped


# The PyTorch device that races each backend (none beside the emulator, which proves kernels, not speed).
TORCH_DEVICES = {"numpy": "cpu", "native": "cpu", "cupy": "cuda"}


def torch_devices(backends):
    """PyTorch devices to run beside ours (TORCH_DEVICES of the backends benched), or why none."""
    try:
        import torch
    except ImportError:
        return [], "torch is not installed"
    from ..backends import get_backend

    wanted = {TORCH_DEVICES.get(get_backend(b).name) for b in backends} - {None}
    devices = [d for d in ("cpu", "cuda") if d in wanted and (d == "cpu" or torch.cuda.is_available())]
    return devices, None


ROUTES = ("blas", "own")
MODES = ("eager", "graph")


def variants(backends, routes=ROUTES, modes=MODES) -> tuple[list, list]:
    """([(row name, backend, route, graph)], [why a variant was left out]): every route and mode each
    backend can run, named <backend>[-own][-graph]; the default "numpy" and "cupy" rows are the blas
    route, eager."""
    from ..backends import get_backend

    found, skipped = [], []
    for b in backends:
        be = get_backend(b)
        for gemm in routes:
            if gemm == "own" and not be.compiles_kernels:
                continue  # the NumPy backend runs no kernels: nothing to say
            for mode in modes:
                name = b + ("-own" if gemm == "own" else "") + ("-graph" if mode == "graph" else "")
                if mode == "graph":
                    ok, why = be.graph_support(gemm)
                    if not ok:
                        if b != "numpy":
                            skipped.append(f"{name}: {why}")
                        continue
                found.append((name, b, gemm, mode == "graph"))
    return found, skipped


def _maker(backend, gemm, graph):
    return lambda s, batch, dtype, steps, data: ours(backend, s, batch, dtype, steps, data, gemm=gemm, graph=graph)


def run(backends=None, sizes=None, batch_sizes=None, steps=None, repeats=None, dtype="float32", quick=False,
        data_dir=None, log=print, verify=True, routes=ROUTES, modes=MODES) -> dict:
    """Benchmark every case; returns {"machine", "dtype", "cost", "steps", "repeats", "epoch_rows", "cases",
    "skipped", "load", "warnings", ...}. Each warning is also logged as "warning: ...".

    Ctrl-C (KeyboardInterrupt) during the cases ends the sweep early: the result holds the cases
    finished and "interrupted" names the case that was running."""
    from .. import sysinfo
    from ..data import load_mnist
    from .contenders import COST

    backends, sizes, batches, steps, repeats, skipped = plan(backends, sizes, batch_sizes, steps, repeats, quick)
    tdevs, why_not = torch_devices(backends)
    if why_not:
        skipped.append(f"PyTorch column: {why_not}")
    before = machine_load()
    data = load_mnist(data_dir, verify=verify)["train"]
    rows = len(data[0])
    rate = gemm_rate(dtype)
    log(f"{dtype} GEMM rate (NumPy, 2048^3): {rate:.0f} GFLOP/s")
    result = {"machine": sysinfo.machine(), "dtype": dtype, "cost": COST, "steps": steps, "repeats": repeats,
              "epoch_rows": rows, "gemm_gflops": rate, "cases": [], "skipped": skipped,
              "load": {"cores": before["cores"], "before": before}, "warnings": [], "interrupted": None}

    def warn(message):
        result["warnings"].append(message)
        log(f"warning: {message}")

    if before["per_core"] > BUSY_BEFORE:
        warn(f"the machine was busy before the benchmark started (load average {before['load_1min']:.2f} on "
             f"{before['cores']} cores, {before['per_core']:.2f} per core): its times include other work")
    found, why_not = variants(backends, routes, modes)
    skipped += why_not
    makers = [(name, _maker(b, gemm, graph)) for name, b, gemm, graph in found]
    makers += [(f"torch-{d}", lambda *a, d=d: pytorch(d, *a)) for d in tdevs]
    for s in sizes:
        for batch in batches:
            try:
                _case(result, makers, s, batch, dtype, steps, repeats, data, rate, rows, log, warn)
            except KeyboardInterrupt:
                result["interrupted"] = f"{','.join(b for b, _ in makers)} {','.join(map(str, s))} batch {batch}"
                break
        if result["interrupted"]:
            break
    result["load"]["after"] = machine_load()
    speedups(result["cases"])
    return result


def _case(result, makers, s, batch, dtype, steps, repeats, data, rate, rows, log, warn) -> None:
    """Time every contender on one network and batch size; append their summaries to result["cases"]."""
    contenders = [(name, make(s, batch, dtype, steps, data)) for name, make in makers]
    for _ in range(repeats):  # each repeat times every contender in turn: ratios from one run
        for _, c in contenders:
            time.sleep(SETTLE_SECONDS)
            c.time()
    load = machine_load()
    if load["per_core"] > BUSY_DURING and not any("busier than" in w for w in result["warnings"]):
        warn(f"the machine was busier than this benchmark alone can make it (load average {load['load_1min']:.2f} "
             f"on {load['cores']} cores, {load['per_core']:.2f} per core, after {','.join(map(str, s))} batch {batch})")
    for name, c in contenders:
        case = summarize(name, s, batch, steps, repeats, c, rate, rows)
        case["load_per_core"] = load["per_core"]
        result["cases"].append(case)
        for w in case["warnings"]:
            warn(w)
        log(f"  {name:10s} {','.join(map(str, s)):>18s} batch {batch:5d}: {case['seconds_per_epoch']:8.3f} s/epoch")


def machine_load() -> dict:
    """The 1-minute load average, the core count and their ratio (None where the OS has no load average)."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # Windows has none
        return {"load_1min": None, "cores": cores, "per_core": 0.0}
    return {"load_1min": load, "cores": cores, "per_core": load / cores}
