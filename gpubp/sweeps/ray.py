"""A sweep's groups as Ray tasks: `gpubp sweep ... --ray auto|HOST:PORT` (the ray extra).

Imported only when a sweep is given ``ray=``; nothing else in gpubp imports Ray. Each group (K runs
of one shape, trained by the ``train`` it is given: gpubp.sweeps.run.train_group) is one task: it
gets the data from the object store (put once), trains its Stack on the worker's backend ("auto":
CuPy where the task was given a GPU) and returns its results, which the driver collects as they
finish, so the table and the JSON are the same as a local sweep's. A task asks for one GPU when the
cluster has GPUs, else for one CPU.

A worker that dies mid-group (killed, out of memory, its node lost) fails its task as a system
error, which Ray retries up to MAX_RETRIES times from the start: the group's results only exist
once its task returns, so a run is neither lost nor counted twice. An error raised by the training
itself (bad settings, diverging input) is not retried; it ends the sweep with its message.

Why tasks and not Ray Tune trials: a Tune trial is one configuration, and its schedulers (ASHA,
PBT) earn their keep by stopping or mutating trials one by one; here K runs share one Stack and one
set of batched products, so stopping one model early saves nothing, and splitting the group into
trials would give up the reason for stacking. A task per group keeps the stack whole.
"""

from __future__ import annotations

import socket

import ray

from ..errors import GpubpError

MAX_RETRIES = 3  # attempts after the first, for a group whose worker died


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` ("auto": the one this machine belongs to, or $RAY_ADDRESS)
    unless this process already did (ray.init was called before, as the tests do)."""
    if ray.is_initialized():
        return
    check_address(address)
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise GpubpError(f"cannot join a Ray cluster at {address!r} ({str(e).splitlines()[0]}): start one with "
                         f"'ray start --head' and pass --ray auto, or --ray HOST:PORT of its head; if it asks for a "
                         f"token (Ray >= 2.59 does by default), set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
                         f"copy the head's ~/.ray/auth_token)") from None


def check_address(address: str) -> None:
    """Fail in seconds, not minutes (ray.init keeps retrying), when nothing listens at HOST:PORT."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise GpubpError(f"no Ray cluster answers at {address} ({e.strerror or e}): start one there with "
                         f"'ray start --head --port {port}', or check the address") from None


def _group_task(train, index, runs, data, backend, monitor_training_cost, group_hook):
    """One group on a Ray worker: ``train`` (train_group), the hook told (index, epoch) before and after each epoch."""
    if group_hook is not None:
        group_hook(index, 0)
    on_epoch = None if group_hook is None else (lambda epoch, epochs: group_hook(index, epoch))
    out = train(runs, data, backend, monitor_training_cost, on_epoch=on_epoch)
    out["node"] = ray.get_runtime_context().get_node_id()
    return out


def run_groups(train, plan, data, address, backend=None, monitor_training_cost=False, on_group=None,
               group_hook=None):
    """Train every group of ``plan`` as a Ray task running ``train(runs, data, backend, monitor_training_cost,
    on_epoch=...)``; their results in plan order. ``on_group`` is called on the driver with each
    group's results as it finishes."""
    connect(address)
    gpus = ray.cluster_resources().get("GPU", 0)
    resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False, **resources)(_group_task)
    data_ref = ray.put(data)  # once: every task reads it from the object store
    pending = {task.remote(train, i, g, data_ref, backend, monitor_training_cost, group_hook): i
               for i, g in enumerate(plan)}
    done = [None] * len(plan)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                done[i] = _get(ref, i)
                if on_group is not None:
                    on_group(done[i])
    finally:
        for ref in pending:  # an error or an interrupt: stop what is still running
            ray.cancel(ref, force=True)
    return done


def _get(ref, index):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # the training raised: its own message, not Ray's traceback
        cause = getattr(e, "cause", None)
        if isinstance(cause, GpubpError):
            raise GpubpError(f"group {index}: {cause}") from None
        raise
    except ray.exceptions.RayError as e:  # retries used up: workers kept dying, or the cluster went away
        raise GpubpError(f"group {index} failed on Ray after {MAX_RETRIES} retries: "
                         f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
