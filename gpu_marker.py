"""pytest plugin: --require-gpu, and the gpu mark's skip (or, with --require-gpu, failure) without a GPU.

Loaded by conftest.py for this repository's tests, and by tests/test_gpu_option.py into a
pytester run of its own, so the behaviour is tested as the plugin itself, not a copy.
"""

import pytest

from gpubp.backends import cupy_status


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
