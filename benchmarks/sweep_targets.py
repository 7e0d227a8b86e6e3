"""A sweep of K models against one `gpubp train`: marginal seconds per epoch of whole processes.

    GPUBP_DATA_DIR=DIR uv run python benchmarks/sweep_targets.py [--repeats 3] [--models 16]
        [--backend native] [--threads N]

The sweep issue's setup: [784, 30, 10], batch 10, cross-entropy, eta 0.5, float32, plain SGD,
one epoch = 50,000 images. Four commands, each a whole process of this Python (`-m gpubp`):
  train 1, train 11    gpubp train --seed 1 --epochs 1 (then 11) ...: one model, with train's
                       defaults (the training cost and the validation accuracy after each epoch)
  sweep 1, sweep 11    gpubp sweep --seeds 1-K --epochs 1 (then 11) ...: K models (the validation
                       accuracy after each epoch, the test accuracy at the end)
A marginal epoch is (seconds of the 11-epoch process - seconds of the 1-epoch process) / 10: what
one more epoch costs, start-up, data loading, kernel compilation and the last evaluation left out.
Each repeat runs the four commands in turn, so the ratios come from one run on one machine; the
medians over repeats are printed with their spread. The target (the sweep issue): the sweep's
marginal epoch <= 1.1 x 8 x train's, i.e. never slower than K separate processes two at a time.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMON = ["--sizes", "784,30,10", "--batch-size", "10", "--cost", "cross_entropy", "--eta", "0.5", "--quiet"]
TARGET = 1.1 * 8  # the sweep's marginal epoch against one train's, for 16 models: 2 processes at a time, +10 %


def timed(argv) -> float:
    """Seconds of one whole `python -m gpubp ...` process (it must succeed)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gpubp", *argv], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", type=int, default=16)
    ap.add_argument("--backend", default="native")
    ap.add_argument("--threads", type=int, default=None, help="the sweep's --threads (default: its own default)")
    args = ap.parse_args()
    common = [*COMMON, "--backend", args.backend]
    threads = [] if args.threads is None else ["--threads", str(args.threads)]
    commands = {f"train {e}": ["train", "--seed", "1", "--epochs", str(e), *common] for e in (1, 11)}
    commands |= {f"sweep {e}": ["sweep", "--seeds", f"1-{args.models}", "--epochs", str(e), *threads, *common]
                 for e in (1, 11)}
    timed(["train", "--epochs", "1", *common])  # compile (or load) the kernels once, outside every clock
    seconds = {who: [] for who in commands}
    for _ in range(args.repeats):
        for who, argv in commands.items():
            seconds[who].append(timed(argv))
    marginal = {who: [(b - a) / 10 for a, b in zip(seconds[f"{who} 1"], seconds[f"{who} 11"])]
                for who in ("train", "sweep")}
    med = {who: statistics.median(v) for who, v in marginal.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"[784,30,10] batch 10, cross-entropy, eta 0.5, backend {args.backend}, {os.cpu_count()} cores, "
          f"load average {load:.1f} at the end; whole processes, median of {args.repeats}")
    for who, v in seconds.items():
        print(f"  {who:9s} process {statistics.median(v):7.2f} s  [{min(v):.2f}..{max(v):.2f}]")
    for who, v in marginal.items():
        print(f"  {who:9s} marginal epoch {med[who]:7.3f} s  [{min(v):.3f}..{max(v):.3f}]")
    ratio = med["sweep"] / med["train"]
    print(f"  sweep of {args.models} / one train: {ratio:.2f}x one model's marginal epoch "
          f"({med['sweep'] / args.models:.3f} s a model); target <= {TARGET:.1f}x: "
          f"{'met' if ratio <= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
