"""The user's own Datasets, from a factory named by import path (``data.factory: package.module:function``).

``function(**factory_args)`` returns a mapping with ``train`` and ``test`` (and optionally ``val``, else a seeded
``val_fraction`` of ``train`` is held out, and ``num_classes``, else the train Dataset's ``classes`` are counted).
Each is a map-style ``torch.utils.data.Dataset`` of ``(input tensor, integer label)`` whose transforms already
turn samples into model inputs (and augment the training split, if wanted: autoprune adds no augmentation of its
own to these; a held-out ``val`` would share train's transforms, so an augmenting train needs its own ``val``).
Only the path and the arguments travel: ``FactoryData`` checks them where it is made (the import, the arguments
against the signature) and calls the factory on first use in each process, so a Dataset that reads files from a
path or a URI reads them on the worker that uses it, never through the driver (paths in ``factory_args`` must be
absolute: workers run elsewhere). Batches come from a ``DataLoader`` with ``workers`` processes (started for each
pass over a split; pinned memory for CUDA). Subsets (``max_train_samples``, the proxy's ``limit``) are seeded
random samples, so data sorted by class yields every class.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from autoprune.data.spec import DataSpec, sample_indices
from autoprune.errors import AutopruneError
from autoprune.imports import resolve

KEY = "config key 'data.factory'"


@dataclass
class _Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int


class DeviceLoader:
    """A DataLoader whose batches are moved to ``device``."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for inputs, targets in self.loader:
            yield inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)


def batches(data: Dataset, spec: DataSpec, batch_size: int, *, shuffle: bool, seed: int,
            device: str | torch.device, limit: int | None) -> DeviceLoader:
    """A DataLoader over ``data`` with ``spec.workers`` processes (pinned memory for CUDA) moving batches to
    ``device``; ``seed`` fixes the order and the workers' random streams, ``limit`` keeps a fixed, seeded random N
    of the samples."""
    if limit is not None:
        data = Subset(data, sample_indices(len(data), limit, spec.seed))  # type: ignore[arg-type]
    device = torch.device(device)
    loader = DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed),
                        num_workers=spec.workers, pin_memory=device.type == "cuda")
    return DeviceLoader(loader, device)


class FactoryData:
    """The splits of ``spec.factory``, built on first use in each process; pickles as its spec alone."""

    def __init__(self, spec: DataSpec) -> None:
        if spec.factory is None:
            raise AutopruneError("FactoryData needs data.factory")
        self.spec = spec
        self._factory()  # a bad path or bad arguments fail here, not on the workers
        self._splits: _Splits | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "_splits": None}

    @property
    def splits(self) -> _Splits:
        if self._splits is None:
            self._splits = self._build()
        return self._splits

    def _factory(self) -> Any:
        factory = resolve(str(self.spec.factory), KEY)
        if not callable(factory):
            raise AutopruneError(f"{KEY}: '{self.spec.factory}' is not callable")
        try:
            inspect.signature(factory).bind(**self.spec.factory_args)
        except TypeError as e:
            raise AutopruneError(f"config key 'data.factory_args': {self.spec.factory} does not take them: {e}") \
                from None
        except ValueError:  # no signature to check (some builtins): the call will tell
            pass
        return factory

    def _build(self) -> _Splits:
        try:
            made = self._factory()(**self.spec.factory_args)
        except AutopruneError:
            raise
        except Exception as e:
            raise AutopruneError(f"{KEY}: {self.spec.factory} raised {type(e).__name__}: {e}") from e
        if not isinstance(made, Mapping) or "train" not in made or "test" not in made:
            raise AutopruneError(f"{KEY}: {self.spec.factory} must return a mapping with 'train' and 'test' Datasets "
                                 f"(and optionally 'val', 'num_classes'), got {type(made).__name__}")
        for name in ("train", "val", "test"):
            if name in made and not (hasattr(made[name], "__getitem__") and hasattr(made[name], "__len__")):
                raise AutopruneError(f"{KEY}: '{name}' from {self.spec.factory} is {type(made[name]).__name__}, "
                                     f"not a map-style Dataset (with __getitem__ and __len__)")
        train, test = made["train"], made["test"]
        num_classes = made.get("num_classes", len(getattr(train, "classes", ())) or None)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise AutopruneError(f"{KEY}: {self.spec.factory} must return 'num_classes' (an int >= 2) or a train "
                                 f"Dataset with a 'classes' list")
        if "val" in made:
            val = made["val"]
        else:
            held = round(len(train) * self.spec.val_fraction)
            if not 0 < held < len(train):
                raise AutopruneError(f"config key 'data.val_fraction': {self.spec.val_fraction} of {len(train)} "
                                     f"training samples leaves no validation or no training split")
            val_indices = set(sample_indices(len(train), held, self.spec.seed))
            train, val = (Subset(train, [i for i in range(len(train)) if i not in val_indices]),
                          Subset(train, sorted(val_indices)))
        if self.spec.max_train_samples is not None:
            train = Subset(train, sample_indices(len(train), self.spec.max_train_samples, self.spec.seed))
        for name, split in (("train", train), ("val", val), ("test", test)):
            if len(split) == 0:
                raise AutopruneError(f"{KEY}: the '{name}' split of {self.spec.factory} is empty")
        return _Splits(train, val, test, num_classes)

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        sample = self.splits.train[0]
        if not (isinstance(sample, (tuple, list)) and len(sample) == 2 and isinstance(sample[0], torch.Tensor)):
            raise AutopruneError(f"{KEY}: the train Dataset of {self.spec.factory} must yield (input tensor, label) "
                                 f"pairs, got {type(sample).__name__}")
        return tuple(sample[0].shape)

    def loader(self, split: str, batch_size: int = 128, *, shuffle: bool = False, augment: bool = False,
               seed: int = 0, device: str | torch.device = "cpu", limit: int | None = None) -> DeviceLoader:
        """Batches of ``split`` (``augment`` is the train Dataset's own business); ``limit``: a fixed, seeded random N
        of its samples."""
        return batches(self.split(split), self.spec, batch_size, shuffle=shuffle, seed=seed, device=device, limit=limit)

    def split(self, name: str) -> Dataset:
        splits = self.splits
        return {"train": splits.train, "val": splits.val, "test": splits.test}[name]

    def samples(self, split: str) -> int:
        return len(self.split(split))  # type: ignore[arg-type]

    def preprocess(self) -> dict[str, list[float]]:
        """Nothing of autoprune's: the factory's Datasets turn samples into inputs."""
        return {}
