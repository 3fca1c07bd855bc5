"""Per-layer sparsity policies and the discovery of the prunable groups they refer to."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.pruning.criteria import REGISTRY
from autoprune.pruning.graph import (
    build_graph,
    forward_with_hooks,
    frozen_layers,
    group_channels,
    group_layout,
    group_members,
    named_groups,
    resolve,
)

SCHEMA_VERSION = 1
CRITERIA = tuple(REGISTRY)


@dataclass(frozen=True)
class PrunableGroup:
    """Channels that must be pruned together (coupled across residual adds, concats, depthwise convs)."""

    name: str
    channels: int
    macs: int
    macs_share: float
    members: tuple[str, ...]     # every layer whose weights shrink with the group
    producers: tuple[str, ...]   # the layers whose output channels are the group's channels
    channel_groups: int = 1      # channels go in units of this many: blocks of a grouped conv, attention heads
    segments: tuple[int, ...] = ()  # channels of each concatenated segment, in order; () is one segment


@dataclass(frozen=True)
class Policy:
    """A pruning ratio in [0, 1) per prunable group (by root-module name), plus how to rank channels and round the
    kept counts: multiples of ``round_to``; below ``round_to``, multiples of ``small_step`` (None: never below)."""

    ratios: dict[str, float]
    criterion: str = "l1"
    round_to: int = 1
    ignore: list[str] = field(default_factory=list)
    small_step: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", {str(k): v for k, v in dict(self.ratios).items()})
        object.__setattr__(self, "ignore", list(self.ignore))
        for name, ratio in self.ratios.items():
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
                raise AutopruneError(f"policy ratio for '{name}' must be a number in [0, 1), got {ratio!r}")
            if not 0.0 <= ratio < 1.0:
                raise AutopruneError(f"policy ratio for '{name}' must be in [0, 1), got {ratio}")
        if self.criterion not in CRITERIA:
            raise AutopruneError(f"unknown criterion '{self.criterion}': use one of {', '.join(CRITERIA)}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise AutopruneError(f"policy round_to must be a positive integer, got {self.round_to!r}")
        small = self.small_step
        if small is not None and (isinstance(small, bool) or not isinstance(small, int) or not 1 <= small < self.round_to
                                  or self.round_to % small):
            raise AutopruneError(f"policy small_step must be null or a divisor of round_to ({self.round_to}) below it, "
                                 f"got {small!r}")

    @classmethod
    def uniform(cls, groups: list[PrunableGroup], ratio: float, **kwargs: Any) -> "Policy":
        """The same ratio for every group: the manual baseline."""
        return cls({g.name: ratio for g in groups}, **kwargs)

    def keep(self, name: str, channels: int) -> int:
        """Channels the group ``name`` keeps: ``channels * (1 - ratio)``, rounded to ``round_to`` (to ``small_step``
        below it), at least one.

        That is the count ``prune`` leaves in a plain group; ``kept_channels`` gives it for any group.
        """
        return _kept(channels, self.ratios.get(name, 0.0), self.round_to, self.small_step)

    def kept_units(self, name: str, segment_units: Sequence[int], unit_size: int = 1,
                   fraction: float = 1.0) -> list[int]:
        """Units each segment of group ``name`` keeps (see ``graph.GroupLayout``).

        The group keeps ``(1 - ratio)`` of its units, rounded so that its channel count is a multiple
        of ``round_to`` where the unit size allows; the segments share them in proportion to their
        size, each keeping at least ``round_to`` channels' worth (at least one unit) or all it has.
        ``fraction`` < 1 is an intermediate step of iterative pruning: that share of the removal.
        """
        total = sum(segment_units)
        step = self.round_to // math.gcd(self.round_to, unit_size)
        small = self.small_step // math.gcd(self.small_step, unit_size) if self.small_step else None
        small = small if small and small < step else None
        goal = total - round((total - _kept(total, self.ratios.get(name, 0.0), step, small)) * fraction)
        return allocate(segment_units, goal, small if small and goal < step else step)

    def kept_channels(self, group: PrunableGroup) -> int:
        """Exactly the channels ``prune`` leaves in ``group``."""
        segments = group.segments or (group.channels,)
        units = [c // group.channel_groups for c in segments]
        return group.channel_groups * sum(self.kept_units(group.name, units, group.channel_groups))

    def check(self, model: nn.Module, groups: list[PrunableGroup]) -> None:
        """Raise an error naming the first key that does not fit ``model``."""
        resolve(model, self.ignore, "policy ignore")
        roots = {g.name for g in groups}
        member_of = {m: g.name for g in groups for m in g.producers}
        modules = dict(model.named_modules())
        for name in self.ratios:
            if name in roots:
                continue
            if name in member_of:
                raise AutopruneError(
                    f"policy ratio key '{name}' is coupled into group '{member_of[name]}': name the group instead"
                )
            if name in modules:
                raise AutopruneError(
                    f"policy ratio key '{name}' is not a prunable group of the model (an output or ignored layer)")
            raise AutopruneError(f"policy ratio key '{name}': model {type(model).__name__} has no layer '{name}'")

    def to_dict(self) -> dict[str, Any]:
        """The JSON document ``from_dict`` reads."""
        return {"schema_version": SCHEMA_VERSION, "criterion": self.criterion, "round_to": self.round_to,
                **({"small_step": self.small_step} if self.small_step is not None else {}),
                "ignore": list(self.ignore), "ratios": dict(self.ratios)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Policy":
        if not isinstance(d, dict):
            raise AutopruneError("policy must be a JSON object")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise AutopruneError(f"policy schema_version must be {SCHEMA_VERSION}, got {version!r}")
        unknown = sorted(set(d) - {"schema_version", "criterion", "round_to", "small_step", "ignore", "ratios"})
        if unknown:
            raise AutopruneError(f"unknown policy key '{unknown[0]}'")
        if not isinstance(d.get("ratios"), dict):
            raise AutopruneError("policy key 'ratios' must be an object of layer name -> ratio")
        return cls(d["ratios"], d.get("criterion", "l1"), d.get("round_to", 1), d.get("ignore", []),
                   d.get("small_step"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "Policy":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise AutopruneError(f"policy is not valid JSON: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        p = Path(path)
        if not p.is_file():
            raise AutopruneError(f"policy file '{p}' does not exist")
        try:
            return cls.from_json(p.read_text())
        except AutopruneError as e:
            raise AutopruneError(f"{p}: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")


def _kept(count: int, ratio: float, round_to: int, small_step: int | None = None) -> int:
    """``count * (1 - ratio)`` rounded to a multiple of ``round_to``, at least ``round_to`` and 1, at most ``count``;
    with ``small_step``, a count below ``round_to`` rounds to a multiple of it instead (at least ``small_step``)."""
    if ratio <= 0:
        return count  # nothing to prune: no rounding removes channels
    kept = max(1, round(count * (1.0 - ratio)))
    if small_step and kept < round_to:
        kept = max(small_step, round(kept / small_step) * small_step)
    elif round_to > 1:
        kept = max(round_to, round(kept / round_to) * round_to)
    return min(count, kept)


def allocate(sizes: Sequence[int], total: int, step: int = 1) -> list[int]:
    """Share ``total`` kept items among segments of ``sizes`` in proportion to their size.

    Every segment keeps at least ``step`` items (or all it has, if fewer), so none is emptied, even
    when that exceeds ``total``; the rest goes ``step`` items at a time to the segment furthest below
    its proportional share.
    """
    keep = [min(size, step) for size in sizes]
    share = [total * size / sum(sizes) for size in sizes]
    left = total - sum(keep)
    while left > 0:
        room = [i for i, size in enumerate(sizes) if keep[i] < size]
        if not room:
            break
        i = max(room, key=lambda i: (share[i] - keep[i], -i))
        add = min(step, sizes[i] - keep[i], left)
        keep[i] += add
        left -= add
    return keep


def layer_macs(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of every Conv/Linear layer for one sample of ``example_input``'s shape."""
    names = {m: n for n, m in model.named_modules()}
    macs: dict[str, int] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        per_out = weight[0].numel()  # in_channels/groups * kernel area, or in_features
        macs[names[module]] = macs.get(names[module], 0) + output[:1].numel() * per_out

    forward_with_hooks(model, example_input[:1], hook, (nn.Conv1d, nn.Conv2d, nn.Linear))
    return macs


