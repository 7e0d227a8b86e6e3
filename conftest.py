"""Plugins for tests/ and benchmarks/: pytester, and --require-gpu with the gpu mark (gpu_marker.py);
and the whole suite spread over the cores.

`pytest` with no paths, no -k and no -m of its own (the README's test command, .ci/run) runs the
test files on up to MAX_WORKERS pytest-xdist workers, one per core, whole files to a worker (a
module's fixtures are built once), the files marked `early` first. Anything narrower (a file, -k,
-m ray, the GPU check's runs), an explicit -n or --dist (-n 0: one process), --pdb, --collect-only,
one core, or no pytest-xdist installed: one process, as before. A worker never starts workers: it
has `workerinput`, and PYTEST_XDIST_WORKER is in its environment and its children's.
"""

import os
import sys

import pytest

pytest_plugins = ["pytester", "gpu_marker"]

# The suite keeps its own bytecode even where PYTHONDONTWRITEBYTECODE is set: pytest caches each
# test module with its asserts rewritten in __pycache__ (ignored by git) only when bytecode may be
# written, and without it every process (each xdist worker, each `pytest` the GPU check starts)
# rewrites all 35 test modules anew, 5 s of CPU a process. The installed packages' bytecode comes
# from uv (compile-bytecode in pyproject.toml). A read-only checkout simply keeps none.
sys.dont_write_bytecode = False

# More workers than this buy little (the longest file is a tenth of the suite) and each holds its
# own NumPy, CuPy, Matplotlib and MNIST in memory.
MAX_WORKERS = 4


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def whole_suite(config) -> bool:
    """No paths, no -k, and the -m that addopts gives (or none)."""
    if config.args_source != pytest.Config.ArgsSource.TESTPATHS or config.option.keyword:
        return False
    addopts = config.getini("addopts")  # already split into arguments
    default_m = addopts[addopts.index("-m") + 1] if "-m" in addopts[:-1] else ""
    return config.option.markexpr in ("", default_m)


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which turns -n into workers
def pytest_cmdline_main(config):
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput") \
            or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    o = config.option
    if o.numprocesses is not None or o.dist != "no" or o.tx or any(
            getattr(o, name, False) for name in ("usepdb", "trace", "collectonly")):
        return
    workers = min(cores(), MAX_WORKERS)
    if workers < 2 or not whole_suite(config):
        return
    o.numprocesses, o.dist, o.loadscopereorder = workers, "loadfile", False


def pytest_collection_modifyitems(config, items):
    """The files holding a test marked `early` first (stable: the rest keep their order)."""
    early = {item.path for item in items if item.get_closest_marker("early")}
    items.sort(key=lambda item: item.path not in early)
