"""VGG with batch norm, CIFAR variant: 3x3 convolutions, global pooling, one linear classifier."""
from __future__ import annotations

import torch
from torch import nn

CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
}


class CifarVGG(nn.Module):
    """VGG-BN for small images. Four max-pools, so 28x28 and 32x32 inputs both work."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth not in CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(CONFIGS)}, got {depth}")
        layers: list[nn.Module] = []
        c = in_channels
        for v in CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg11_bn(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    return CifarVGG(11, num_classes, in_channels)


def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    return CifarVGG(16, num_classes, in_channels)
