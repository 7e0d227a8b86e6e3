"""K models at once against one: seconds per training epoch on the CPU, interleaved.

    GPUBP_DATA_DIR=DIR python benchmarks/sweep_targets.py [--repeats 5] [--models 16] [--batch 10]

Network A, [784, 30, 10], quadratic, eta 3.0, float32, plain SGD, one epoch = 50,000 images:
  one model   an epoch of gpubp.train, wall clock from the end of one epoch to the end of the next:
              its shuffle (one gather of the training set), 5,000 steps and its finiteness check
              (its record's "seconds" leave the gather out; this does not)
  K stacked   gpubp.sweeping.Group.epoch, wall clock: K permutations and 5,000 stack steps, each
              gathering its K batches (the Stack of K seeds is one group of `gpubp sweep`)
  K in 2 threads  two groups of K/2 models, each in its own thread, at once: NumPy lets go of the
              GIL inside its BLAS calls and large elementwise loops, so two cores can share the work
The single model trains repeats + 1 epochs in one train() call (so its shuffled copies are
allocated once, as in a real run); after each of its epochs, its on_epoch callback times one epoch
of each other contender, so every repeat runs every contender once, in turn. Medians, their spread,
and each one's ratio to one model's epoch, wall clock and steps only. The target (the sweep issue):
K = 16 in <= 4x one model's. On this VM the single model's wall clock grows when the others ran
between its epochs (its 157 MB shuffled copy is cold again: the kernel's DAMON reclaim, kdamond,
runs here), so the steps-only ratio is the one to quote; it also favours the single model (the
stacked contenders' figures include their gathers).
"""

import argparse
import os
import statistics
import threading
import time

from gpubp import Network, load_mnist, train
from gpubp.sweeping import Group, grid


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
    for fn in others.values():  # warm up: workspaces, the first touch of every buffer
        fn()
    runs = {"one model": [], "one model, steps": [], **{who: [] for who in others}}
    marks = []  # (end of a single-model epoch, start of the next)

    def between(record):
        end = time.perf_counter()
        runs["one model, steps"].append(record["seconds"])
        for who, fn in others.items():
            t0 = time.perf_counter()
            fn()
            runs[who].append(time.perf_counter() - t0)
        marks.append((end, time.perf_counter()))

    net = Network([784, 30, 10], backend="numpy", seed=1)
    train(net, data["train"], epochs=args.repeats + 1, mini_batch_size=args.batch, eta=3.0,
          monitor_training_cost=False, progress=False, on_epoch=between)
    runs["one model"] = [end - start for (_, start), (end, _) in zip(marks, marks[1:])]  # epochs 2 onwards
    for who in ["one model, steps", *others]:
        runs[who] = runs[who][1:]  # beside epochs 2 onwards
    med = {who: statistics.median(v) for who, v in runs.items()}
    steps = -(-len(data["train"][0]) // args.batch)
    print(f"[784, 30, 10], batch {args.batch}, float32, numpy, {os.cpu_count()} cores: seconds per epoch, "
          f"median of {args.repeats}")
    for who, v in runs.items():
        ratios = "" if who.startswith("one") else \
            f"  {med[who] / med['one model']:5.2f}x one model, {med[who] / med['one model, steps']:5.2f}x its steps"
        print(f"  {who:18s} {med[who]:7.3f}  [{min(v):.3f}..{max(v):.3f}]  {1e6 * med[who] / steps:6.1f} us/step{ratios}")


if __name__ == "__main__":
    main()
