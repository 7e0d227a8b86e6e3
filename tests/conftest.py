"""Fixtures for tests/: real MNIST from $GPUBP_DATA_DIR (tests never download)."""

from __future__ import annotations

import os

import pytest


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
