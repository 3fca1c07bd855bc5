"""A user's own Datasets for the tests: image files on disk, read one sample at a time (nothing held in memory)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

MADE = {"count": 0}  # how often this process called the factory


class ImageFiles(Dataset):
    """``root/<index>.pt`` files, each ``(image, label)``."""

    classes = ["vertical", "horizontal", "blank"]

    def __init__(self, root: str | Path) -> None:
        self.files = sorted(Path(root).glob("*.pt"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = torch.load(self.files[index], weights_only=True)
        return image, int(label)


def write_images(root: Path, count: int, seed: int = 0, size: int = 12) -> Path:
    """``count`` noisy images of three learnable classes: a vertical bar, a horizontal bar, nothing."""
    g = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        label = i % 3
        image = 0.3 * torch.randn(1, size, size, generator=g)
        if label == 0:
            image[:, :, size // 2] += 2.0
        elif label == 1:
            image[:, size // 2, :] += 2.0
        torch.save((image, label), root / f"{i:05d}.pt")
    return root


def image_files(root: str, with_val: bool = False) -> dict:
    MADE["count"] += 1
    splits = {"train": ImageFiles(Path(root) / "train"), "test": ImageFiles(Path(root) / "test")}
    return {**splits, "val": ImageFiles(Path(root) / "val")} if with_val else splits


def counted(root: str) -> dict:
    return {**image_files(root), "num_classes": 3}


def as_list(root: str) -> list:
    return [ImageFiles(Path(root) / "train")]


def without_test(root: str) -> dict:
    return {"train": ImageFiles(Path(root) / "train")}


def no_classes(root: str) -> dict:
    return {"train": list(ImageFiles(Path(root) / "train")), "test": ImageFiles(Path(root) / "test")}


def a_number(root: str) -> dict:
    return {"train": 3, "test": ImageFiles(Path(root) / "test")}


NOT_CALLABLE = 7


class SortedByClass(Dataset):
    """``n`` tiny samples stored class by class (as an ImageFolder is): the first third class 0, and so on."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = index * 3 // self.n
        return torch.full((1, 4, 4), float(label)), label


def sorted_by_class() -> dict:
    return {"train": SortedByClass(90), "test": SortedByClass(30), "num_classes": 3}


def raising(root: str) -> dict:
    raise ValueError(f"no bucket at {root}")
