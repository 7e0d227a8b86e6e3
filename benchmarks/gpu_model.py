"""What a GPU should buy, by a model (not a measurement), beside CPU rows measured by `gpubp bench`.

    uv run python benchmarks/gpu_model.py bench.json [--gpu h100|a100]    prints the README's model table
    uv run python benchmarks/gpu_model.py --stack 16,64,256 [--gpu h100|a100]   the README's sweep rows

For each network and batch size the bench measured on NumPy, a GPU step on each route and mode
takes the largest of four times, and the table names which one bounds it; it compares the GPU's
epoch with NumPy's and with the fastest CPU row measured (numpy, native or PyTorch):
  flops    the step's FLOPs at an efficiency of the GPU's float32 peak: cuBLAS 60 % (blas route);
           our tiles 40 % of cuBLAS, i.e. 24 % of peak (own route: a 64x64 tile with 4x4 register
           blocking and no double buffering is between kernels 4 and 5 of Boehm's "How to optimize
           a CUDA matmul kernel for cuBLAS-like performance" (2022), which reached 36 % and 69 % of
           cuBLAS on an A6000 at 4096^3; we take the lower side because our tiles are smaller).
  bytes    its minimum memory traffic (gpubp.bench.report.step_bytes) at 70 % of peak bandwidth.
  launches eager: every kernel and library call issued from Python, 10 us of host time each (CuPy's
           call path; CUDA.jl measures ~6 us per launch for an MLP at batch 16: 50 us for 8 kernels);
           graph: 0.875 us per replayed node (CUDA.jl's graphs page: 80 kernels, 260 -> 70 us).
  latency  the serial K loops a small product cannot hide: each K slice of a tile waits for one
           global-memory round trip (HBM latency on Hopper is 400-600 cycles, ~0.3 us; 0.5 us with
           the slice's barriers), slices of 32 (cuBLAS, our small tile) or 16 (our large and output
           tiles) along K; an elementwise kernel counts as one slice.
Peaks: H100 SXM 67 TFLOP/s float32, 3.35 TB/s; A100 SXM 19.5 TFLOP/s, 1.9 TB/s (NVIDIA datasheets).

A stack of K models (gpubp sweep, the blas route, eager) issues the same kernels as one model with
three differences: every product is one strided-batched cuBLAS call over the K models (each model's
matrix as small as one model's: the same K slices, so the same latency); plain SGD's update cannot
ride in a batched product (one alpha for all models), so BP4 and BP3 write the gradient and one
sgd_update_models kernel follows; and each step gathers its K batches with one kernel. FLOPs and
bytes grow K-fold (bytes by one more pass over the parameters, for the unfolded update, and the
gathered rows); cuBLAS's batched GEMMs at these sizes are assumed no better than 60 % of peak
either, and the table shows the FLOP term at a tenth of that too, to show it does not matter.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from gpubp.bench.report import flops_per_sample, step_bytes

GPUS = {"h100": {"name": "H100 SXM", "flops": 67e12, "bandwidth": 3.35e12},
        "a100": {"name": "A100 SXM", "flops": 19.5e12, "bandwidth": 1.9e12}}
EFFICIENCY = {"blas": 0.60, "own": 0.60 * 0.40}
BANDWIDTH_EFFICIENCY = 0.70
EAGER_LAUNCH = 10e-6
GRAPH_NODE = 0.875e-6
SLICE = 0.5e-6


def kernels(sizes, batch, route):
    """[(what, K slices it walks serially)] for one training step (plain SGD, folded into BP4)."""
    layers = list(zip(sizes[:-1], sizes[1:]))  # (n_in, n_out)
    L, out = len(layers), []
    if route == "blas":  # GEMMs by cuBLAS (slices of 32), each followed by an elementwise kernel
        for n_in, _ in layers:
            out += [("gemm", math.ceil(n_in / 32)), ("bias+act", 1)]
        out.append(("output delta", 1))
        for l in range(L - 1, -1, -1):
            if l > 0:
                out += [("gemm BP2", math.ceil(layers[l][1] / 32)), ("act delta", 1)]
            out += [("gemm BP4+update", math.ceil(batch / 32)), ("gemm BP3+update", math.ceil(batch / 32))]
        return out
    for l, (n_in, n_out) in enumerate(layers):  # our layer kernels: forward, output, BP2, update
        small = math.ceil(batch / 64) * math.ceil(n_out / 64) < 2 * 132
        bk = 16 if l == L - 1 or not small else 32
        out.append(("layer_output" if l == L - 1 else "layer_forward", math.ceil(n_in / bk)))
    for l in range(L - 1, -1, -1):
        if l > 0:
            out.append(("layer_delta", math.ceil(layers[l][1] / 32)))
        out.append(("layer_update", math.ceil(batch / 32)))
    return out


def step_time(sizes, batch, route, graph, gpu) -> tuple[float, str, int]:
    """(seconds per step, the bound that sets it, kernels per step) by the model."""
    ks = kernels(sizes, batch, route)
    flops = flops_per_sample(sizes) * batch
    times = {"flops": flops / (EFFICIENCY[route] * gpu["flops"]),
             "bytes": step_bytes(sizes, batch) / (BANDWIDTH_EFFICIENCY * gpu["bandwidth"]),
             "launches": len(ks) * (GRAPH_NODE if graph else EAGER_LAUNCH),
             "latency": sum(s for _, s in ks) * SLICE}
    bound = max(times, key=times.get)
    return times[bound], bound, len(ks)


def stack_kernels(sizes, batch):
    """The blas route's kernels for a stack's step (see the module's docstring)."""
    out = [(what.replace("+update", ""), s) for what, s in kernels(sizes, batch, "blas")]
    return [("gather", 1), *out, ("update", 1)]


def stack_step_time(sizes, batch, models, gpu, efficiency=EFFICIENCY["blas"]) -> tuple[float, str, int]:
    """(seconds per step of a stack of ``models`` models, the bound that sets it, kernels per step)."""
    ks = stack_kernels(sizes, batch)
    n_params = sum(o * i + o for i, o in zip(sizes[:-1], sizes[1:]))
    moved = step_bytes(sizes, batch) + 4 * n_params + 2 * 4 * batch * (sizes[0] + sizes[-1])
    times = {"flops": models * flops_per_sample(sizes) * batch / (efficiency * gpu["flops"]),
             "bytes": models * moved / (BANDWIDTH_EFFICIENCY * gpu["bandwidth"]),
             "launches": len(ks) * EAGER_LAUNCH, "latency": sum(s for _, s in ks) * SLICE}
    bound = max(times, key=times.get)
    return times[bound], bound, len(ks)


def stack_table(models, sizes=(784, 30, 10), batch=10) -> str:
    """K models of ``sizes`` at ``batch``: a stack's epoch against one model's, on each GPU, by the model."""
    rows = ["| GPU | models K | kernels/step (1 model, stack) | 1 model s/epoch | K models s/epoch | bound | "
            "K models / 1 model | with batched GEMMs at 6 % of peak |", "|---|---:|---:|---:|---:|---|---:|---:|"]
    steps = math.ceil(50_000 / batch)
    for key in ("h100", "a100"):
        gpu = GPUS[key]
        one, _, n1 = step_time(list(sizes), batch, "blas", False, gpu)
        for k in models:
            t, bound, n = stack_step_time(list(sizes), batch, k, gpu)
            slow, _, _ = stack_step_time(list(sizes), batch, k, gpu, efficiency=EFFICIENCY["blas"] / 10)
            rows.append(f"| {gpu['name']} | {k} | {n1}, {n} | {one * steps:.3f} | {t * steps:.3f} | {bound} | "
                        f"{t / one:.2f}x | {slow / one:.2f}x |")
    return "\n".join(rows)


def best_cpu(result, sizes, batch):
    """(seconds per epoch, row name) of the fastest measured CPU row for one network and batch size:
    numpy, the native backend's rows, or PyTorch on the CPU."""
    rows = [(c["seconds_per_epoch"], c["backend"]) for c in result["cases"]
            if c["sizes"] == sizes and c["batch"] == batch
            and (c["backend"] in ("numpy", "torch-cpu") or c["backend"].startswith("native"))]
    return min(rows)


def table(result, gpu_key="h100") -> str:
    gpu = GPUS[gpu_key]
    rows = [f"| network | batch | NumPy s/epoch (measured) | best CPU s/epoch (measured) | route, mode | "
            f"kernels/step | {gpu['name']} s/epoch (model) | bound | vs NumPy | vs best CPU |",
            "|---|---:|---:|---:|---|---:|---:|---|---:|---:|"]
    for c in result["cases"]:
        if c["backend"] != "numpy":
            continue
        sizes, batch = c["sizes"], c["batch"]
        best, who = best_cpu(result, sizes, batch)
        rows_run = c.get("batch_rows", batch)
        steps = math.ceil(c.get("epoch_rows", result.get("epoch_rows", 50_000)) / rows_run)
        for route, graph in (("blas", False), ("own", False), ("blas", True), ("own", True)):
            t, bound, n = step_time(sizes, rows_run, route, graph, gpu)
            epoch = t * steps
            mode = f"{route}, {'graph' if graph else 'eager'}"
            rows.append(f"| {','.join(map(str, sizes))} | {batch} | {c['seconds_per_epoch']:.3f} | {best:.3f} ({who}) | "
                        f"{mode} | {n} | {epoch:.4f} | {bound} | {c['seconds_per_epoch'] / epoch:.1f}x | "
                        f"{best / epoch:.1f}x |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_json", type=Path, nargs="?", help="a `gpubp bench --json` file with numpy rows")
    ap.add_argument("--gpu", choices=list(GPUS), default="h100")
    ap.add_argument("--stack", metavar="K,K,...", help="instead: stacks of K models of [784,30,10] at batch 10")
    args = ap.parse_args()
    if args.stack:
        print(stack_table([int(k) for k in args.stack.split(",")]))
    elif args.bench_json:
        print(table(json.loads(args.bench_json.read_text()), args.gpu))
    else:
        ap.error("give a bench JSON, or --stack")


if __name__ == "__main__":
    main()
