"""Fixtures for tests/: real MNIST from $GPUBP_DATA_DIR (tests never download)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def no_settling(monkeypatch):
    """The bench's pause between contenders protects timings, as the 2048^3 product makes the GEMM rate
    a fair one; tests check what is reported, not speed: in this process no pause, and the rate of a
    256^3 product (the bench's pauses were 4 s of a run's wall time, its GEMM rates 0.65 s of CPU each)."""
    import functools

    from gpubp import bench
    from gpubp.bench import contenders

    monkeypatch.setattr(bench, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(bench, "gemm_rate", functools.partial(contenders.gemm_rate, n=256))


@pytest.fixture(scope="session")
def mnist_dir():
    """The directory holding real MNIST ($GPUBP_DATA_DIR, made absolute: tests that change directory
    still find it when it was given relative to the checkout); tests never download."""
    d = os.environ.get("GPUBP_DATA_DIR")
    if not d:
        pytest.skip("set GPUBP_DATA_DIR to a directory with the four MNIST files to run the MNIST tests")
    return os.path.abspath(d)


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
    """(the CuPy backend, the stand-in it drives): CuPy, its lazy loading of cuBLAS and pip's libcublas
    replaced by tests/cupy_standin.py, which behaves as CuPy 14 does and runs kernels on the emulator."""
    from cupy_standin import install

    import gpubp.backends as B

    fake = install(monkeypatch)
    B.reset()
    yield B.get_backend("cupy"), fake
    B.reset()
