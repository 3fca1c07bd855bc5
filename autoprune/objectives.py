"""The objectives a search optimises, defined once; the config key ``objectives`` picks two or three of them.

An objective is a metric every finished trial reports under its ``name`` (and the base model's value as
``base_<name>``) with a direction: the task's metric (``accuracy`` for classification; a user's ``psnr`` or
``error``, with its own direction) and the costs, each minimised. The Pareto front, its hypervolume, Optuna's
directions, the values told to a searcher, the knee picked by ``export`` and ``pareto.png`` all follow the
configured list, in its order. Code paths use ``Objective`` objects, never metric names.
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


ACCURACY = Objective("accuracy", "maximize", "validation accuracy")
COSTS: dict[str, Objective] = {o.name: o for o in (
    Objective("size_bytes", "minimize", "size (KB)", 1 / 1024),
    Objective("latency_ms", "minimize", "latency (ms)"),
    Objective("macs", "minimize", "MACs (M)", 1e-6),
    Objective("params", "minimize", "parameters (K)", 1e-3),
)}
OBJECTIVES: dict[str, Objective] = {ACCURACY.name: ACCURACY, **COSTS}  # with the classification task's metric
DEFAULT_COSTS = ("size_bytes", "latency_ms")
DEFAULT_OBJECTIVES = (ACCURACY, COSTS["size_bytes"], COSTS["latency_ms"])


MODES = ("max", "min")
# results columns a metric may not shadow (autoprune/searching/results.py)
RESERVED = ("trial_id", "status", "error", "searcher", "criterion", "criterion_used", "feasible", "stage", "epochs",
            "host", "checkpoint", "resumed_from_epoch", "finished_at", "loss", "metric")


def check_metric(name: Any, mode: Any) -> None:
    """A task metric needs an identifier for a name, not a cost's, and a direction, ``max`` or ``min``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise AutopruneError(f"metric name {name!r} must be an identifier (letters, digits, _)")
    if name in COSTS:
        raise AutopruneError(f"metric name '{name}' is a cost autoprune measures itself, not a task metric")
    if name in RESERVED or name.startswith(("base_", "test_", "proxy_", "val_", "seconds_", "latency_")):
        raise AutopruneError(f"metric name '{name}' is taken by the results (reserved: {', '.join(RESERVED)} and "
                             f"the prefixes base_, test_, proxy_, val_, seconds_, latency_)")
    if mode not in MODES:
        raise AutopruneError(f"metric '{name}': mode must be 'max' or 'min', got {mode!r}")


def metric_objective(name: str, mode: str) -> Objective:
    """The task's metric as an objective: ``mode`` ``max`` or ``min``."""
    check_metric(name, mode)
    if (name, mode) == (ACCURACY.name, "max"):
        return ACCURACY
    return Objective(name, "maximize" if mode == "max" else "minimize", f"validation {name}")


def score_of(objectives: Sequence[Objective]) -> Objective | None:
    """The task's metric among ``objectives`` (the one that is not a cost), if it is one of them."""
    return next((o for o in objectives if o.name not in COSTS), None)


def parse_objectives(names: Any, key: str = "objectives", metric: Objective = ACCURACY) -> tuple[Objective, ...]:
    """The objectives named by the config key ``key``: two or three distinct names among the task's ``metric`` and
    ``COSTS``; None: the metric, size and latency."""
    if names is None:
        return (metric, *(COSTS[n] for n in DEFAULT_COSTS))
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise AutopruneError(f"config key '{key}' must be a list of metric names, got {names!r}")
    known = {metric.name: metric, **COSTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise AutopruneError(f"config key '{key}': unknown objective '{unknown[0]}', use two or three of "
                             f"{', '.join(known)}")
    if len(set(names)) != len(names):
        raise AutopruneError(f"config key '{key}' names an objective twice: {list(names)}")
    if not 2 <= len(names) <= 3:
        raise AutopruneError(f"config key '{key}' must name two or three objectives, got {len(names)}: {list(names)}")
    return tuple(known[n] for n in names)


def values_of(row: Mapping[str, Any], objectives: Sequence[Objective], prefix: str = "") -> tuple[float, ...]:
    """A trial's (or, with ``prefix='base_'``, its base model's) value of each objective, in order."""
    return tuple(float(row[f"{prefix}{o.name}"]) for o in objectives)
