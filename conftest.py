"""Plugins for tests/ and benchmarks/: pytester, and --require-gpu with the gpu mark (gpu_marker.py);
and the default run's files on one worker per core."""

import pytest

pytest_plugins = ["pytester", "gpu_marker"]


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """The plain run (`pytest`, marks as pyproject sets them) runs its files on pytest-xdist's workers, one
    per core, each file whole on one worker (--dist loadfile: a module's fixtures, such as the NVRTC
    compiles, are made once): almost all of the suite is single-threaded Python. Left alone: a run that
    says -n itself, or has no pytest-xdist (a bare GPU machine), and the runs that want one process:
    -m gpu / ray (a GPU, a Ray cluster of their own), --require-gpu (.ci/sanitize), --benchmark-enable
    (pytest-benchmark times nothing under xdist)."""
    opt = config.option
    if hasattr(config, "workerinput"):  # a worker itself runs this hook: it spreads nothing further
        return
    if getattr(opt, "numprocesses", 0) is not None or opt.markexpr != "not ray":
        return
    if getattr(opt, "require_gpu", False) or getattr(opt, "benchmark_enable", False) or opt.collectonly:
        return
    opt.numprocesses, opt.dist = "auto", "loadfile"  # pytest-xdist's own pytest_cmdline_main resolves "auto"
