"""Image-classification datasets held in memory as uint8 tensors, with a seeded validation split.

Sources: the embedded Fashion-MNIST subset shipped in the package (no files needed), and
torchvision's FashionMNIST, MNIST and CIFAR10 from a local root (each a few arrays that torchvision reads whole;
pickled for Ray as NumPy arrays, so every node holds one copy in its object store, shared by its trials). Nothing is
ever downloaded unless the user asks for it (``--download``). ImageFolder trees (``autoprune.data.folder``) and a
user's own Datasets (``autoprune.data.factory``, ``data.factory``) are read lazily where they are used.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from autoprune.data.factory import FactoryData
from autoprune.data.folder import FolderData
from autoprune.data.spec import DATASETS, DataSpec, sample_indices
from autoprune.errors import AutopruneError

EMBEDDED_FILE = Path(__file__).parent / "embedded" / "fashionmnist_subset.npz"
# Files torchvision needs under the root, named in the error when they are missing.
EXPECTED = {
    "fashionmnist": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    "imagefolder": "train/<class>/*.png|jpg and test/<class>/*.png|jpg",
}
# Flipping a digit makes another symbol; clothes and objects stay what they are.
FLIP_OK = {"embedded": True, "fashionmnist": True, "mnist": False, "cifar10": True, "imagefolder": True}


@dataclass
class Split:
    """One split's images and labels. Pickled as NumPy arrays, which Ray's object store hands to every process of a
    node without copying (pickle protocol 5 buffers): the concurrent trials of a node share one copy of the data."""

    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def __reduce__(self) -> tuple[Any, tuple[np.ndarray, np.ndarray]]:
        return _shared_split, (self.images.numpy(), self.labels.numpy())


def _shared_split(images: np.ndarray, labels: np.ndarray) -> Split:
    """A split over arrays that may be read-only views of Ray's shared memory (never written: batches are copies)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return Split(torch.from_numpy(images), torch.from_numpy(labels))


