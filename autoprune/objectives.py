"""The objectives a search optimises, defined once; the config key ``objectives`` picks two or three of them.

An objective is a metric every finished trial reports under its ``name`` (and the base model's value as
``base_<name>``) with a direction. The Pareto front, its hypervolume, Optuna's directions, the values told
to a searcher, the knee picked by ``export`` and ``pareto.png`` all follow the configured list, in its order.
Code paths use ``Objective`` objects, never metric names, so a user-named metric (e.g. ``psnr``, maximised)
is one more ``Objective``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from autoprune.errors import AutopruneError

Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class Objective:
    """A metric to maximise or minimise; ``label`` and ``scale`` (display units per reported unit) are for plots."""

    name: str
    direction: Direction
    label: str
    scale: float = 1.0

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def loss(self, value: float) -> float:
        """``value`` as a quantity to minimise."""
        return -float(value) if self.maximize else float(value)

    def normalised_loss(self, value: float, base: float) -> float:
        """``value / base`` as a quantity to minimise: the base model is -1 if maximised, 1 if minimised."""
        return self.loss(float(value) / (float(base) or 1.0))

    @property
    def reference(self) -> float:
        """The hypervolume's reference point in normalised-loss units: zero if maximised, the base if minimised.

        So a point adds volume only when it is smaller / faster than the base in every minimised objective.
        """
        return 0.0 if self.maximize else 1.0


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("accuracy", "maximize", "validation accuracy"),
    Objective("size_bytes", "minimize", "size (KB)", 1 / 1024),
    Objective("latency_ms", "minimize", "latency (ms)"),
    Objective("macs", "minimize", "MACs (M)", 1e-6),
    Objective("params", "minimize", "parameters (K)", 1e-3),
)}
DEFAULT_OBJECTIVES = (OBJECTIVES["accuracy"], OBJECTIVES["size_bytes"], OBJECTIVES["latency_ms"])


def parse_objectives(names: Any, key: str = "objectives") -> tuple[Objective, ...]:
    """The objectives named by the config key ``key``: two or three distinct names of ``OBJECTIVES``."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise AutopruneError(f"config key '{key}' must be a list of metric names, got {names!r}")
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise AutopruneError(f"config key '{key}': unknown objective '{unknown[0]}', use two or three of "
                             f"{', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise AutopruneError(f"config key '{key}' names an objective twice: {list(names)}")
    if not 2 <= len(names) <= 3:
        raise AutopruneError(f"config key '{key}' must name two or three objectives, got {len(names)}: {list(names)}")
    return tuple(OBJECTIVES[n] for n in names)


def values_of(row: Mapping[str, Any], objectives: Sequence[Objective], prefix: str = "") -> tuple[float, ...]:
    """A trial's (or, with ``prefix='base_'``, its base model's) value of each objective, in order."""
    return tuple(float(row[f"{prefix}{o.name}"]) for o in objectives)
