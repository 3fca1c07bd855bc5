"""An ImageFolder read lazily: files are decoded where batches are drawn, never held whole in memory.

``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val/``). Only the file lists are read where the data is
made (classes, a stratified seeded validation split, normalisation from a seeded sample of training images);
``FolderData`` pickles as its spec (the root made absolute), the split's index arrays, those statistics and a
digest of each file list, and each process that draws batches lists the folders itself (checked against the
digest), so the images reach a node from its own filesystem (the root must be readable on every node: a shared
or synced path), not through the driver or the object store. A ``DataLoader`` with ``data.workers`` processes
decodes, resizes and augments (random crop with padding, horizontal flip); pinned memory for CUDA.
"""
from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from autoprune.data.factory import DeviceLoader, batches
from autoprune.data.spec import DataSpec, sample_indices
from autoprune.errors import AutopruneError

STATS_SAMPLES = 500  # training images the normalisation is computed on


@dataclass
class _Folders:
    train: np.ndarray   # indices into the train folder
    val: np.ndarray     # indices into the train folder (held out)
    test: np.ndarray    # indices into the test folder


class _Images(Dataset):
    """``(image, label)`` of a folder's ``indices`` through ``transform``."""

    def __init__(self, folder: Any, indices: np.ndarray, transform: Any) -> None:
        self.folder, self.indices, self.transform = folder, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.folder.samples[int(self.indices[i])]
        return self.transform(self.folder.loader(path)), label


class FolderData:
    """The train / validation / test splits of an ImageFolder tree, read by DataLoaders."""

    def __init__(self, spec: DataSpec) -> None:
        if spec.root is None:
            raise AutopruneError("dataset 'imagefolder' needs a data root (--data-root or AUTOPRUNE_DATA)")
        root = Path(spec.root).expanduser().resolve()  # trials run from other working directories
        self.spec = DataSpec.from_dict({**spec.to_dict(), "root": str(root)})
        self._opened: dict[str, Any] = {}
        self._listing: dict[str, str] = {}  # digest of each folder's file list, checked where it is opened again
        train = self._folder("train")
        self.classes: list[str] = list(train.classes)
        self.split_indices = self._split(train)
        self.mean, self.std = self._normalisation(train)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_opened": {}}  # the folders are listed again where they are used (and checked)

    def _folder(self, name: str) -> Any:
        from torchvision import datasets

        if name in self._opened:
            return self._opened[name]
        root = Path(str(self.spec.root)).expanduser()
        path = root / name if name == "train" or (root / name).is_dir() else root / "val"
        try:
            folder = datasets.ImageFolder(str(path))
        except (FileNotFoundError, OSError, RuntimeError) as e:
            raise AutopruneError(f"dataset 'imagefolder' not found under '{root}': expected {root}/train/<class>/*.png"
                                 f"|jpg and {root}/test/<class>/*.png|jpg ({str(e).splitlines()[0]})") from None
        digest = hashlib.sha256("\n".join(f"{Path(f).relative_to(path)}:{c}" for f, c in folder.samples)
                                .encode()).hexdigest()
        if self._listing.setdefault(name, digest) != digest:
            raise AutopruneError(f"dataset 'imagefolder': {path} on {socket.gethostname()} lists other files than "
                                 f"where the search started: every node needs the same copy of the data")
        self._opened[name] = folder
        return folder

    def _split(self, train: Any) -> _Folders:
        """Stratified and seeded: the same fraction of every class is held out for validation."""
        if not 0.0 < self.spec.val_fraction < 1.0:
            raise AutopruneError(f"val_fraction must be in (0, 1), got {self.spec.val_fraction}")
        targets = torch.tensor(train.targets)
        g = torch.Generator().manual_seed(self.spec.seed)
        held: list[int] = []
        for c in range(len(train.classes)):
            idx = torch.nonzero(targets == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            held += idx[: round(len(idx) * self.spec.val_fraction)].tolist()
        held_set = set(held)
        kept = [i for i in range(len(targets)) if i not in held_set]
        if self.spec.max_train_samples is not None:
            kept = [kept[i] for i in sample_indices(len(kept), self.spec.max_train_samples, self.spec.seed)]
        test = self._folder("test")
        if not kept or not held or not len(test):
            raise AutopruneError(f"dataset 'imagefolder' under '{self.spec.root}': the train split, its held-out "
                                 f"validation ({self.spec.val_fraction:g}) or the test split is empty")
        return _Folders(np.asarray(kept, dtype=np.int64), np.asarray(sorted(held), dtype=np.int64),
                        np.arange(len(test), dtype=np.int64))

    def _normalisation(self, train: Any) -> tuple[list[float], list[float]]:
        """Per-channel mean and std over a seeded sample of the training images."""
        from torchvision import transforms

        size = self.spec.image_size
        to_tensor = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
        pick = sample_indices(len(self.split_indices.train), STATS_SAMPLES, self.spec.seed)
        pixels = torch.stack([to_tensor(train.loader(train.samples[int(self.split_indices.train[i])][0]))
                              for i in pick])
        return pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.spec.image_size, self.spec.image_size)

    def _transform(self, augment: bool) -> Any:
        from torchvision import transforms

        size = self.spec.image_size
        steps: list[Any] = [transforms.Resize((size, size))]
        if augment:
            steps += [transforms.RandomCrop(size, padding=size // 8), transforms.RandomHorizontalFlip()]
        return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(self.mean, self.std)])

    def split(self, name: str, augment: bool = False) -> Dataset:
        folder = self._folder("test" if name == "test" else "train")
        indices = {"train": self.split_indices.train, "val": self.split_indices.val,
                   "test": self.split_indices.test}[name]
        return _Images(folder, indices, self._transform(augment))

    def loader(self, split: str, batch_size: int = 128, *, shuffle: bool = False, augment: bool = False,
               seed: int = 0, device: str | torch.device = "cpu", limit: int | None = None) -> DeviceLoader:
        """Batches of ``split``; ``limit``: a fixed, seeded random N of its samples."""
        return batches(self.split(split, augment), self.spec, batch_size, shuffle=shuffle, seed=seed, device=device,
                       limit=limit)

    def samples(self, split: str) -> int:
        return len(getattr(self.split_indices, split))

    def preprocess(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}
