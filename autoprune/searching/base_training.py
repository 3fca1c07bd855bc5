"""Training the search's base model (and its sparsity training) where the cluster trains best.

The driver may be a CPU-only head; the base trains in a Ray task that asks for a GPU when the cluster has (or
its autoscaler can add) a GPU node, and runs on the best device of the node it lands on (``autoprune.devices``).
"""
from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from autoprune.data import ClassificationData, DataSpec
from autoprune.errors import AutopruneError
from autoprune.searching.capacity import ClusterShape
from autoprune.tasks.training import TrainConfig

if TYPE_CHECKING:
    from autoprune.config import SearchConfig

# bases shipped in the package, made by autoprune/searching/make_default_base.py
PACKAGED_BASES = Path(__file__).resolve().parent.parent / "models" / "bases"


@dataclass
class Fitted:
    """What a remote fit hands back: the trained weights (on the CPU), its metrics and where it ran."""

    state: dict[str, Any]
    metrics: dict[str, Any]
    losses: list[float]
    where: str


def fit(model: Any, data: ClassificationData, config: TrainConfig, batch_size: int, echo: Callable[[str], None],
        want_gpu: bool, what: str = "base", loader_seed: int = 0) -> Fitted:
    """Train ``model`` on ``data``'s training split in a Ray task (Ray must be initialised), on a GPU when
    ``want_gpu`` or the cluster has (or its autoscaler can add) a GPU node, then evaluate it on the validation and
    test splits there; ``model`` gets the trained weights. Each epoch's loss is echoed as the epoch ends."""
    import ray
    from ray.util.queue import Queue

    gpu = want_gpu or ClusterShape.current().most("GPU") >= 1
    # max_calls=1: the worker exits after it, so its CUDA context and cached memory leave the GPU the trials share
    task = ray.remote(max_calls=1, max_retries=0)(_fit).options(num_cpus=1, num_gpus=1 if gpu else 0)
    epochs = math.ceil(config.epochs)
    progress = Queue(actor_options={"num_cpus": 0})  # (epoch, mean loss, seconds) from the task as it trains

    def report() -> None:
        while not progress.empty():
            epoch, loss, seconds = progress.get()
            echo(f"  {what} epoch {epoch}/{epochs}: loss {loss:.4f} ({seconds:.0f} s)")

    try:
        ref = task.remote(model, data, config, batch_size, loader_seed, progress)
        while not ray.wait([ref], timeout=1.0)[0]:
            report()
        fitted: Fitted = ray.get(ref)
        report()
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if isinstance(e.cause, BaseException) else None
        if isinstance(cause, AutopruneError):
            raise AutopruneError(str(cause)) from None
        detail = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0]}" if cause is not None and str(cause) \
            else str(e).strip().splitlines()[-1]
        raise AutopruneError(f"training the {what} model failed on the cluster: {detail}") from None
    finally:
        progress.shutdown()
    model.load_state_dict(fitted.state)
    echo(f"  trained on {fitted.where} in {fitted.metrics['train_seconds']:.0f} s")
    return fitted


def _fit(model: Any, data: ClassificationData, config: TrainConfig, batch_size: int, loader_seed: int,
         progress: Any) -> Fitted:
    """The Ray task: the device Ray gave it (a GPU, else every core of the node: nothing else runs yet); each epoch's
    loss goes to the ``progress`` queue as it ends."""
    import torch

    from autoprune import devices
    from autoprune.tasks.training import evaluate, train

    device = devices.resolve("auto")
    if device == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    start = time.perf_counter()
    loader = data.loader("train", batch_size, shuffle=True, augment=True, seed=loader_seed, device=device)
    losses = train(model, loader, config, device=device,
                   on_epoch=lambda epoch, loss: progress.put((epoch, loss, time.perf_counter() - start)))
    seconds = round(time.perf_counter() - start, 1)
    metrics = {"val_accuracy": evaluate(model, data.loader("val", 256, device=device), device),
               "test_accuracy": evaluate(model, data.loader("test", 256, device=device), device),
               "train_seconds": seconds, "device": device}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    where = f"{device} of {socket.gethostname()}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else
                                                    f" ({torch.get_num_threads()} threads)")
    return Fitted(state, metrics, losses, where)


def recipe_of(config: SearchConfig) -> dict[str, Any]:
    """How the config trains its base: what a shipped base must have been trained with to stand for it."""
    return {"model": config["model"], "epochs": float(config["base.epochs"]), "lr": float(config["base.lr"]),
            "batch_size": int(config["base.batch_size"]), "seed": int(config["data.seed"]),
            "precision": config["finetune.precision"]}


def packaged_base(config: SearchConfig, data: DataSpec) -> Path | None:
    """The base shipped in the package for this model, data and training recipe (the default space's), if any."""
    from autoprune.pruning import checkpoint as ckpt_io

    path = PACKAGED_BASES / f"{config['model']}_{data.dataset}.pt"
    if data.factory is not None or not path.is_file():
        return None
    shipped = ckpt_io.load(path)
    same_data = (shipped.data_spec.dataset, shipped.data_spec.val_fraction, shipped.data_spec.seed,
                 shipped.data_spec.image_size, shipped.data_spec.max_train_samples) == (
        data.dataset, data.val_fraction, data.seed, data.image_size, data.max_train_samples)
    return path if same_data and shipped.metrics.get("recipe") == recipe_of(config) else None