@dataclass
class ImageData:
    """Train / validation / test splits plus the normalisation computed on the training split."""

    spec: DataSpec
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: list[float]
    std: list[float]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def loader(self, split: str, batch_size: int = 128, *, shuffle: bool = False, augment: bool = False,
               seed: int = 0, device: str | torch.device = "cpu", limit: int | None = None) -> "TensorLoader":
        """Batches of ``split``; ``limit``: a fixed, seeded random N of its samples."""
        data = self.split(split)
        if limit is not None:
            keep = torch.tensor(sample_indices(len(data), limit, self.spec.seed))
            data = Split(data.images[keep], data.labels[keep])
        flip = augment and FLIP_OK[self.spec.dataset]
        return TensorLoader(data, self.mean, self.std, batch_size, shuffle=shuffle,
                            crop_pad=(data.images.shape[-1] // 8) if augment else 0, flip=flip, seed=seed, device=device)

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def samples(self, split: str) -> int:
        return len(self.split(split))

    def preprocess(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


class TensorLoader:
    """Batches of normalised float images from in-memory uint8 tensors, with optional crop/flip augmentation.

    Iterating yields ``(inputs, targets)``; each pass reshuffles with a seeded generator.
    """

    def __init__(self, data: Split, mean: list[float], std: list[float], batch_size: int, *, shuffle: bool = False,
                 crop_pad: int = 0, flip: bool = False, seed: int = 0, device: str | torch.device = "cpu") -> None:
        if len(data) == 0:
            raise AutopruneError("cannot make a loader over an empty split")
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.crop_pad, self.flip, self.device = crop_pad, flip, torch.device(device)
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.data) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.data)
        order = torch.randperm(n, generator=self._generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.data.images[idx]
            if self.crop_pad:
                x = self._random_crop(x)
            if self.flip:
                mirror = torch.rand(len(idx), generator=self._generator) < 0.5
                x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(-1), x)
            x = (x.float() / 255.0 - self.mean) / self.std
            yield x.to(self.device, non_blocking=True), self.data.labels[idx].to(self.device, non_blocking=True)

    def _random_crop(self, x: torch.Tensor) -> torch.Tensor:
        p, (h, w) = self.crop_pad, x.shape[-2:]
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy, dx = torch.randint(0, 2 * p + 1, (2,), generator=self._generator).tolist()
        return padded[..., dy:dy + h, dx:dx + w]


def load_data(spec: DataSpec) -> ImageData | FactoryData | FolderData:
    """Load ``spec.dataset`` into memory, carve the validation split and compute normalisation; an ImageFolder and
    the user's factory's Datasets (``spec.factory``) are only described, and read by their loaders where they are
    used."""
    if spec.factory is not None:
        return FactoryData(spec)
    if spec.dataset == "imagefolder":
        return FolderData(spec)
    if spec.dataset == "factory":
        raise AutopruneError("dataset 'factory' needs data.factory, 'package.module:function'")
    if spec.dataset not in DATASETS:
        raise AutopruneError(f"unknown dataset '{spec.dataset}': use one of {', '.join(DATASETS)}")
    if not 0.0 < spec.val_fraction < 1.0:
        raise AutopruneError(f"val_fraction must be in (0, 1), got {spec.val_fraction}")
    train, test = _read(spec)
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    train, val = _split_validation(train, spec.val_fraction, spec.seed, num_classes)
    if spec.max_train_samples is not None:
        keep = torch.tensor(sample_indices(len(train), spec.max_train_samples, spec.seed))
        train = Split(train.images[keep], train.labels[keep])
    pixels = train.images.float().div_(255.0)
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    return ImageData(spec, train, val, test, num_classes, mean, std)


def _split_validation(train: Split, fraction: float, seed: int, num_classes: int) -> tuple[Split, Split]:
    """Stratified, seeded: the same fraction of every class goes to validation."""
    g = torch.Generator().manual_seed(seed)
    val_idx = []
    for c in range(num_classes):
        idx = torch.nonzero(train.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        val_idx.append(idx[: round(len(idx) * fraction)])
    val_mask = torch.zeros(len(train), dtype=torch.bool)
    val_mask[torch.cat(val_idx)] = True
    return (Split(train.images[~val_mask], train.labels[~val_mask]),
            Split(train.images[val_mask], train.labels[val_mask]))


def _read(spec: DataSpec) -> tuple[Split, Split]:
    if spec.dataset == "embedded":
        with np.load(EMBEDDED_FILE) as z:
            return (Split(torch.from_numpy(z["train_images"]).unsqueeze(1), torch.from_numpy(z["train_labels"]).long()),
                    Split(torch.from_numpy(z["test_images"]).unsqueeze(1), torch.from_numpy(z["test_labels"]).long()))
    if spec.root is None:
        raise AutopruneError(f"dataset '{spec.dataset}' needs a data root (--data-root or AUTOPRUNE_DATA)")
    root = Path(spec.root).expanduser()
    try:
        return _read_torchvision(spec.dataset, root, spec.download)
    except (RuntimeError, FileNotFoundError, OSError) as e:
        if isinstance(e, AutopruneError):
            raise
        raise AutopruneError(
            f"dataset '{spec.dataset}' not found under '{root}': expected {root}/{EXPECTED[spec.dataset]}"
            + ("" if spec.download else " (or pass --download)")
        ) from None


def _read_torchvision(name: str, root: Path, download: bool) -> tuple[Split, Split]:
    from torchvision import datasets

    cls = {"fashionmnist": datasets.FashionMNIST, "mnist": datasets.MNIST, "cifar10": datasets.CIFAR10}[name]
    splits = []
    for train in (True, False):
        ds = cls(root=str(root), train=train, download=download)
        images = torch.as_tensor(np.asarray(ds.data))
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        splits.append(Split(images.contiguous(), torch.as_tensor(np.asarray(ds.targets)).long()))
    return splits[0], splits[1]
