"""Your model, your Dataset, your training loop: train a small CNN on MNIST, prune-search it with
``autoprune.search``, export the knee of the front, reload the export and evaluate it.

    .venv/bin/python examples/own_model_mnist.py [--data ../shared/data] [--trials 8] [--out runs/mnist_own]

Nothing here is autoprune's but the three calls at the end: the Dataset reads MNIST's IDX files itself, the loop is
plain PyTorch. The functions and classes are defined in this script (``__main__``), so Ray sends them to its workers
by value; the data they close over travels with them.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import autoprune


class IdxMNIST(Dataset):
    """MNIST from its raw IDX files (``ROOT/MNIST/raw``), as float tensors in [0, 1]."""

    def __init__(self, root: str, train: bool) -> None:
        prefix = "train" if train else "t10k"
        raw = Path(root) / "MNIST" / "raw"
        images = np.fromfile(raw / f"{prefix}-images-idx3-ubyte", dtype=np.uint8, offset=16)
        self.images = torch.from_numpy(images.reshape(-1, 1, 28, 28).copy())
        self.labels = torch.from_numpy(np.fromfile(raw / f"{prefix}-labels-idx1-ubyte", dtype=np.uint8,
                                                   offset=8).astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.images[i].float() / 255.0 - 0.1307) / 0.3081, self.labels[i]


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def train_epochs(model: nn.Module, loader: DataLoader, epochs: float, teacher: nn.Module | None = None) -> None:
    """The training loop: Adam, cross-entropy, plus distillation from ``teacher`` when given."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = max(1, round(epochs * len(loader)))
    model.train()
    done = 0
    while done < steps:
        for x, y in loader:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher(x) / 4.0, dim=1)
                loss = 0.5 * loss + 0.5 * 16.0 * F.kl_div(F.log_softmax(logits / 4.0, dim=1), soft,
                                                           reduction="batchmean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                return


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, set_eval: bool = True) -> float:
    if set_eval:  # a torch.export program has no train/eval switch: it runs as exported (eval)
        model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("AUTOPRUNE_DATA", "../shared/data"))
    p.add_argument("--train-samples", type=int, default=20000)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=float, default=3, help="epochs of the base's own training")
    p.add_argument("--out", default="runs/mnist_own")
    args = p.parse_args()
    torch.manual_seed(0)
    full = IdxMNIST(args.data, train=True)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))
    train_set, val_set = Subset(full, order[:args.train_samples].tolist()), Subset(full, order[-5000:].tolist())
    train_loader = DataLoader(train_set, batch_size=128, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=500)
    test_loader = DataLoader(IdxMNIST(args.data, train=False), batch_size=500)

    model = SmallCNN()
    start = time.perf_counter()
    train_epochs(model, train_loader, args.epochs)
    print(f"trained SmallCNN in {time.perf_counter() - start:.0f} s: val {accuracy(model, val_loader):.4f}, "
          f"test {accuracy(model, test_loader):.4f}", flush=True)

    calibration = [batch for _, batch in zip(range(16), DataLoader(train_set, batch_size=64, shuffle=True))]
    result = autoprune.search(
        model, calibration[0][0][:1],
        evaluate=lambda m: accuracy(m, val_loader),
        finetune=lambda m, epochs, teacher: train_epochs(m, train_loader, epochs, teacher),
        test=lambda m: accuracy(m, test_loader),
        calibration=calibration, out=args.out, trials=args.trials, concurrency=2,
        config={"finetune": {"epochs": 1, "kd": True}, "constraints": ["accuracy >= base - 0.03"]})
    print(f"\n{result.finished} trials, front of {len(result.front)}:")
    print(result.front[["trial_id", "accuracy", "latency_ms", "size_bytes"]].to_string(index=False))

    export = Path(args.out) / "export"
    metrics = autoprune.export(result.run_dir, pick="knee", out=export)
    pruned = autoprune.load(export, model=model)  # the state_dict export, rebuilt on your unpruned model
    program = torch.export.load(str(export / "model.pt2")).module()  # plain torch, no autoprune needed
    from_program = accuracy(program, test_loader, set_eval=False)
    print(f"\nexported trial {metrics['trial_id']}: test accuracy {accuracy(pruned, test_loader):.4f} reloaded "
          f"(recorded {metrics['test_accuracy']:.4f}; the .pt2 program: {from_program:.4f}), "
          f"{metrics['params']:,} parameters (base {metrics['base']['params']:,}), latency {metrics['latency_ms']:.3f} "
          f"ms (base {metrics['base']['latency_ms']:.3f})")


if __name__ == "__main__":
    main()
