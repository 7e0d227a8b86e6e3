"""pytest-benchmark suites. In CI they run once each as plain tests (--benchmark-disable, set in
pyproject); to measure, run:  uv run --extra test pytest benchmarks --benchmark-enable
--benchmark-group-by=param:backend"""

import pytest


def pytest_benchmark_update_machine_info(config, machine_info):
    from gpubp import sysinfo

    machine_info["gpubp"] = sysinfo.machine()


@pytest.fixture(scope="session")
def mnist_train(request):
    import os

    from gpubp import load_mnist

    d = os.environ.get("GPUBP_DATA_DIR")
    if not d:
        pytest.skip("set GPUBP_DATA_DIR to run the MNIST benchmarks")
    return load_mnist(d)["train"]
