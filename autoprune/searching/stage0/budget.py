"""Proposals that meet the structural budget by construction: predicted before anything is pruned, repaired, drawn
across the feasible band.

A search's ``latency_ms <=`` and ``macs <=`` constraints are predicted for any point of the space: latency by the
run's latency model (``autoprune.measure.predictor``, refreshed as structures are timed), MACs from the structure.
A proposal outside them is repaired before it costs anything: its ratios are moved towards the space's highs along
``r + t (high - r)``, ``t`` bisected until the prediction is within (NetAdapt and EagleEye move a candidate to its
budget the same way). The latency bound is tightened by the predictor's own error (``margin``), so that what is
predicted within is measured within. ``band_point`` draws EagleEye's way: a target uniformly within the feasible
latency band (the smallest model's latency to the bound), a random allocation shape, scaled to meet the target.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoprune.config import Constraint
from autoprune.measure.predictor import LatencyModel
from autoprune.measure.structure import StructureModel
from autoprune.searching.searchers.points import channels
from autoprune.searching.space import CRITERION_KEY, SearchSpace

BISECTION_STEPS = 14
PREDICTED = ("latency_ms", "macs")  # the structural metrics predicted for a point before it is pruned


@dataclass(frozen=True)
class Limit:
    """One predicted upper bound a proposal must keep: ``metric <= bound`` (from the constraint ``text``)."""

    metric: str
    bound: float
    text: str


class Budget:
    """The structural limits of a search, predicted for points of ``space`` (see module).

    Args:
        space: the search space.
        structure: which groups shrink which layers (for MACs and the latency model's features).
        limits: the upper bounds to keep.
        model: the latency model (needed when a limit is on ``latency_ms``).
        margin: the fraction the latency bound is tightened by (the predictor's error).
    """

    def __init__(self, space: SearchSpace, structure: StructureModel, limits: list[Limit],
                 model: LatencyModel | None = None, margin: float = 0.0) -> None:
        self.space, self.structure, self.limits = space, structure, limits
        self.model, self.margin = model, margin

    @classmethod
    def from_constraints(cls, space: SearchSpace, structure: StructureModel, constraints: list[Constraint],
                         base: dict[str, float], model: LatencyModel | None = None, margin: float = 0.0) -> "Budget":
        """The ``latency_ms <=`` and ``macs <=`` constraints, bounds resolved against the ``base``'s values."""
        limits = [Limit(c.metric, c.bound(base), c.text) for c in constraints if c.metric in PREDICTED and c.op == "<="]
        return cls(space, structure, limits, model, margin)

    @property
    def active(self) -> bool:
        return bool(self.limits)

    def update(self, model: LatencyModel, margin: float) -> None:
        """A newer latency model (fitted on more timed structures) and its error."""
        self.model, self.margin = model, margin

    def predict(self, point: dict[str, Any]) -> dict[str, float]:
        """The predicted latency (ms, when there is a latency model) and MACs of a point."""
        kept = channels(self.space, point)
        predicted = {"macs": self.structure.macs(kept)}
        if self.model is not None:
            predicted["latency_ms"] = self.model.predict(kept)
        return predicted

    def _bound(self, limit: Limit) -> float:
        return limit.bound * (1.0 - self.margin) if limit.metric == "latency_ms" else limit.bound

    def within(self, point: dict[str, Any]) -> bool:
        """Whether every limit is met in prediction (the latency one with the margin)."""
        predicted = self.predict(point)
        return all(predicted[lim.metric] <= self._bound(lim) for lim in self.limits)

    def repair(self, point: dict[str, Any]) -> dict[str, Any]:
        """``point`` when it is within; else the least-pruned point on its way to the space's highs that is (the
        highs themselves when none is)."""
        if not self.limits or self.within(point):
            return point
        highs = {p.group: p.high for p in self.space.params}
        return self._bisect(lambda t: self._blend(point, highs, t), self.within)

    def band_point(self, rng: random.Random, criterion: str | None = None) -> dict[str, Any]:
        """A point drawn EagleEye's way (see module): a random allocation shape scaled to a latency (or MACs) target
        drawn uniformly between the smallest model's and the bound."""
        metric = "latency_ms" if any(lim.metric == "latency_ms" for lim in self.limits) else "macs"
        lows = {p.group: p.low for p in self.space.params}
        highs = {p.group: p.high for p in self.space.params}
        shape = {g: lows[g] + rng.random() * (highs[g] - lows[g]) for g in lows}
        smallest = self.predict({**highs, CRITERION_KEY: criterion or self.space.criteria[0]})[metric]
        bounds = [self._bound(lim) for lim in self.limits if lim.metric == metric]
        largest = self.predict({**lows, CRITERION_KEY: criterion or self.space.criteria[0]})[metric]
        top = min(bounds) if bounds else largest
        target = smallest + rng.random() * max(0.0, top - smallest)

        def path(s: float) -> dict[str, Any]:  # 0: the lows; 1: the shape; 2: the highs
            first = self._blend(lows, shape, min(s, 1.0))
            return self._blend(first, highs, max(0.0, s - 1.0)) if s > 1.0 else first

        point = self._bisect(lambda t: path(2.0 * t), lambda p: self.predict(p)[metric] <= target)
        point[CRITERION_KEY] = criterion or rng.choice(self.space.criteria)
        return point

    def _blend(self, start: dict[str, Any], end: dict[str, float], t: float) -> dict[str, Any]:
        point = dict(start)
        for p in self.space.params:
            point[p.group] = p.snap(float(start[p.group]) + t * (end[p.group] - float(start[p.group])))
        point.setdefault(CRITERION_KEY, self.space.criteria[0])
        return point

    @staticmethod
    def _bisect(path: Callable[[float], dict[str, Any]], ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The point of ``path`` at the smallest ``t`` in [0, 1] that is ``ok`` (to bisection precision; the end
        when none is)."""
        lo, hi = 0.0, 1.0
        if ok(path(lo)):
            return path(lo)
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if ok(path(mid)) else (mid, hi)
        return path(hi)
