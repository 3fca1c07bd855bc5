"""The manual baseline: one ratio for every group, over an even grid, for each criterion."""
from __future__ import annotations

from typing import Any

from autoprune.searching.searchers.base import Outcome, Searcher
from autoprune.searching.space import SearchSpace


class UniformSearcher(Searcher):
    name = "uniform"

    def __init__(self, space: SearchSpace, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        count = int(self.settings.get("grid", 8))
        self._queue: list[dict[str, Any]] = []
        for c in self.space.criteria:
            for r in self.space.uniform_ratios(count):
                point = self.space.uniform_point(r, c)
                if point not in self._queue:  # ratios that snap to the same grid value are run once
                    self._queue.append(point)
        self._asked = 0

    def ask(self) -> tuple[int, dict[str, Any]] | None:
        if self._asked >= len(self._queue):
            return None
        self._asked += 1
        return self._asked - 1, self._queue[self._asked - 1]

    def tell(self, suggestion_id: int, outcome: Outcome) -> None:
        """A grid does not learn."""

    def replay(self, point: dict[str, Any], outcome: Outcome) -> None:
        """Drop the grid point already evaluated."""
        remaining = self._queue[self._asked:]
        if point in remaining:
            remaining.remove(point)
            self._queue = self._queue[: self._asked] + remaining
