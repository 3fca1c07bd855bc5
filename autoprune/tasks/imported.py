"""A user's task named by import path (config ``task: package.module:Class``, ``task_args``), built where it runs.

Only the path and the arguments travel: each Ray worker imports the class and builds the task itself on first use,
so a task that reads its data from a path or a URI reads it on the worker, never through the driver. The module must
be importable on every worker (installed, on ``PYTHONPATH``, or in the Ray job's working directory).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.imports import resolve
from autoprune.tasks.base import Batch, EpochCallback, Task


def task_class(path: str) -> type[Task]:
    """The ``Task`` subclass at ``package.module:Class``, or an error naming what is wrong with the path."""
    cls = resolve(path, "config key 'task'")
    if not isinstance(cls, type) or not issubclass(cls, Task):
        raise AutopruneError(f"config key 'task': '{path}' is not a subclass of autoprune.tasks.Task")
    return cls


class ImportedTask(Task):
    """``Class(**args)`` for ``path``, built on first use in each process; pickles as its path and arguments."""

    def __init__(self, path: str, args: dict[str, Any] | None = None) -> None:
        self.path, self.args = path, dict(args or {})
        self.metric = task_class(path).metric
        self._task: Task | None = None

    @property
    def task(self) -> Task:
        if self._task is None:
            try:
                self._task = task_class(self.path)(**self.args)
            except TypeError as e:
                raise AutopruneError(f"config key 'task_args': {self.path} does not take them: {e}") from None
            if self._task.metric != self.metric:
                raise AutopruneError(f"task {self.path}: its instance reports {self._task.metric}, its class "
                                     f"{self.metric}")
        return self._task

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "args": self.args, "metric": self.metric, "_task": None}

    def calibration(self, count: int, seed: int = 0) -> list[Batch]:
        return self.task.calibration(count, seed)

    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        return self.task.evaluate(model, split)

    def finetune(self, model: nn.Module, epochs: float, *, teacher: nn.Module | None = None,
                 on_epoch: EpochCallback | None = None, progress: dict[str, Any] | None = None) -> None:
        self.task.finetune(model, epochs, teacher=teacher, on_epoch=on_epoch, progress=progress)

    @property
    def trains(self) -> bool:
        return self.task.trains

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.task.loss(model, batch)

    @property
    def has_loss(self) -> bool:
        return self.task.has_loss

    def example_input(self) -> Any:
        return self.task.example_input()

    def describe(self) -> dict[str, Any]:
        return {**self.task.describe(), "task": self.path, **({"task_args": self.args} if self.args else {})}
