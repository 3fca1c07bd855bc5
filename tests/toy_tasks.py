"""A task that is not classification, for the Task contract suite: denoise synthetic images, metric MSE (min)."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.tasks.base import SPLITS, Batch, EpochCallback, Metric, Task, device_of


def blobs(n: int, seed: int, size: int = 12) -> torch.Tensor:
    """Smooth synthetic 1-channel images: a few Gaussian blobs each."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.rand(n, 3, 2, generator=g) * size
    images = torch.exp(-((ys - centres[..., 0, None, None]) ** 2 + (xs - centres[..., 1, None, None]) ** 2) / 6.0)
    return images.sum(1, keepdim=True).clamp(max=1.0)


class Denoiser(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DenoisingTask(Task):
    """Inputs: clean images plus Gaussian noise; targets: the clean images. Fine-tuned with Adam on the MSE."""

    metric = Metric("mse", "min")

    def __init__(self, samples: int = 96, noise: float = 0.2, batch_size: int = 16, lr: float = 1e-3) -> None:
        self.noise, self.batch_size, self.lr = noise, batch_size, lr
        self.splits = {name: blobs(samples, seed) for seed, name in enumerate(("train", "val", "test"))}

    def _batches(self, split: str, seed: int) -> list[Batch]:
        clean = self.splits[split]
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(clean), generator=g) if split == "train" else torch.arange(len(clean))
        noisy = clean + self.noise * torch.randn(clean.shape, generator=g)
        return [(noisy[order[i:i + self.batch_size]], clean[order[i:i + self.batch_size]])
                for i in range(0, len(clean), self.batch_size)]

    def calibration(self, count: int, seed: int = 0) -> list[Batch]:
        return self._batches("train", seed)[:count]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        if split not in SPLITS:
            raise AutopruneError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
        device, total = device_of(model), 0.0
        batches = self._batches("val" if split == "proxy" else split, 1234)[: 2 if split == "proxy" else None]
        model.eval()
        for x, y in batches:
            total += F.mse_loss(model(x.to(device)), y.to(device), reduction="sum").item()
        return total / sum(y.numel() for _, y in batches)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        noisy, clean = batch
        return ((model(noisy) - clean) ** 2).flatten(1).mean(1)

    def finetune(self, model: nn.Module, epochs: float, *, teacher: nn.Module | None = None,
                 on_epoch: EpochCallback | None = None, progress: dict[str, Any] | None = None) -> None:
        device = device_of(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        done = int(progress["epoch"]) if progress else 0
        if progress:
            optimizer.load_state_dict(progress["optimizer"])
        for epoch in range(done, math.ceil(epochs)):
            batches = self._batches("train", epoch)
            if epoch + 1 > epochs:  # a fractional last epoch
                batches = batches[: max(1, round((epochs - epoch) * len(batches)))]
            model.train()
            for x, y in batches:
                x, y = x.to(device), y.to(device)
                out = model(x)
                loss = F.mse_loss(out, y)
                if teacher is not None:
                    with torch.no_grad():
                        guide = teacher(x)
                    loss = loss + 0.5 * F.mse_loss(out, guide)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if progress is not None:
                progress.update(epoch=epoch + 1, optimizer=optimizer.state_dict())
            if on_epoch is not None:
                on_epoch(epoch + 1, {"loss": float(loss.detach())})


class LosslessDenoisingTask(DenoisingTask):
    """The denoising task as if it defined no loss."""

    loss = Task.loss
