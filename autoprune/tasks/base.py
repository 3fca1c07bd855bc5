"""The Task interface: what every candidate is fine-tuned and evaluated on.

A search prunes the base model to many policies; for each candidate it asks the task for calibration batches
(batch-norm recalibration, data-driven criteria, reconstruction), fine-tunes it with the task and evaluates it
with the task's metric. The built-in image classification is one task (``autoprune.tasks.classification``); a
user's model, data and training loop make another. Every implementation passes the contract suite in
``tests/test_tasks_contract.py``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.objectives import check_metric

Batch = tuple[Any, Any]                          # (inputs, targets); the model is called as model(inputs)
EpochCallback = Callable[[int, dict[str, float]], None]  # (epochs done, logs such as {"loss": ...})
SPLITS = ("val", "test", "proxy")


@dataclass(frozen=True)
class Metric:
    """The task's figure of merit and its direction: ``max`` (accuracy, PSNR) or ``min`` (error, loss)."""

    name: str = "accuracy"
    mode: str = "max"

    def __post_init__(self) -> None:
        check_metric(self.name, self.mode)

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return a > b if self.mode == "max" else a < b


DEFAULT_METRIC = Metric()  # accuracy, to maximise


class Task(ABC):
    """Calibration batches, fine-tuning and evaluation of candidate models.

    ``metric`` names what ``evaluate`` returns. Models are handed over on the device they run on; a task
    moves its batches there (``device_of(model)``).
    """

    metric: Metric = DEFAULT_METRIC

    @abstractmethod
    def calibration(self, count: int, seed: int = 0) -> list[Batch]:
        """``count`` training batches ``(inputs, targets)`` on the CPU, the same ones for the same ``seed``: for
        batch-norm recalibration, data-driven importance criteria and least-squares reconstruction."""

    @abstractmethod
    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        """The metric of ``model`` on ``split``: ``val`` (selects candidates), ``test`` (reported, never used to
        select) or ``proxy`` (stage 0: a small fixed subset of ``val``, evaluated many times)."""

    @abstractmethod
    def finetune(self, model: nn.Module, epochs: float, *, teacher: nn.Module | None = None,
                 on_epoch: EpochCallback | None = None, progress: dict[str, Any] | None = None) -> None:
        """Train ``model`` in place for ``epochs`` (fractions allowed), distilling from ``teacher`` when given.
        ``on_epoch(epochs_done, logs)`` after each whole epoch. ``progress``, when not None, is filled before each
        ``on_epoch`` with what it takes to continue (checkpointed with the model); passed back filled, training
        continues from there."""

    @property
    def trains(self) -> bool:
        """False when the task has no fine-tuning: candidates are evaluated after batch-norm recalibration only."""
        return True

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Optional: the training loss of ``model`` on a calibration batch, one value per sample (shape (N,)). The
        gradient criteria (``taylor``, ``hessian``) rank channels by it; a task without one cannot use them."""
        raise NotImplementedError(f"{type(self).__name__} has no loss: the gradient criteria need Task.loss")

    @property
    def has_loss(self) -> bool:
        """Whether ``loss`` is implemented (the gradient criteria need it)."""
        return type(self).loss is not Task.loss

    def example_input(self) -> torch.Tensor:
        """One input of batch size 1 (tracing, latency): the first calibration batch's first sample."""
        inputs = self.calibration(1)[0][0]
        if not isinstance(inputs, torch.Tensor):
            raise AutopruneError("the task's calibration inputs are not tensors: override Task.example_input")
        return inputs[:1].clone()

    def describe(self) -> dict[str, Any]:
        """What the task is and how it fine-tunes, for run records and model cards."""
        return {"task": type(self).__name__, "metric": self.metric.name, "mode": self.metric.mode}


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
