"""Fixtures for tests/: real MNIST from $GPUBP_DATA_DIR (tests never download)."""

from __future__ import annotations

import os
import sys

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


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """An MNIST-format directory of 2x5-pixel images (sizes 10,...,10; load with --no-verify):
    2 000 training rows, the 10 000 validation rows, 200 test rows. Trains in milliseconds."""
    from helpers import write_mnist_like

    return str(write_mnist_like(tmp_path_factory.mktemp("tiny-mnist")))


@pytest.fixture
def cupy_be(monkeypatch):
    """(the CuPy backend, the stand-in it drives): CuPy replaced by tests/cupy_standin.py, which keeps
    CuPy's documented call conventions and runs kernels on the emulator; cuBLAS by its stand-in too."""
    from cupy_standin import FakeCublasLib, FakeCupy

    import gpubp.backends as B
    from gpubp.backends import cublas

    fake = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupy.cublas", fake.cublas)
    fake.cublas_lib = FakeCublasLib(fake)
    monkeypatch.setattr(cublas, "load", lambda: fake.cublas_lib)
    B.reset()
    yield B.get_backend("cupy"), fake
    B.reset()
