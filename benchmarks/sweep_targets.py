"""K models at once against one: seconds per training epoch on the CPU, interleaved.

    GPUBP_DATA_DIR=DIR python benchmarks/sweep_targets.py [--repeats 5] [--models 16] [--batch 10]

Network A, [784, 30, 10], quadratic, eta 3.0, float32, plain SGD, one epoch = 50,000 images:
  one model   an epoch of gpubp.train, its record's seconds (synchronized): its shuffle (one gather
              of the training set on the device) and 5,000 steps
  K stacked   gpubp.sweeps.Group.epoch: K permutations, and 5,000 stack steps that each gather
              their K batches (the Stack of K seeds is one group of `gpubp sweep`)
  K in 2 threads  two groups of K/2 models, each in its own thread, at once: NumPy lets go of the
              GIL inside its BLAS calls and large elementwise loops, so two cores can share the work
Each repeat runs every contender in turn: one model trains two epochs in one train() call and the
second is timed (its first touches freshly allocated shuffled copies, 157 MB, and on this VM
memory left cold for a few seconds comes back slowly, so an epoch right after the others ran is
up to 50 % slower), then one epoch of each stacked contender. Medians, their spread, and the
ratio to one model's epoch. The target (the sweep issue): K = 16 in <= 4x one model's time.
"""

import argparse
import os
import statistics
import threading
import time

from gpubp import Network, load_mnist, train
from gpubp.sweeps import Group, grid


def stacked(data, models, batch):
    """The K-model contenders: {name: a function that trains one epoch}."""
    def runs(seeds):
        return grid(seeds, etas=[3.0], sizes=[784, 30, 10], batch_size=batch, epochs=1)

    whole = Group(runs(range(1, models + 1)), data, "numpy")
    halves = [Group(runs(range(1 + h * models // 2, 1 + (h + 1) * models // 2)), data, "numpy") for h in (0, 1)]

    def threads():
        other = threading.Thread(target=halves[1].epoch)
        other.start()
        halves[0].epoch()
        other.join()

    return {f"{models} stacked": whole.epoch, f"{models} in 2 threads": threads}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", type=int, default=16)
    ap.add_argument("--batch", type=int, default=10)
    args = ap.parse_args()
    data = load_mnist(os.environ.get("GPUBP_DATA_DIR"))
    others = stacked(data, args.models, args.batch)
    net = Network([784, 30, 10], backend="numpy", seed=1)

    def one():
        history = train(net, data["train"], epochs=2, mini_batch_size=args.batch, eta=3.0,
                        monitor_training_cost=False, progress=False)
        return history[-1]["seconds"]

    fns = {"one model": one, **others}
    for fn in fns.values():  # warm up: workspaces, the first touch of every buffer
        fn()
    runs = {who: [] for who in fns}
    for _ in range(args.repeats):
        for who, fn in fns.items():
            t0 = time.perf_counter()
            seconds = fn()
            runs[who].append(seconds if who == "one model" else time.perf_counter() - t0)
    med = {who: statistics.median(v) for who, v in runs.items()}
    steps = -(-len(data["train"][0]) // args.batch)
    print(f"[784, 30, 10], batch {args.batch}, float32, numpy, {os.cpu_count()} cores: seconds per epoch, "
          f"median of {args.repeats}")
    for who, v in runs.items():
        ratio = "" if who == "one model" else f"  {med[who] / med['one model']:5.2f}x one model"
        print(f"  {who:18s} {med[who]:7.3f}  [{min(v):.3f}..{max(v):.3f}]  "
              f"{1e6 * med[who] / steps:6.1f} us/step{ratio}")


if __name__ == "__main__":
    main()
