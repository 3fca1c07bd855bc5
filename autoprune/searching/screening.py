"""Skip candidates the latency model predicts to break a latency constraint, before pruning or training them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from autoprune.config import Constraint
from autoprune.searching.searchers.points import channels
from autoprune.searching.space import SearchSpace

Predict = Callable[[dict[str, int]], float]


@dataclass
class Verdict:
    predicted_ms: float
    reason: str | None  # None: run it


class LatencyScreen:
    """``screen(point)``: the predicted latency of a point of the space and, when it breaks the tightest
    ``latency_ms <=`` constraint by more than ``margin`` (a fraction of the bound), why it is skipped."""

    def __init__(self, space: SearchSpace, constraints: list[Constraint], base: dict[str, float], predict: Predict,
                 margin: float) -> None:
        self.space, self.predict, self.margin = space, predict, margin
        bounds = [(c.bound(base), c.text) for c in constraints if c.metric == "latency_ms" and c.op == "<="]
        self.bound = min(bounds) if bounds else None

    @property
    def active(self) -> bool:
        return self.bound is not None

    def __call__(self, point: dict[str, Any]) -> Verdict:
        predicted = self.predict(channels(self.space, point))
        if self.bound is None:
            return Verdict(predicted, None)
        limit, text = self.bound
        if predicted > limit * (1.0 + self.margin):
            return Verdict(predicted, f"skipped: predicted latency {predicted:.3f} ms breaks '{text}' "
                                      f"by more than {self.margin:.0%}")
        return Verdict(predicted, None)
