"""What a benchmark case's numbers mean: FLOPs and bytes of a step, the summary of a case's
repeats, speed-ups against NumPy, and the Markdown table `gpubp bench` prints."""

from __future__ import annotations

import math
import statistics

EPOCH_ROWS = 50_000  # MNIST's training rows; an epoch is the training set actually loaded
NOISY = 2.0  # repeats whose slowest is more than this many times their fastest measured a busy machine


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


def summarize(name, sizes, batch, steps, repeats, c, rate, rows=EPOCH_ROWS) -> dict:
    """One case: per-step seconds of every repeat, their median per epoch, spread, throughput, GFLOP/s.

    A step runs min(batch, rows) rows (a batch larger than the training set is the whole set), so
    throughput and FLOPs count those, and an epoch is ceil(rows / batch) steps."""
    per_step = c.per_step
    batch_rows = min(batch, rows)
    steps_per_epoch = math.ceil(rows / batch_rows)
    epoch = [t * steps_per_epoch for t in per_step]
    med = statistics.median(per_step)
    flops = flops_per_sample(sizes) * batch_rows
    case = {"backend": name, "sizes": list(sizes), "batch": batch, "batch_rows": batch_rows, "steps": steps,
            "repeats": repeats, "device": c.device, "per_step_seconds": list(per_step),
            "seconds_per_epoch": statistics.median(epoch), "seconds_per_epoch_min": min(epoch),
            "seconds_per_epoch_max": max(epoch), "samples_per_second": batch_rows / med, "gflops": flops / med / 1e9,
            "flops_per_step": flops, "bytes_per_step": step_bytes(sizes, batch_rows),
            "gemm_floor_seconds_per_epoch": flops * steps_per_epoch / (rate * 1e9),
            "warmup_seconds": c.warmup_seconds, "counters_per_run": c.counters, "warnings": []}
    if min(per_step) > 0 and max(per_step) / min(per_step) > NOISY:
        case["warnings"].append(
            f"{case_name(case)}: its repeats disagree by {max(per_step) / min(per_step):.1f}x "
            f"({min(epoch):.3f}..{max(epoch):.3f} s/epoch): the machine was busy; its median is not to be trusted")
    return case


def case_name(c) -> str:
    return f"{c['backend']} {','.join(map(str, c['sizes']))} batch {c['batch']}"


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
        batch = c["batch"] if c.get("batch_rows", c["batch"]) == c["batch"] else f"{c['batch']} ({c['batch_rows']} ran)"
        rows.append(f"| {c['backend']} | {','.join(map(str, c['sizes']))} | {batch} | "
                    f"{c['seconds_per_epoch']:.3f} | {c['seconds_per_epoch_min']:.3f}..{c['seconds_per_epoch_max']:.3f} | "
                    f"{c['samples_per_second']:,.0f} | {c['gflops']:.1f} | {sp} |")
    return "\n".join(rows)