def describe_groups(graph: tp.DependencyGraph, ignored: list[nn.Module], macs: dict[str, int] | None = None,
                    named: Iterable[tuple[str, tp.Group]] | None = None) -> list[PrunableGroup]:
    """The prunable groups of a traced model (``named``: ``named_groups``' output when already at hand);
    MAC shares are zero when ``macs`` is not given."""
    macs = macs or {}
    total = max(1, sum(macs.values()))
    position = {name: i for i, name in enumerate(graph._module2name.values())}
    groups = []
    for name, group in named if named is not None else named_groups(graph, ignored):
        members = tuple(group_members(graph, group))
        group_macs = sum(macs.get(m, 0) for m in members)
        producers = tuple(group_members(graph, group, producers_only=True))
        layout = group_layout(name, group)
        segments = tuple(len(s) * layout.unit_size for s in layout.segments)
        groups.append(PrunableGroup(name, group_channels(group), group_macs, group_macs / total, members, producers,
                                    layout.unit_size, segments))
    return sorted(groups, key=lambda g: position[g.name])


def discover(model: nn.Module, example_input: torch.Tensor, ignore: Sequence[str] = ()) -> list[PrunableGroup]:
    """Every prunable group of ``model``, in forward order, with its channels and share of MACs.

    A group's MACs are those of the layers whose weights it shrinks (as producer or consumer),
    so shares overlap and do not sum to one. The output layer is never prunable.
    """
    graph = build_graph(model, example_input)
    return describe_groups(graph, frozen_layers(model, example_input, ignore), layer_macs(model, example_input))
