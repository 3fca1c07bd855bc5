"""``searcher.seed_from: sensitivity``: NSGA-II's (or TPE's, GP's, random's) first population from sensitivity.

``SensitivitySeeded`` first runs the ``sensitivity`` searcher's stage-0 phase (each group pruned alone at
each ratio; cached in the run directory and ``$AUTOPRUNE_CACHE_DIR`` like the sensitivity searcher's), then
hands the knapsack allocations it plans for ``count`` budgets spread over the space's latency (or MACs)
range to the Optuna-backed searcher as warm-start points (after its uniform ones), and from then on asks
that searcher: the first generation starts from allocations that already trade accuracy for latency well,
and evolution refines them with fine-tuned outcomes.
"""
from __future__ import annotations

from typing import Any

from autoprune.searching.searchers.base import WAIT, Outcome, Searcher, stage_of
from autoprune.searching.searchers.points import Key, policy_key
from autoprune.searching.searchers.sensitivity import SensitivitySearcher


class SensitivitySeeded(Searcher):
    """Asks ``sensitivity`` for its stage-0 points, seeds ``target`` with its allocations, then asks ``then``
    (``target`` itself, or a searcher wrapping it such as ``StagedSearcher``)."""

    def __init__(self, sensitivity: SensitivitySearcher, target: Searcher, then: Searcher) -> None:
        super().__init__(target.space, seed=target.seed, warm_start=target.warm_start, objectives=target.objectives)
        self.sensitivity, self.target, self.then = sensitivity, target, then
        self.name = target.name  # type: ignore[misc]  # the seeded searcher's name is what the results show
        self.resumed = then.resumed  # a resumed study holds its trials; the curves are in the run directory
        self._seeded = False
        self._phase_a = {policy_key(p) for p in sensitivity.phase_a}
        self._running: dict[int, tuple[str, int]] = {}  # id -> (whose, their id)
        self._curve_rows: set[Key] = set()  # stage-0 rows replayed into the curves
        self._next_id = 0

    def use_budget(self, budget: Any) -> None:
        self.sensitivity.use_budget(budget)  # its allocations priced by the budget's model, under its margin
        self.then.use_budget(budget)  # the Optuna searcher, itself or wrapped

    def _wrap(self, whose: str, suggestion: tuple[int, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        self._next_id += 1
        self._running[self._next_id] = (whose, suggestion[0])
        return self._next_id, suggestion[1]

    def ask(self) -> tuple[int, dict[str, Any]] | str | None:
        if not self._seeded:
            suggestion = self.sensitivity.ask()
            if suggestion == WAIT:
                return WAIT
            if isinstance(suggestion, tuple) and stage_of(suggestion[1]) == "proxy":
                return self._wrap("sensitivity", suggestion)
            # the curves are built and the allocations planned (its first full point is one of them)
            self._seeded = True
            self.target.seed_points = [a.point(self.sensitivity.criterion) for a in self.sensitivity.plan or []]
        suggestion = self.then.ask()
        self.stop_reason = self.then.stop_reason
        return suggestion if not isinstance(suggestion, tuple) else self._wrap("then", suggestion)

    def tell(self, suggestion_id: int, outcome: Outcome) -> None:
        whose, their_id = self._running.pop(suggestion_id)
        (self.sensitivity if whose == "sensitivity" else self.then).tell(their_id, outcome)

    def replay(self, point: dict[str, Any], outcome: Outcome) -> None:
        key = policy_key(point)  # a stage-0 row of the curves the first time; later ones are the staged searcher's
        if stage_of(point) == "proxy" and key in self._phase_a and key not in self._curve_rows:
            self._curve_rows.add(key)
            self.sensitivity.replay(point, outcome)
        else:
            self.then.replay(point, outcome)
