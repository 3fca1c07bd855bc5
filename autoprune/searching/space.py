"""The search space: a ratio grid per prunable group plus the criteria to choose from."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from autoprune.config import SearchConfig
from autoprune.errors import AutopruneError
from autoprune.pruning.policy import Policy, PrunableGroup

CRITERION_KEY = "criterion"


@dataclass(frozen=True)
class RatioParam:
    """The pruning ratio of one group: ``low, low + step, ..., <= high``."""

    group: str
    channels: int
    low: float
    high: float
    step: float

    def _steps(self) -> int:
        return int(math.floor((self.high - self.low) / self.step + 1e-9))  # never past high

    def _value(self, i: int) -> float:
        return round(self.low + i * self.step, 10)

    def grid(self) -> list[float]:
        return [self._value(i) for i in range(self._steps() + 1)]

    def snap(self, ratio: float) -> float:
        """The grid value closest to ``ratio`` (the lower one of two as close)."""
        below = min(max(int(math.floor((ratio - self.low) / self.step)), 0), self._steps())
        above = min(below + 1, self._steps())
        low, high = self._value(below), self._value(above)
        return high if abs(high - ratio) < abs(low - ratio) else low


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[RatioParam, ...]
    criteria: tuple[str, ...]
    round_to: int = 1
    ignore: tuple[str, ...] = ()
    small_step: int | None = None  # counts below round_to: multiples of this (None: none below round_to)

    @classmethod
    def from_config(cls, config: SearchConfig, groups: list[PrunableGroup]) -> "SearchSpace":
        """One parameter per discovered group, with the config's default range or its per-group override."""
        names = {g.name for g in groups}
        for name in config["space.groups"]:
            if name not in names:
                raise AutopruneError(f"config key 'space.groups.{name}': the model has no prunable group '{name}' "
                                     f"(see 'autoprune groups')")
        if not isinstance(config["space.round_to"], int):  # auto: measured first (autoprune.searching.channel_step)
            raise AutopruneError("config key 'space.round_to': auto is measured when a search starts; resolve it "
                                 "with autoprune.searching.channel_step before building the space")
        default = config["space.ratio"]
        params = []
        for g in groups:
            r = {**default, **config["space.groups"].get(g.name, {})}
            params.append(RatioParam(g.name, g.channels, float(r["low"]), float(r["high"]), float(r["step"])))
        return cls(tuple(params), tuple(config["space.criteria"]), config["space.round_to"],
                   tuple(config["space.ignore"]), config["space.small_step"])

    @property
    def groups(self) -> list[str]:
        return [p.group for p in self.params]

    def policy(self, point: dict[str, Any]) -> Policy:
        """The policy a point of the space stands for."""
        ratios = {p.group: float(point[p.group]) for p in self.params}
        return Policy(ratios, point.get(CRITERION_KEY, self.criteria[0]), self.round_to, list(self.ignore),
                      self.small_step)

    def uniform_point(self, ratio: float, criterion: str | None = None) -> dict[str, Any]:
        """Every group at (the grid value nearest to) ``ratio``: the manual baseline."""
        point: dict[str, Any] = {p.group: p.snap(ratio) for p in self.params}
        point[CRITERION_KEY] = criterion or self.criteria[0]
        return point

    def uniform_ratios(self, count: int) -> list[float]:
        """``count`` evenly spread ratios in (lowest low, highest high]: the lower end is the base model itself."""
        low, high = min(p.low for p in self.params), max(p.high for p in self.params)
        return [round(low + (high - low) * (i + 1) / count, 10) for i in range(count)]
