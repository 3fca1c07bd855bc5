"""A task of your own for autoprune: denoise Fashion-MNIST images, scored by PSNR (higher is better).

Used by ``denoise.yaml`` (``task: denoise:DenoisingTask``, ``model: denoise:autoencoder``); run from the repository
root with this directory on ``PYTHONPATH`` (see README.md), so that the Ray workers import it too.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.data import DataSpec, load_data
from autoprune.errors import AutopruneError
from autoprune.tasks import Batch, EpochCallback, Metric, Task, device_of


def autoencoder() -> nn.Module:
    """A small convolutional denoiser: encoder, decoder, and a residual connection from the noisy input."""
    return Denoiser()


class Denoiser(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.decode = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.decode(self.encode(x))


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


class DenoisingTask(Task):
    """Inputs: Fashion-MNIST images plus Gaussian noise of std ``noise`` (fixed per split and seed); targets: the
    clean images. Data: the embedded subset, or torchvision's Fashion-MNIST under ``root`` when given. Fine-tuning:
    Adam on the MSE, plus the MSE to the teacher's output (weight ``kd_weight``) when distilling."""

    metric = Metric("psnr", "max")

    def __init__(self, noise: float = 0.3, root: str | None = None, batch_size: int = 64, lr: float = 1e-3,
                 kd_weight: float = 0.5, proxy_samples: int = 500) -> None:
        data = load_data(DataSpec("fashionmnist" if root else "embedded", root))
        self.splits = {name: getattr(data, name).images.float() / 255.0 for name in ("train", "val", "test")}
        self.noise, self.batch_size, self.lr, self.kd_weight = noise, batch_size, lr, kd_weight
        self.proxy_samples = proxy_samples

    def _batches(self, split: str, seed: int, shuffle: bool, limit: int | None = None) -> list[Batch]:
        clean = self.splits[split][:limit]
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(clean), generator=g) if shuffle else torch.arange(len(clean))
        noisy = (clean + self.noise * torch.randn(clean.shape, generator=g)).clamp(0.0, 1.0)
        return [(noisy[order[i:i + self.batch_size]], clean[order[i:i + self.batch_size]])
                for i in range(0, len(clean), self.batch_size)]

    def calibration(self, count: int, seed: int = 0) -> list[Batch]:
        return self._batches("train", seed, shuffle=True)[:count]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        if split not in ("val", "test", "proxy"):
            raise AutopruneError(f"unknown split '{split}': use one of val, test, proxy")
        batches = self._batches("val" if split == "proxy" else split, 1234, shuffle=False,
                                limit=self.proxy_samples if split == "proxy" else None)
        device, squared, count = device_of(model), 0.0, 0
        model.eval()
        for x, y in batches:
            squared += F.mse_loss(model(x.to(device)).clamp(0.0, 1.0), y.to(device), reduction="sum").item()
            count += y.numel()
        return psnr(squared / count)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Per-image MSE: optional, it lets the gradient criteria (taylor, hessian) rank channels."""
        noisy, clean = batch
        return ((model(noisy) - clean) ** 2).flatten(1).mean(1)

    def finetune(self, model: nn.Module, epochs: float, *, teacher: nn.Module | None = None,
                 on_epoch: EpochCallback | None = None, progress: dict[str, Any] | None = None) -> None:
        device = device_of(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        done = int(progress["epoch"]) if progress else 0
        if progress:
            optimizer.load_state_dict(progress["optimizer"])
        if teacher is not None:
            teacher.eval()
        for epoch in range(done, math.ceil(epochs)):
            batches = self._batches("train", epoch, shuffle=True)
            if epoch + 1 > epochs:  # a fractional last epoch
                batches = batches[:max(1, round((epochs - epoch) * len(batches)))]
            model.train()
            total = 0.0
            for x, y in batches:
                x, y = x.to(device), y.to(device)
                out = model(x)
                loss = F.mse_loss(out, y)
                if teacher is not None:
                    with torch.no_grad():
                        guide = teacher(x)
                    loss = loss + self.kd_weight * F.mse_loss(out, guide)
                if not torch.isfinite(loss):
                    raise AutopruneError(f"training diverged: loss is {loss.item()} (lower lr)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
            if progress is not None:
                progress.update(epoch=epoch + 1, optimizer=optimizer.state_dict())
            if on_epoch is not None:
                on_epoch(epoch + 1, {"loss": total / len(batches)})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "noise": self.noise, "lr": self.lr, "batch_size": self.batch_size,
                "kd_weight": self.kd_weight}
