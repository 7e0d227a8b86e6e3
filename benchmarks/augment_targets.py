"""What augmenting a training epoch costs on the native backend, against an epoch of training and
against SciPy image by image, interleaved.

    GPUBP_DATA_DIR=DIR python benchmarks/augment_targets.py [--repeats 3] [--scipy-rows 1000]

Each repeat times, in turn: gpubp.Augment(shift 2, rotate 15, scale 0.15, shear 10, elastic alpha 34
sigma 4) over the 50,000 training images (float32) on the native backend, a new epoch's key each time
(the plan and its workspaces made once, before the clock, as training makes them); one epoch of
[784, 800, 800, 10] (ReLU, log-likelihood, batch 100, eta 0.1) through Network.sgd on the native
backend (no training-cost pass); and the same distortions by SciPy, image by image (a uniform(-1, 1)
field per axis, gaussian_filter, the affine map, map_coordinates: the per-image pipeline a user would
write), on --scipy-rows images scaled to 50,000. Medians of wall-clock seconds, and the process's CPU
seconds (all its threads) for augmentation and SciPy: the work each does whatever the cores it gets,
whose ratio a loaded machine disturbs less. The native augmentation splits its images between the
cores (OMP_NUM_THREADS=1 keeps it on one), SciPy runs on one. Targets: augmenting an epoch <= 15 % of a training epoch; the native kernels >= 20x
SciPy's per-image pipeline.
"""

import argparse
import math
import os
import statistics
import time

import numpy as np

from gpubp import Augment, Network, load_mnist, sysinfo
from gpubp.backends import get_backend

AUG = Augment(shift=2, rotate=15, scale=0.15, shear=10, elastic_alpha=34, elastic_sigma=4)
SIZES, BATCH, ETA = [784, 800, 800, 10], 100, 0.1


def scipy_pipeline(X, aug, rng):
    """SciPy per image: what the distortion costs written the usual way (not bit-equal to ours: its own draws)."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    h = w = 28
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    px, py, c = x - (w - 1) / 2, y - (h - 1) / 2, (w - 1) / 2
    radius = aug.radius(h, w)
    out = np.empty_like(X)
    for i, img in enumerate(X):
        theta = math.radians(aug.rotate) * rng.uniform(-1, 1)
        s = 1 + aug.scale * rng.uniform(-1, 1)
        t = math.tan(math.radians(aug.shear) * rng.uniform(-1, 1))
        tx, ty = aug.shift * rng.uniform(-1, 1, 2)
        cs, sn = math.cos(theta), math.sin(theta)
        sx = (cs * px + (cs * t - sn) * py) / s + c + tx
        sy = (sn * px + (sn * t + cs) * py) / s + c + ty
        sx += aug.elastic_alpha * gaussian_filter(rng.uniform(-1, 1, (h, w)), aug.elastic_sigma, mode="constant",
                                                  radius=radius)
        sy += aug.elastic_alpha * gaussian_filter(rng.uniform(-1, 1, (h, w)), aug.elastic_sigma, mode="constant",
                                                  radius=radius)
        out[i] = map_coordinates(img.reshape(h, w), [sy, sx], order=1, mode="grid-constant").reshape(-1)
    return out


def clocked(fn):
    """(wall seconds, CPU seconds of this process) of fn()."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scipy-rows", type=int, default=1000)
    args = p.parse_args()
    data = load_mnist(os.environ.get("GPUBP_DATA_DIR"))
    X, y = data["train"]
    n = len(X)
    be = get_backend("native")
    be.warmup()
    plan = AUG.plan(be, np.float32, 28, 28)
    Xd, out = be.to_device(X, np.float32), be.empty(X.shape, np.float32)
    net = Network(SIZES, cost="log_likelihood", activation="relu", backend="native", dtype="float32", seed=1)
    net.sgd((X[:1000], y[:1000]), epochs=1, mini_batch_size=BATCH, eta=ETA, monitor_training_cost=False,
            progress=False)  # compile and size everything once, outside the clock
    rng = np.random.default_rng(0)
    scipy_pipeline(X[:2], AUG, rng)  # SciPy imported and warm, outside the clock
    rows = min(args.scipy_rows, n)
    times = {"augment": [], "epoch": [], "scipy": []}
    for r in range(args.repeats):
        def augment(epoch=r):
            plan.set_epoch(1, epoch)
            plan.run(Xd, out)
            be.synchronize()

        times["augment"].append(clocked(augment))
        times["epoch"].append(clocked(lambda: net.sgd((X, y), epochs=1, mini_batch_size=BATCH, eta=ETA,
                                                      monitor_training_cost=False, progress=False)))
        wall, cpu = clocked(lambda: scipy_pipeline(X[:rows], AUG, rng))
        times["scipy"].append((wall * n / rows, cpu * n / rows))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f} s" for k, v in times.items()), flush=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    m = sysinfo.machine()
    print(f"\n{m['cpu']}, {m['cores']} cores; native: {be.device}; load average {os.getloadavg()[0]:.1f}")
    print(f"medians of {args.repeats} repeats, seconds per 50,000 images (SciPy: {rows} images scaled):")
    print(f"  augment, native kernels   {med['augment'][0]:7.2f} wall  {med['augment'][1]:7.2f} cpu  "
          f"({med['augment'][0] / n * 1e6:.1f} us/image)")
    print(f"  epoch {SIZES} batch {BATCH}, native  {med['epoch'][0]:7.2f} wall")
    print(f"  SciPy per image           {med['scipy'][0]:7.2f} wall  {med['scipy'][1]:7.2f} cpu  "
          f"({med['scipy'][0] / n * 1e6:.1f} us/image)")
    share = med["augment"][0] / med["epoch"][0]
    print(f"augment / epoch: {share:.1%} (target <= 15 %)")
    print(f"SciPy / native kernels: {med['scipy'][0] / med['augment'][0]:.1f}x wall, "
          f"{med['scipy'][1] / med['augment'][1]:.1f}x cpu (target >= 20x)")


if __name__ == "__main__":
    main()
