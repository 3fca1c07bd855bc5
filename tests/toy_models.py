"""Small models for tests: importable as ``toy_models:NAME`` once tests/ is on sys.path."""
import torch
from torch import nn


class Branchy(nn.Module):
    """A residual add, a channel concatenation and a depthwise convolution in one small net."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.left = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(16, 12, 1), nn.BatchNorm2d(12), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(20, 20, 3, padding=1, groups=20), nn.BatchNorm2d(20), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(20, 24, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        x = self.project(self.depthwise(x))
        return self.head(x.mean((2, 3)))


def branchy(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return Branchy(num_classes, in_channels)


def not_a_model() -> str:
    return "nope"


class Untraceable(nn.Module):
    """Its forward branches on a tensor value, which a data-independent trace cannot follow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3))) if x.sum() > 0 else None
