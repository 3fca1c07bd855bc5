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


class UnequalConcat(nn.Module):
    """A 24-channel 1x1 branch and a 40-channel 3x3 branch concatenated into a depthwise convolution.

    The depthwise convolution couples both branches into one 64-channel group whose 1x1 branch has
    the smallest weights (fan-in 32 against 288): ranking the group as a whole empties that branch.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.narrow = nn.Sequential(nn.Conv2d(32, 24, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.wide = nn.Sequential(nn.Conv2d(32, 40, 3, padding=1), nn.BatchNorm2d(40), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.narrow(x), self.wide(x)], dim=1)
        return self.head(self.depthwise(x).mean((2, 3)))


def unequal_concat(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return UnequalConcat(num_classes, in_channels)


class Grouped(nn.Module):
    """A ResNeXt-style bottleneck: 1x1, grouped 3x3 (4 groups, with a group norm), 1x1, residual add."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.reduce = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.GroupNorm(4, 32), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.head(x.mean((2, 3)))


def grouped(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return Grouped(num_classes, in_channels)


class NoNormHead(nn.Module):
    """Convolutions with batch norm and ReLU, then linear layers without either.

    ``fc1`` and ``fc2`` have no batch norm (``bn_scale`` cannot rank them); ``features.3`` and ``fc2``
    are consumed where no ReLU zeros their channels (``apoz`` cannot rank them).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        )
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 12)
        self.head = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean((2, 3))
        return self.head(self.fc2(torch.relu(self.fc1(x))))


def no_norm_head(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return NoNormHead(num_classes, in_channels)


class HandCounted(nn.Module):
    """Convolutions and a linear layer without biases or counted activations: MACs are easy to count by hand."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False)
        self.fc = nn.Linear(8 * 4 * 4, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.flatten(1))


def tiny_vit(num_classes: int = 10) -> nn.Module:
    """A torchvision VisionTransformer small enough for tests: 32 px, 8 px patches, 2 layers, 4 heads of 8 dims."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
                             num_classes=num_classes)


class NanWhileTraining(nn.Module):
    """A small convnet whose logits are NaN in training mode only: fine-tuning it always diverges, while
    tracing, pruning, measuring and evaluating it work."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(x).mean((2, 3)))
        return logits * float("nan") if self.training else logits


def nan_while_training(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return NanWhileTraining(num_classes, in_channels)


class HardCodedWidth(nn.Module):
    """Its forward reshapes with a channel count written into the code, which pruning cannot update."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.head(x.reshape(x.shape[0], 16, x.shape[2] * x.shape[3]).mean(2))
