""".ci/gpu-check, the one command a lent GPU runs, tested here without one: its no-GPU answer, and the
whole orchestration run against the CuPy stand-in (--dry-run: the same stages and commands, the
stand-in installed in every child process, a pass-through compute-sanitizer, a trimmed bench);
.ci/sanitize's usage and verdicts; and the time budgets it enforces."""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / ".ci" / "gpu-check"

def load_script(name, path):
    """A script without a .py suffix, as a module."""
    spec = spec_from_loader(name, SourceFileLoader(name, str(path)))
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = load_script("gpu_check", CHECK)


def run_check(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, str(CHECK), *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path):
    out = tmp_path / "out"
    done = run_check(out, env={"CUDA_VISIBLE_DEVICES": "", "GPUBP_GPU_CHECK_DRY_RUN": ""})
    assert done.returncode == 2, done
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("gpu-check: no GPU here, nothing was run: ")
    assert not out.exists()  # nothing half-written


def test_the_stage_budgets_fit_the_eight_minutes():
    assert sum(gpu_check.BUDGET.values()) + 30 <= gpu_check.TOTAL_BUDGET == 480
    assert sum(gpu_check.SANITIZER_BUDGET.values()) <= gpu_check.BUDGET["sanitizers"]


def test_a_hanging_stage_is_stopped_at_its_budget(tmp_path):
    t0 = time.monotonic()
    rc, seconds, timed_out = gpu_check.run([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log",
                                           1.0, dict(os.environ))
    assert timed_out and rc != 0 and time.monotonic() - t0 < 15
    assert "stopped after its budget of 1 s" in (tmp_path / "log").read_text()


@pytest.mark.parametrize("text,rc,timed_out,status", [
    ("========= ERROR SUMMARY: 0 errors\n", 0, False, "clean"),
    ("========= Invalid __global__ read of size 4\n========= ERROR SUMMARY: 3 errors\n", 1, False, "errors"),
    ("========= Error: Device not supported\n", 1, False, "skipped"),
    ("1 passed\n", 0, True, "timed out"),
    ("FAILED tests/test_gpu.py::x\n========= ERROR SUMMARY: 0 errors\n", 1, False, "failed"),
])
def test_sanitizer_verdicts(text, rc, timed_out, status):
    verdict = gpu_check.sanitizer_verdict(text, rc, timed_out, 40)
    assert verdict["status"] == status, verdict
    if status == "skipped":
        assert verdict["why"] == "Error: Device not supported"


def test_sanitize_refuses_bad_usage_in_one_line():
    done = subprocess.run([str(ROOT / ".ci" / "sanitize"), "--tool", "leakcheck"], capture_output=True, text=True,
                          env={**os.environ, "COMPUTE_SANITIZER": "/bin/true"})
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "unknown tool leakcheck" in done.stderr


def build_kernel_libraries():
    """Every kernel file's library for the emulated backend (the stand-in runs kernels on it) and the
    native one (the bench times it), built a few at a time where the cache lacks them, outside the
    check: a stage's budget is for running, and on a cold cache the bench stage spent it compiling."""
    from gpubp.backends import emulated, native
    from gpubp.backends import kernel as K

    cxx = emulated.find_compiler()
    jobs = [lambda f=f: emulated.build(f, cxx) for f in K.kernel_files()]
    jobs += [lambda f=f: native.build_unit(native.translation_unit(f), cxx, Path(f).stem) for f in K.kernel_files()]
    with ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:  # each build is a compiler process
        list(pool.map(lambda job: job(), jobs))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, mnist_dir):
    build_kernel_libraries()
    out = tmp_path_factory.mktemp("gpu-check")
    done = run_check("--dry-run", out, env={"GPUBP_DATA_DIR": mnist_dir})
    return out, done


@pytest.mark.early  # a dozen processes one after another: a parallel run overlaps them with the rest
def test_the_dry_run_goes_through_every_stage(dry_run):
    out, done = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["passed"]
    assert list(summary["stages"]) == ["found", "gpu-tests", "graphs", "sanitizers", "bench"]
    assert all(r["status"] == "passed" for r in summary["stages"].values()), summary["stages"]
    tests = summary["stages"]["gpu-tests"]
    assert tests["passed"] >= 10 and tests["failures"] == tests["errors"] == 0  # tests/test_gpu.py on the stand-in
    tools = summary["stages"]["sanitizers"]["tools"]
    assert {t: v["status"] for t, v in tools.items()} == dict.fromkeys(gpu_check.SANITIZER_BUDGET, "clean")
    for log in ("sanitize-memcheck.log", "sanitize-initcheck.log"):
        assert "CuPy's memory pool off" in (out / log).read_text()


@pytest.mark.early
def test_the_dry_run_writes_what_it_found_and_measured(dry_run):
    out, done = dry_run
    found = json.loads((out / "found.json").read_text())
    assert found["dry_run"] and "Stand-in" in found["device"]
    assert found["cublas"]["path"].endswith("libcublas.so.13")
    graphs = json.loads((out / "graphs.json").read_text())
    routes = {(r, d) for r in ("blas", "own") for d in ("float32", "float64")}
    assert {(g["route"], g["dtype"]) for g in graphs} == routes
    assert all(g["passed"] for g in graphs)
    bench = json.loads((out / "bench.json").read_text())
    assert {c["backend"] for c in bench["cases"]} >= {"numpy", "native", "cupy", "cupy-own-graph"}
    assert (out / "bench.png").stat().st_size > 0
    screen = done.stdout.split("=" * 78)[-2].strip().splitlines()  # the summary, printed last
    assert len(screen) <= 24 and screen[0].startswith("gpu-check (DRY RUN")
    assert any(line.startswith("784,30,10 b128") for line in screen)
