"""Which device a process trains or times on, decided in the process that does it.

A search's driver may run on a CPU-only head while its trials run on GPU workers, so nothing is decided in the
driver: a trial uses CUDA when Ray assigned it a GPU (``ray.get_gpu_ids()``), the CPU otherwise. Since Ray 2.60 a
task that asked for no GPU still sees every GPU of its node (Ray no longer hides them: ``RAY_ACCEL_ENV_VAR_
OVERRIDE_ON_ZERO``), so ``torch.cuda.is_available()`` alone would put CPU trials on a GPU they were never given.
"""
from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from autoprune.errors import AutopruneError


def assigned_gpus() -> list[Any] | None:
    """The GPU ids Ray assigned this task or actor; None outside a Ray worker."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return list(ray.get_gpu_ids())


def worker_device(gpu_ids: Sequence[Any] | None, cuda_available: bool) -> str:
    """``cuda`` for a Ray worker given GPUs (``gpu_ids``; None: not in a Ray worker, so the best local device),
    ``cpu`` for one given none. A worker given a GPU that torch cannot use is an error naming the node."""
    if gpu_ids is None:
        return "cuda" if cuda_available else "cpu"
    if not gpu_ids:
        return "cpu"
    if not cuda_available:
        import torch

        raise AutopruneError(f"Ray gave this trial GPU {', '.join(map(str, gpu_ids))} on {socket.gethostname()}, but "
                             f"torch {torch.__version__} there has no CUDA device (a CPU-only build, or no driver): "
                             f"install a CUDA build of torch on the node, or set resources.gpu: 0")
    return "cuda"


def resolve(requested: str) -> str:
    """A concrete device for ``requested``: ``auto`` is decided here (``worker_device``); ``cuda`` must exist."""
    import torch

    if requested == "auto":
        return worker_device(assigned_gpus(), torch.cuda.is_available())
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise AutopruneError(f"device '{requested}' requested on {socket.gethostname()}, but torch there has no CUDA "
                             f"device")
    return requested


def check_local_latency(device: str, what: str, setting: str = "cuda") -> None:
    """``what`` times candidates in this process on ``device`` (``setting``: the config's ``latency.device``): CUDA
    must be here."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        why = " (auto: trials train on GPUs)" if setting == "auto" else ""
        raise AutopruneError(f"config key 'latency.device': {what} times on CUDA here{why}, but this machine has no "
                             f"CUDA device: set latency.device: cpu, or run it on a GPU machine")
