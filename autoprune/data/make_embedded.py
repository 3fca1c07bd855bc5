"""Rebuild the embedded default dataset: a class-balanced Fashion-MNIST subset, compressed uint8.

    python -m autoprune.data.make_embedded --root ../shared/data

Fashion-MNIST is (c) 2017 Zalando SE, MIT licence. The subset is deterministic: for each class,
the first ``--train-per-class`` / ``--test-per-class`` images in a permutation seeded by ``--seed``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.data.datasets import EMBEDDED_FILE, _read_torchvision


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` samples of every class, sorted, chosen by a seeded permutation."""
    order = np.random.default_rng(seed).permutation(len(labels))
    chosen = [order[labels[order] == c][:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data", help="torchvision-layout root holding FashionMNIST/raw")
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=EMBEDDED_FILE)
    args = parser.parse_args(argv)
    train, test = _read_torchvision("fashionmnist", Path(args.root), download=False)
    arrays: dict[str, Any] = {}
    for split, data, per_class in (("train", train, args.train_per_class), ("test", test, args.test_per_class)):
        labels = data.labels.numpy()
        idx = balanced_subset(labels, per_class, args.seed)
        arrays[f"{split}_images"] = data.images[idx, 0].numpy().astype(np.uint8)
        arrays[f"{split}_labels"] = labels[idx].astype(np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): "
          f"{len(arrays['train_labels'])} train + {len(arrays['test_labels'])} test images")


if __name__ == "__main__":
    main()
