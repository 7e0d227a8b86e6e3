"""Options and marks for tests/ and benchmarks/: --require-gpu and the gpu mark."""

import pytest

from gpubp.backend import cupy_status

pytest_plugins = ["pytester"]


def pytest_addoption(parser):
    parser.addoption("--require-gpu", action="store_true",
                     help="fail, instead of skip, the tests marked gpu when no CUDA GPU answers")


def pytest_runtest_setup(item):
    if "gpu" not in item.keywords:
        return
    ok, why = cupy_status()
    if ok:
        return
    if item.config.getoption("--require-gpu"):
        pytest.fail(f"--require-gpu was given but no GPU is usable: {why}", pytrace=False)
    pytest.skip(f"needs a CUDA GPU: {why}")
