"""Shared fixtures and options: --require-gpu, the gpu mark, MNIST from $GPUBP_DATA_DIR."""

from __future__ import annotations

import os

import numpy as np
import pytest

from gpubp.backend import cupy_status


def pytest_addoption(parser):
    parser.addoption("--require-gpu", action="store_true",
                     help="fail, instead of skip, the tests marked gpu when no CUDA GPU answers")


def pytest_collection_modifyitems(config, items):
    ok, why = cupy_status()
    if ok:
        return
    if config.getoption("--require-gpu"):
        fail = pytest.mark.usefixtures("_gpu_required_but_missing")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(fail)
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {why}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def _gpu_required_but_missing():
    pytest.fail(f"--require-gpu was given but no GPU is usable: {cupy_status()[1]}")


@pytest.fixture(scope="session")
def mnist_dir():
    """The directory holding real MNIST ($GPUBP_DATA_DIR); tests never download."""
    d = os.environ.get("GPUBP_DATA_DIR")
    if not d:
        pytest.skip("set GPUBP_DATA_DIR to a directory with the four MNIST files to run the MNIST tests")
    return d


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from gpubp import load_mnist

    return load_mnist(mnist_dir)
