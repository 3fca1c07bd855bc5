"""What data a run uses (``DataSpec``, stored in checkpoints so a run can reload it) and what a task needs of it."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from autoprune.errors import AutopruneError

DATASETS = ("embedded", "fashionmnist", "mnist", "cifar10", "imagefolder", "factory")

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class DataSpec:
    """Which data to load and how to split it.

    ``factory``: the user's ``package.module:function`` returning Datasets (``autoprune.data.factory``), called with
    ``factory_args`` where the data is used; ``workers``: its DataLoader's worker processes.
    """

    dataset: str = "embedded"
    root: str | None = None
    val_fraction: float = 0.1
    seed: int = 0
    image_size: int = 32  # ImageFolder images are resized to this
    download: bool = False
    max_train_samples: int | None = None  # keep a seeded random N of the training images (quick runs, tests)
    factory: str | None = None
    factory_args: dict[str, Any] = field(default_factory=dict)
    workers: int = 0

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise AutopruneError(f"config key 'data.workers' must be >= 0, got {self.workers}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise AutopruneError(f"config key 'data.max_train_samples' must be >= 1, got {self.max_train_samples}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def sample_indices(n: int, k: int, seed: int) -> list[int]:
    """A seeded random ``k`` of ``range(n)`` (all of it when ``k >= n``), ascending: a fixed subset that does not
    depend on how the data is ordered (an ImageFolder is sorted by class)."""
    if k >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist())


class ClassificationData(Protocol):
    """The train / val / test splits of a classification task, as batches of (inputs, integer labels)."""

    spec: DataSpec

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def num_classes(self) -> int: ...

    def loader(self, split: str, batch_size: int = 128, *, shuffle: bool = False, augment: bool = False,
               seed: int = 0, device: str | torch.device = "cpu", limit: int | None = None) -> Batches: ...

    def samples(self, split: str) -> int: ...

    def preprocess(self) -> dict[str, list[float]]: ...
