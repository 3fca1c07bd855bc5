"""The built-in task: image classification (built-in or the user's Datasets), top-1 accuracy, SGD fine-tuning, KD."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import islice
from typing import Any

import torch
from torch import nn

from autoprune.data import ClassificationData
from autoprune.errors import AutopruneError
from autoprune.tasks.base import SPLITS, Batch, EpochCallback, Metric, Task, device_of
from autoprune.tasks.training import TrainConfig, classification_loss, evaluate, train

CALIBRATION_BATCH = 64  # images per calibration batch


@dataclass(frozen=True)
class Recipe:
    """How the classification task fine-tunes: SGD (Nesterov, cosine schedule) at ``lr``, batches of
    ``batch_size`` with crop / flip augmentation, distillation weight ``kd_alpha`` and temperature when a teacher
    is given, in mixed ``precision``; ``proxy_samples``: the validation images stage-0 accuracy is measured on."""

    lr: float = 0.02
    batch_size: int = 128
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    seed: int = 0
    proxy_samples: int = 500
    precision: str = "auto"  # autoprune.tasks.training.autocast_dtype

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ClassificationTask(Task):
    """Top-1 accuracy of an image classifier on ``data``'s splits, fine-tuned by ``autoprune.tasks.training``."""

    metric = Metric("accuracy", "max")

    def __init__(self, data: ClassificationData, recipe: Recipe = Recipe()) -> None:
        self.data, self.recipe = data, recipe

    def calibration(self, count: int, seed: int = 0) -> list[Batch]:
        loader = self.data.loader("train", CALIBRATION_BATCH, shuffle=True, seed=seed)
        return list(islice(loader, count))

    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        if split not in SPLITS:
            raise AutopruneError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
        device = device_of(model)
        limit = self.recipe.proxy_samples if split == "proxy" else None
        return evaluate(model, self.data.loader("val" if split == "proxy" else split, 256, device=device, limit=limit),
                        device)

    def finetune(self, model: nn.Module, epochs: float, *, teacher: nn.Module | None = None,
                 on_epoch: EpochCallback | None = None, progress: dict[str, Any] | None = None) -> None:
        r, device = self.recipe, device_of(model)
        done = int(progress["epoch"]) if progress else 0  # a resumed run draws the batches of the epochs it has left
        loader = self.data.loader("train", r.batch_size, shuffle=True, augment=True, seed=r.seed + done, device=device)
        config = TrainConfig(epochs=epochs, lr=r.lr, seed=r.seed, kd_alpha=r.kd_alpha if teacher is not None else 0.0,
                             kd_temperature=r.kd_temperature, precision=r.precision)

        def report(epoch: int, loss: float) -> None:
            if on_epoch is not None:
                on_epoch(epoch, {"loss": loss})
                model.train()  # the callback may have evaluated it

        train(model, loader, config, teacher=teacher, device=device, on_epoch=report, progress=progress)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Per-image cross-entropy."""
        return classification_loss(model, batch)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dataset": self.data.spec.dataset, **self.recipe.to_dict()}
