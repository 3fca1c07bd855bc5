"""A model's prunable structure: which groups shrink which Conv/Linear layers, with each layer's MACs and input
size, so a structure (channels kept per group) maps to per-layer kept fractions and MACs without pruning."""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from autoprune.pruning.graph import forward_with_hooks
from autoprune.pruning.policy import PrunableGroup

Channels = Mapping[str, int]


def structure_key(channels: Channels) -> str:
    """The cache key of a pruned structure: its channel count per group, order-independent."""
    return json.dumps({k: int(v) for k, v in sorted(channels.items())}, separators=(",", ":"))


@dataclass(frozen=True)
class LayerInfo:
    """A Conv/Linear layer and the groups that shrink its outputs and its inputs."""

    name: str
    kind: str                     # "conv" or "linear"
    in_channels: int
    out_channels: int
    conv_groups: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    input_hw: tuple[int, ...]     # spatial size of the layer's input for one sample (empty for Linear on vectors)
    macs: int
    out_group: str | None
    in_groups: tuple[str, ...]

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.conv_groups == self.in_channels == self.out_channels > 1

    def config(self, fin: float, fout: float) -> tuple[Any, ...]:
        """A hashable description of the layer with the given kept fractions: equal layers share timings."""
        return (self.kind, self.in_channels, self.out_channels, self.conv_groups, self.kernel, self.stride,
                self.padding, self.dilation, self.input_hw, round(fin, 4), round(fout, 4))


class StructureModel:
    """Which groups shrink which layers: turns a structure (channels per group) into per-layer fractions."""

    def __init__(self, layers: list[LayerInfo], group_channels: dict[str, int]) -> None:
        self.layers = layers
        self.group_channels = group_channels

    @classmethod
    def from_model(cls, model: nn.Module, example_input: torch.Tensor, groups: list[PrunableGroup]) -> "StructureModel":
        out_group = {m: g.name for g in groups for m in g.producers}
        in_groups: dict[str, list[str]] = {}
        for g in groups:
            for m in g.members:
                if m not in g.producers:
                    in_groups.setdefault(m, []).append(g.name)
        names = {m: n for n, m in model.named_modules()}
        layers: list[LayerInfo] = []

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            name, x = names[module], inputs[0]
            groups_in, group_out = tuple(in_groups.get(name, ())), out_group.get(name)
            if isinstance(module, nn.Linear):
                macs = output[:1].numel() * module.in_features
                layers.append(LayerInfo(name, "linear", module.in_features, module.out_features, 1, (), (), (), (),
                                        tuple(x.shape[1:-1]), macs, group_out, groups_in))
            elif isinstance(module, nn.modules.conv._ConvNd):
                macs = output[:1].numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
                padding = () if isinstance(module.padding, str) else tuple(module.padding)
                layers.append(LayerInfo(name, "conv", module.in_channels, module.out_channels, module.groups,
                                        tuple(module.kernel_size), tuple(module.stride), padding,
                                        tuple(module.dilation), tuple(x.shape[2:]), macs, group_out, groups_in))

        forward_with_hooks(model, example_input[:1], hook, (nn.Conv1d, nn.Conv2d, nn.Linear))
        unique = {layer.name: layer for layer in layers}  # a layer called twice counts once per call in MACs
        return cls(list(unique.values()), {g.name: g.channels for g in groups})

    def fractions(self, channels: Channels) -> list[tuple[LayerInfo, float, float]]:
        """Each layer with the fraction of its input and output channels the structure keeps."""
        frac = {g: channels.get(g, n) / n for g, n in self.group_channels.items()}
        out = []
        for layer in self.layers:
            fout = frac.get(layer.out_group, 1.0) if layer.out_group else 1.0
            fin = statistics.fmean(frac[g] for g in layer.in_groups) if layer.in_groups else 1.0
            if layer.depthwise:
                fin = fout
            out.append((layer, fin, fout))
        return out

    def macs(self, channels: Channels) -> float:
        """MACs of the structure, from the base layers' MACs scaled by their kept fractions."""
        total = 0.0
        for layer, fin, fout in self.fractions(channels):
            total += layer.macs * fout * (1.0 if layer.depthwise else fin)
        return total
