"""Network A and B on the CPU beside PyTorch eager and network.py's per-example loop, interleaved.

    GPUBP_DATA_DIR=DIR python benchmarks/cpu_targets.py [--repeats 5]

A = [784, 30, 10], batch 10, quadratic, eta 3.0; B = [784, 1024, 1024, 10], batch 128,
cross-entropy, eta 0.5; float32, plain SGD, one epoch = 50,000 images. Each repeat times every
contender once, in turn, so the ratios printed come from one run on one (noisy) machine.
"gpubp" is the numpy backend, step by step from Python; "gpubp native" the native backend
(--backend native: our kernels compiled for this CPU, the epoch one replayed graph); both run an
epoch through gpubp.training.Epochs, as gpubp train does (shuffle, gathers, steps, one sync).
network.py's loop runs on 2,000 images and is scaled by 25. B's floor is its FLOPs at the GEMM
rate measured between repeats. PyTorch is optional: without it its rows are left out.
Targets: A >= 15x network.py's loop and >= 6x PyTorch eager; B <= 1.3x its GEMM floor and
PyTorch eager >= 1.1x B's time. Ratios are printed against both gpubp rows.
"""

import argparse
import os
import statistics
import time

import numpy as np
from benchutil import NETS  # this script's directory is on sys.path when it runs

from gpubp import Network, load_mnist
from gpubp.bench import SETTLE_SECONDS, flops_per_sample, gemm_rate
from gpubp.bench.contenders import torch_trainer
from gpubp.bench.nielsen import epoch_slice
from gpubp.errors import BackendUnavailable
from gpubp.optimizers import SGD
from gpubp.training import Epochs, graph_mode

LOOP_ROWS = 2000


def contenders(name, data):
    sizes, bs, cost, eta = NETS[name]
    n = len(data[0])
    out = {}
    for who, backend in (("gpubp", "numpy"), ("gpubp native", "native")):
        try:  # through the epoch driver, as gpubp train runs: native's epoch is one replayed graph of the own route
            net = Network(sizes, cost=cost, backend=backend, seed=1)
            driver = Epochs(net, net.to_device(data[0]), net.labels(data[1]), bs, SGD(eta).bind(net),
                            graph=graph_mode(net)[0])
            driver.epoch()  # workspaces, the capture
            out[who] = driver.epoch
        except BackendUnavailable as e:
            print(f"  (no {backend} row: {e})")
    try:
        step, _, TX, TY, _ = torch_trainer("cpu", sizes, "float32", data)
        out["pytorch eager"] = lambda: [step(TX[k:k + bs], TY[k:k + bs]) for k in range(0, n, bs)]
    except ImportError:
        pass
    if name == "A":
        X64, y = data[0][:LOOP_ROWS].astype(np.float64), data[1][:LOOP_ROWS]
        out["network.py loop"] = lambda: epoch_slice(X64, y, sizes, eta, bs)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    data = load_mnist(os.environ.get("GPUBP_DATA_DIR"))["train"]
    for name in ("A", "B"):
        runs, rates = {}, []
        fns = contenders(name, data)
        for _ in range(args.repeats):
            for who, fn in fns.items():
                time.sleep(SETTLE_SECONDS)  # the previous contender's BLAS threads stop spinning
                t0 = time.perf_counter()
                fn()
                scale = len(data[0]) / LOOP_ROWS if who == "network.py loop" else 1
                runs.setdefault(who, []).append((time.perf_counter() - t0) * scale)
            rates.append(gemm_rate())
        med = {who: statistics.median(v) for who, v in runs.items()}
        print(f"network {name} {NETS[name][0]}, batch {NETS[name][1]}: seconds per epoch, median of {args.repeats}")
        ours = [who for who in ("gpubp", "gpubp native") if who in med]
        for who, v in runs.items():
            ratio = "" if who in ours else "  (" + ", ".join(f"{med[who] / med[o]:.2f}x {o}'s time" for o in ours) + ")"
            print(f"  {who:16s} {med[who]:7.3f}  [{min(v):.3f}..{max(v):.3f}]{ratio}")
        if name == "B":
            rate = statistics.median(rates)
            flops = flops_per_sample(NETS[name][0]) * len(data[0])
            floor = flops / rate / 1e9
            print(f"  GEMM floor       {floor:7.3f}  at the measured {rate:.0f} GFLOP/s (NumPy's BLAS); "
                  + "; ".join(f"{o} is {med[o] / floor:.2f}x the floor, {flops / med[o] / 1e9:.0f} GFLOP/s" for o in ours))


if __name__ == "__main__":
    main()
