"""Model zoo: build any supported model from a small, serialisable spec.

Architectures are named by a string:
- a built-in CIFAR model: ``resnet20``, ``resnet32``, ``resnet56``, ``vgg11_bn``, ``vgg16_bn``;
- a torchvision classifier: ``torchvision:mobilenet_v2``, ``torchvision:resnet18``, ... (random init, never a download);
- a user's factory: ``package.module:factory`` (called with ``num_classes``/``in_channels`` when it accepts them).
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from torch import nn

from autoprune.errors import AutopruneError
from autoprune.imports import resolve
from autoprune.models import cifar_resnet, cifar_vgg

BUILTIN: dict[str, Callable[..., nn.Module]] = {
    "resnet20": cifar_resnet.resnet20,
    "resnet32": cifar_resnet.resnet32,
    "resnet56": cifar_resnet.resnet56,
    "vgg11_bn": cifar_vgg.vgg11_bn,
    "vgg16_bn": cifar_vgg.vgg16_bn,
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild an (unpruned) architecture."""

    arch: str
    num_classes: int = 10
    in_channels: int = 3
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        return cls(d["arch"], int(d["num_classes"]), int(d["in_channels"]), dict(d.get("kwargs", {})))


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate the architecture named by ``spec`` with fresh (random) weights."""
    if spec.arch in BUILTIN:
        return BUILTIN[spec.arch](num_classes=spec.num_classes, in_channels=spec.in_channels, **spec.kwargs)
    if spec.arch.startswith("torchvision:"):
        return _torchvision_model(spec)
    if ":" in spec.arch:
        return _user_model(spec)
    known = ", ".join(sorted(BUILTIN))
    raise AutopruneError(
        f"unknown model '{spec.arch}': use one of {known}, 'torchvision:NAME' or 'package.module:factory'"
    )


def _torchvision_model(spec: ModelSpec) -> nn.Module:
    import torchvision

    name = spec.arch.split(":", 1)[1]
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise AutopruneError(f"unknown torchvision classification model '{name}' in model '{spec.arch}'")
    model = torchvision.models.get_model(name, weights=None, num_classes=spec.num_classes, **spec.kwargs)
    if spec.in_channels != 3:
        _replace_first_conv(model, spec.in_channels)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the stem convolution for one that takes ``in_channels`` (e.g. grey images)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, child_name, nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size,  # type: ignore[arg-type]
                    child.stride, child.padding, child.dilation,  # type: ignore[arg-type]
                    1, child.bias is not None,
                ))
                return
    raise AutopruneError("cannot adapt in_channels: the model has no Conv2d")


def _user_model(spec: ModelSpec) -> nn.Module:
    factory = resolve(spec.arch, f"model '{spec.arch}'")
    if not callable(factory):
        raise AutopruneError(f"model '{spec.arch}' is not callable: name a factory that returns the model")
    kwargs = dict(spec.kwargs)
    params = inspect.signature(factory).parameters
    for key, value in (("num_classes", spec.num_classes), ("in_channels", spec.in_channels)):
        if key in params:
            kwargs.setdefault(key, value)
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise AutopruneError(f"model factory '{spec.arch}' returned {type(model).__name__}, not a torch.nn.Module")
    return model
