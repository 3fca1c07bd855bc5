"""The Python API's task: the user's own callables (``autoprune.search(model, example, evaluate=..., ...)``).

The task travels to the Ray workers by value (cloudpickle), with the callables and whatever they reference: data
loaders, datasets and closures. Classes and functions defined in ``__main__`` or a notebook travel by value; those
defined in a module travel by reference, so that module must be importable on the workers (a private local Ray's
workers get this process's ``sys.path``; a cluster's need the module installed or in the job's working directory).
``check_serialisable`` names a callable that cannot travel before any trial starts.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.tasks.base import DEFAULT_METRIC, SPLITS, Batch, EpochCallback, Metric, Task

Evaluate = Callable[[nn.Module], float]
Finetune = Callable[[nn.Module, float, "nn.Module | None"], None]
Loss = Callable[[nn.Module, Batch], torch.Tensor]


class CallableTask(Task):
    """``evaluate(model) -> float`` (the metric, on the user's validation data), optionally ``finetune(model, epochs,
    teacher)`` (trains in place; ``teacher`` is the unpruned model to distil from, or None) and ``test(model)`` (the
    metric on held-out data; else ``evaluate`` stands in), ``loss(model, batch)`` (one training loss per sample of a
    calibration batch: lets the ``taylor`` and ``hessian`` criteria rank channels); ``calibration``: batches
    ``(inputs, targets)`` from the training data (targets may be None); ``example_input``: one input batch for
    tracing and latency.

    Without ``finetune``, candidates are only recalibrated (batch norm) on the calibration batches. The ``proxy``
    split is ``evaluate`` too: pass a cheap one for staged evaluation. ``finetune`` is called once per whole epoch
    (the last with the remaining fraction), so a trial resumed after a node loss continues from its last epoch.
    """

    def __init__(self, evaluate: Evaluate, example_input: torch.Tensor, *, finetune: Finetune | None = None,
                 calibration: Iterable[Batch] | None = None, test: Evaluate | None = None,
                 loss: Loss | None = None, metric: Metric = DEFAULT_METRIC) -> None:
        if not callable(evaluate):
            raise AutopruneError(f"evaluate must be a callable model -> float, got {type(evaluate).__name__}")
        for name, fn in (("finetune", finetune), ("test", test), ("loss", loss)):
            if fn is not None and not callable(fn):
                raise AutopruneError(f"{name} must be callable, got {type(fn).__name__}")
        if not isinstance(example_input, torch.Tensor):
            raise AutopruneError(f"example_input must be a tensor, got {type(example_input).__name__}")
        self._evaluate, self._finetune, self._test, self._loss = evaluate, finetune, test, loss
        self.batches = [_batch(b, i) for i, b in enumerate(calibration)] if calibration is not None else []
        self._example = example_input.detach().cpu()[:1].clone()
        self.metric = metric

    def calibration(self, count: int, seed: int = 0) -> list[Batch]:
        if not self.batches:
            return []
        order = list(range(len(self.batches)))
        random.Random(seed).shuffle(order)
        return [self.batches[i] for i in order[:count]]

    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        if split not in SPLITS:
            raise AutopruneError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
        fn = self._test if split == "test" and self._test is not None else self._evaluate
        model.eval()
        with torch.no_grad():
            value = fn(model)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise AutopruneError(f"evaluate returned {type(value).__name__}, not a number") from None

    def finetune(self, model: nn.Module, epochs: float, *, teacher: nn.Module | None = None,
                 on_epoch: EpochCallback | None = None, progress: dict[str, Any] | None = None) -> None:
        if self._finetune is None:
            return
        done = int(progress["epoch"]) if progress else 0
        for epoch in range(done, math.ceil(epochs)):
            model.train()
            self._finetune(model, min(1.0, epochs - epoch), teacher)
            if progress is not None:
                progress.update(epoch=epoch + 1)
            if on_epoch is not None:
                on_epoch(epoch + 1, {})

    @property
    def trains(self) -> bool:
        return self._finetune is not None

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        if self._loss is None:
            return super().loss(model, batch)
        return self._loss(model, batch)

    @property
    def has_loss(self) -> bool:
        return self._loss is not None

    def example_input(self) -> torch.Tensor:
        return self._example

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "finetune": getattr(self._finetune, "__qualname__", None),
                "evaluate": getattr(self._evaluate, "__qualname__", None)}


def _batch(batch: Any, index: int) -> Batch:
    """A calibration batch as ``(inputs, targets)``: a bare tensor gets None for targets."""
    if isinstance(batch, torch.Tensor):
        return batch.detach().cpu(), None
    if isinstance(batch, (tuple, list)) and len(batch) >= 1 and isinstance(batch[0], torch.Tensor):
        targets = batch[1] if len(batch) > 1 else None
        return batch[0].detach().cpu(), targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets
    raise AutopruneError(f"calibration batch {index} is a {type(batch).__name__}: give tensors or (inputs, targets)")


def check_serialisable(task: CallableTask) -> None:
    """Every callable must reach the Ray workers: cloudpickle each, naming the first that cannot travel."""
    from ray import cloudpickle

    for name, value in (("evaluate", task._evaluate), ("finetune", task._finetune), ("test", task._test),
                        ("loss", task._loss), ("calibration", task.batches)):
        if value is None:
            continue
        try:
            cloudpickle.dumps(value)
        except Exception as e:  # noqa: BLE001  (pickling fails with many types; all mean the same here)
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AutopruneError(f"{name} cannot be sent to the Ray workers (cloudpickle): {detail}; define what it "
                                 f"uses at module level or build it inside the function") from None
