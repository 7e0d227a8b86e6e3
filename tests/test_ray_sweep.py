"""gpubp sweep --ray against a real local Ray instance (ray.init(num_cpus=2)), not a mock: the groups
run as tasks on worker processes, the results are the local sweep's, and a worker that dies in the
middle of a group is replaced, its group run again, no run lost or counted twice.

Marked ``ray`` and deselected by default (starting Ray takes ~10 s here): .ci/run runs them as a step
of their own, `uv run --extra test --extra ray pytest -m ray`.
"""

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from gpubp import sweep
from gpubp.errors import GpubpError
from gpubp.sweeps import grid

ray = pytest.importorskip("ray", reason="the ray extra is not installed (uv run --extra test --extra ray ...)")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray():
    # address="local": a new instance of our own, even where $RAY_ADDRESS or a `ray start` names another
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    # The hooks below are defined here, a module the workers cannot import: ship them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


def toy_data():
    rng = np.random.default_rng(0)
    X, y = rng.random((120, 12)).astype(np.float32), rng.integers(0, 3, 120)
    return {"train": (X, y), "validation": (X[:40], y[:40]), "test": (X[40:80], y[40:80])}


RUNS = grid([1, 2, 3], etas=[0.5, 1.0], sizes=[12, 6, 3], epochs=2, dtype="float64")


def outcomes(result):
    """{(seed, eta): (every epoch's validation accuracy, test accuracy)}, asserting each run is there once."""
    keys = [(r["run"]["seed"], r["run"]["eta"]) for r in result["runs"]]
    assert len(keys) == len(set(keys)) == len(RUNS)
    return {(r["run"]["seed"], r["run"]["eta"]): ([h["validation_accuracy"] for h in r["history"]],
                                                 r["test_accuracy"]) for r in result["runs"]}


def die_once_in_group_1(marker_dir):
    """A group hook: the first worker to finish epoch 1 of group 1 kills its own process (no
    exception, no cleanup: as the OOM killer would); the retry finds the marker and goes on. Each
    attempt at group 1 leaves a file named after its worker's process."""
    def hook(index, epoch):
        marker = Path(marker_dir) / "group-1-died"
        if index == 1 and epoch == 0:
            (Path(marker_dir) / f"group-1-attempt-{os.getpid()}").touch()
        if index == 1 and epoch == 1 and not marker.exists():
            marker.touch()
            os._exit(1)
    return hook


def test_groups_run_as_ray_tasks_and_match_the_local_sweep(local_ray):
    data = toy_data()
    local = sweep(RUNS, data=data, group_size=2, progress=False)
    remote = sweep(RUNS, data=data, group_size=2, ray="auto", progress=False)
    assert outcomes(remote) == outcomes(local)
    assert remote["ray"] == "auto" and len(remote["groups"]) == 3
    assert all(g["node"] and g["backend"] == "numpy" for g in remote["groups"])


def test_a_worker_killed_mid_group_is_retried_and_no_run_is_lost_or_doubled(local_ray, tmp_path):
    data = toy_data()
    local = sweep(RUNS, data=data, group_size=2, progress=False)
    remote = sweep(RUNS, data=data, group_size=2, ray="auto", progress=False,
                   group_hook=die_once_in_group_1(tmp_path))
    assert (tmp_path / "group-1-died").exists()  # the worker did die ...
    assert len(list(tmp_path.glob("group-1-attempt-*"))) == 2  # ... and another process ran the group again
    assert outcomes(remote) == outcomes(local)


def test_an_error_in_a_group_is_one_line_and_not_retried(local_ray, tmp_path):
    data = toy_data()
    data["validation"] = (data["validation"][0], np.full(40, 7))  # labels past the 3 outputs: refused on the worker

    def count(index, epoch):
        (tmp_path / f"attempt-{os.getpid()}-{index}").touch()

    with pytest.raises(GpubpError, match=r"group 0: labels must lie in \[0, 2\]"):
        sweep(RUNS[:1], data=data, ray="auto", progress=False, group_hook=count)
    assert len(list(tmp_path.iterdir())) == 1  # one attempt


def test_an_address_where_nothing_answers_fails_in_seconds():
    from gpubp.sweeps.ray import check_address

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GpubpError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        check_address(f"127.0.0.1:{port}")
    check_address("auto")  # left to ray.init
