"""`gpubp bench`: the sweep, its numbers, its JSON and plot, and what it says about skipped GPUs."""

import json
import math
import sys

import pytest
from helpers import run_cli

from gpubp import bench
from gpubp.backends import cupy_status
from gpubp.bench.plot import figure
from gpubp.bench.report import speedups


def test_flop_count_of_one_training_step():
    # forward 2*(784*30 + 30*10), dW the same, delta W only past the first layer: 2*30*10
    assert bench.flops_per_sample([784, 30, 10]) == 2 * 23_820 * 2 + 2 * 300
    assert bench.flops_per_sample([784, 1024, 1024, 10]) == 9_564_160


def run_bench(capsys, tmp_path, *extra):
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    code, out, err = run_cli(capsys, "bench", "--sizes", "784,16,10", "784,40,10", "--batch-sizes", "10,64", "--steps",
                             "3", "--repeats", "2", "--json", str(out_json), "--plot", str(out_png), *extra)
    assert code == 0, err
    return out, json.loads(out_json.read_text()), out_png


@pytest.mark.slow
def test_bench_sweep_writes_table_json_and_plot(capsys, tmp_path, mnist_dir):
    out, result, png = run_bench(capsys, tmp_path, "--data-dir", mnist_dir, "--backends", "numpy,emulated",
                                 "--routes", "blas", "--modes", "eager")
    assert "| backend | network | batch |" in out
    cases = result["cases"]
    ours = [c for c in cases if c["backend"] in ("numpy", "emulated")]
    assert len(ours) == 2 * 2 * 2
    for c in ours:
        assert c["steps"] == 3 and c["repeats"] == 2 and len(c["per_step_seconds"]) == 2
        assert c["seconds_per_epoch"] == pytest.approx(
            sorted(c["per_step_seconds"])[0] / 2 * math.ceil(50_000 / c["batch"])
            + sorted(c["per_step_seconds"])[1] / 2 * math.ceil(50_000 / c["batch"]))  # median of two
        assert 0 < c["seconds_per_epoch_min"] <= c["seconds_per_epoch"] <= c["seconds_per_epoch_max"]
        assert c["samples_per_second"] > 0 and c["gflops"] > 0 and c["speedup_vs_numpy"] > 0
        assert c["flops_per_step"] == bench.flops_per_sample(c["sizes"]) * c["batch"]
        # a timed run: the permutation goes up, the steps, one sync; nothing allocated or copied back
        assert [c["counters_per_run"][k] for k in ("allocs", "syncs", "h2d", "d2h")] == [0, 1, 1, 0]
    emu = [c for c in ours if c["backend"] == "emulated"]
    # L = 2: 2 bias+activation, 1 output delta, 1 hidden delta a step (plain SGD rides in the
    # products), after one gather of the run's rows
    assert all(c["counters_per_run"]["launches"] == 1 + 3 * 4 and c["counters_per_run"]["gemms"] == 3 * 7
               for c in emu)
    m = result["machine"]
    for key in ("cpu", "cores", "numpy", "blas", "gpu", "cupy", "cuda_runtime", "cuda_driver"):
        assert key in m
    assert {"name", "version", "threads"} <= set(m["blas"])
    assert result["gemm_gflops"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not any(s.startswith("cupy") for s in result["skipped"])  # cupy was not asked for
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b.png"]


def test_default_backends_say_why_the_gpu_was_skipped(capsys, tmp_path, mnist_dir):
    ok, why = cupy_status()
    if ok:
        pytest.skip("a GPU is present: nothing is skipped")
    # the default backends (no --backends) on one network and batch: the skip is said whatever the cases
    out, result, _ = run_bench(capsys, tmp_path, "--data-dir", mnist_dir, "--sizes", "784,16,10", "--batch-sizes", "10")
    assert f"skipped: cupy: {why}" in out
    assert result["skipped"][0] == f"cupy: {why}"
    assert {c["backend"].split("-")[0] for c in result["cases"]} <= {"numpy", "native", "torch"}


def synthetic(with_gpu):
    cases = []
    for sizes in ([784, 30, 10], [784, 100, 10], [784, 1024, 1024, 10]):
        for batch in (10, 128, 1024):
            for b in ("numpy", "cupy") if with_gpu else ("numpy",):
                cases.append({"backend": b, "sizes": sizes, "batch": batch, "samples_per_second": batch * 100.0,
                              "speedup_vs_numpy": 3.0 if b == "cupy" else 1.0})
    return {"dtype": "float32", "machine": {"cpu": "test"}, "cases": cases, "skipped": [] if with_gpu else ["cupy: none"]}


@pytest.mark.parametrize("with_gpu", [True, False])
def test_plot_has_one_speedup_line_per_network(with_gpu):
    import matplotlib.pyplot as plt

    fig = figure(synthetic(with_gpu))
    left = fig.axes[0]
    assert len(left.lines) == 3 * (2 if with_gpu else 1)
    if with_gpu:
        speedup_lines = [l for l in fig.axes[1].lines if len(l.get_xdata()) == 3]
        assert len(speedup_lines) == 3
    else:  # no empty GPU panel: one line under the throughput says why
        assert len(fig.axes) == 1 and "no GPU measured here" in fig.texts[0].get_text()
    plt.close(fig)


def test_plot_colours_backends_and_crosses_out_flagged_cases():
    import matplotlib.pyplot as plt

    result = synthetic(False)
    for c in list(result["cases"]):
        result["cases"].append({**c, "backend": "native", "samples_per_second": c["samples_per_second"] * 2})
    result["cases"][0]["warnings"] = ["numpy 784,30,10 batch 10: its repeats disagree by 3.0x"]
    fig = figure(result)
    lines = fig.axes[0].lines
    curves = [(line.get_label().split()[0], line) for line in lines if line.get_marker() == "o"]
    colours = {backend: line.get_color() for backend, line in curves}
    assert set(colours) == {"numpy", "native"} and colours["numpy"] != colours["native"]
    assert all(line.get_color() == colours[backend] for backend, line in curves)  # one colour per backend
    crossed = [line for line in lines if line.get_marker() == "x"]
    assert len(crossed) == 1 and list(crossed[0].get_xdata()) == [10] and "not to be trusted" in crossed[0].get_label()
    plt.close(fig)


def test_plot_without_matplotlib_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run_cli(capsys, "bench", "--quick", "--plot", str(tmp_path / "x.png"))
    assert code == 2 and "uv run --extra plot" in err and len(err.strip().splitlines()) == 1


def test_unknown_or_unavailable_backends(capsys, tmp_path):
    code, _, err = run_cli(capsys, "bench", "--backends", "tpu")
    assert code == 2 and "unknown benchmark backend 'tpu'" in err
    if not cupy_status()[0]:
        code, _, err = run_cli(capsys, "bench", "--backends", "cupy")
        assert code == 2 and "no backend left to benchmark: cupy:" in err


def test_speedups_pair_each_case_with_numpy():
    cases = [{"backend": "numpy", "sizes": [1, 2], "batch": 10, "seconds_per_epoch": 4.0},
             {"backend": "cupy", "sizes": [1, 2], "batch": 10, "seconds_per_epoch": 0.5},
             {"backend": "cupy", "sizes": [1, 2], "batch": 99, "seconds_per_epoch": 0.5}]
    speedups(cases)
    assert [c["speedup_vs_numpy"] for c in cases] == [1.0, 8.0, None]


# ---------------------------------------------------------------------------------------------
# Honest numbers: the rows a step really ran, a busy machine, an interrupted sweep
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_bench(capsys, tmp_path, tiny_dir, monkeypatch):
    """`gpubp bench` on the 2x5-pixel data set (2 000 training rows), without the 2048^3 GEMM."""
    monkeypatch.setattr(bench, "gemm_rate", lambda dtype: 100.0)

    def go(*extra, code=0):
        argv = ["bench", "--data-dir", tiny_dir, "--no-verify", "--backends", "numpy", "--sizes", "10,8,10",
                "--steps", "2", "--json", str(tmp_path / "b.json"), *extra]
        got, out, err = run_cli(capsys, *argv)
        assert got == code, err
        return out, err, json.loads((tmp_path / "b.json").read_text())
    return go


def test_a_batch_larger_than_the_data_counts_the_rows_that_ran(tiny_bench):
    out, _, result = tiny_bench("--batch-sizes", "100000", "--repeats", "1")
    c = result["cases"][0]
    assert result["epoch_rows"] == 2000 and c["batch"] == 100000 and c["batch_rows"] == 2000
    t = c["per_step_seconds"][0]
    assert c["samples_per_second"] == pytest.approx(2000 / t)
    assert c["flops_per_step"] == bench.flops_per_sample([10, 8, 10]) * 2000
    assert c["seconds_per_epoch"] == pytest.approx(t)  # one step is the whole epoch
    assert "| 100000 (2000 ran) |" in out and "epoch = 2000 samples" in out


def test_a_busy_machine_and_disagreeing_repeats_are_warned_about(tiny_bench, monkeypatch):
    import os

    monkeypatch.setattr(os, "getloadavg", lambda: (4.0 * os.cpu_count(), 1.0, 1.0))
    times = iter([0.001, 0.01])  # the second repeat 10x slower than the first

    def timed(self):
        self.per_step.append(next(times))

    monkeypatch.setattr(bench.contenders.Contender, "time", timed)
    _, err, result = tiny_bench("--batch-sizes", "10", "--repeats", "2")
    warnings = result["warnings"]
    assert any("load average" in w and "4.00 per core" in w for w in warnings), warnings
    assert any("repeats disagree by 10.0x" in w for w in warnings), warnings
    for w in warnings:
        assert f"warning: {w}" in err.splitlines()
    assert result["load"]["before"]["per_core"] == pytest.approx(4.0) and result["load"]["cores"] == os.cpu_count()
    assert result["cases"][0]["load_per_core"] == pytest.approx(4.0)


def test_an_interrupted_bench_prints_and_keeps_the_cases_it_finished(tiny_bench, monkeypatch):
    calls = []
    real = bench.contenders.Contender.time

    def time_until_ctrl_c(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(bench.contenders.Contender, "time", time_until_ctrl_c)
    out, err, result = tiny_bench("--batch-sizes", "10,100", "--repeats", "1", code=130)
    assert "| numpy | 10,8,10 | 10 |" in out and "| 100 |" not in out
    assert [c["batch"] for c in result["cases"]] == [10]
    assert result["interrupted"] == "numpy 10,8,10 batch 100"
    last = err.strip().splitlines()[-1]
    assert "interrupted in case numpy 10,8,10 batch 100" in last and "1 case finished" in last and "b.json" in last


def test_bench_rows_for_each_route_and_mode(capsys, tmp_path, mnist_dir):
    """The emulated backend runs both routes, eagerly and as a graph: four rows, each with its counters
    (for one timed run of its 3 steps; a graph row's are one replay)."""
    code, out, err = run_cli(capsys, "bench", "--backends", "emulated", "--sizes", "784,16,10", "--batch-sizes", "10",
                             "--steps", "3", "--repeats", "1", "--data-dir", mnist_dir, "--json", str(tmp_path / "b.json"))
    assert code == 0, err
    rows = {c["backend"]: c for c in json.loads((tmp_path / "b.json").read_text())["cases"]}
    assert set(rows) == {"emulated", "emulated-own", "emulated-graph", "emulated-own-graph"}
    own = rows["emulated-own"]["counters_per_run"]
    assert own | {"launches": 1 + 3 * 5, "gemms": 0} == own  # a gather, then 3L - 1 kernels a step
    for name in ("emulated-graph", "emulated-own-graph"):
        c = rows[name]["counters_per_run"]  # one replay of the 3 captured steps
        assert (c["graph_launches"], c["launches"], c["gemms"], c["allocs"]) == (1, 0, 0, 0)
    assert "| emulated-own-graph | 784,16,10 |" in out


@pytest.mark.parametrize("flag,value,needle", [("--routes", "cublas", "--routes takes one or more of blas, own"),
                                               ("--modes", "lazy", "--modes takes one or more of eager, graph"),
                                               ("--routes", ",", "is empty")])
def test_bench_routes_and_modes_are_checked(capsys, flag, value, needle):
    code, _, err = run_cli(capsys, "bench", flag, value)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
