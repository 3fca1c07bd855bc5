"""Staged (multi-fidelity) search: many candidates at stage 0, the best of them fine-tuned.

Stage 0 costs seconds per candidate (prune, recalibrate batch norm, evaluate on a fixed validation
subset); a fine-tune costs a whole training budget. ``StagedSearcher`` lets an inner searcher (NSGA-II,
TPE, GP, random) spend ``proxy_trials`` stage-0 evaluations, telling it each outcome with the proxy
accuracy in place of the fine-tuned one; then it fine-tunes the best of them with the full budget, feasible ones
first. Under a structural budget (a latency, size, params or MACs constraint) the feasible ones go by proxy
accuracy, best first: the user asked for the most accurate model within the budget, and EagleEye fine-tunes the
top candidates by its adaptive-BN score the same way. Otherwise (and for the infeasible ones) they go in order of
non-dominated sorting on (proxy accuracy, the other objectives), crowding distance breaking ties within a front:
a spread of the trade-off. Only fine-tuned candidates enter the front.
"""
from __future__ import annotations

import math
from typing import Any

from autoprune.searching.pareto import pareto_indices
from autoprune.searching.searchers.base import STAGE_KEY, WAIT, Outcome, Searcher, stage_of
from autoprune.searching.searchers.points import Key, policy_key


def crowding(values: list[tuple[float, ...]]) -> list[float]:
    """NSGA-II's crowding distance of each point within one front (boundary points: infinite)."""
    n = len(values)
    distance = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for m in range(len(values[0])):
        order = sorted(range(n), key=lambda i: values[i][m])
        lo, hi = values[order[0]][m], values[order[-1]][m]
        distance[order[0]] = distance[order[-1]] = math.inf
        if hi > lo:
            for k in range(1, n - 1):
                distance[order[k]] += (values[order[k + 1]][m] - values[order[k - 1]][m]) / (hi - lo)
    return distance


class StagedSearcher(Searcher):
    """Wraps ``inner``: ``proxy_trials`` stage-0 evaluations, then fine-tunes the stage-0 front (see module)."""

    def __init__(self, inner: Searcher, proxy_trials: int, structural_constraints: frozenset[str] = frozenset()) -> None:
        super().__init__(inner.space, seed=inner.seed, warm_start=inner.warm_start, objectives=inner.objectives)
        self.inner, self.proxy_trials = inner, proxy_trials
        self.name = inner.name  # type: ignore[misc]  # the wrapped searcher's name is what the results show
        self.structural = structural_constraints  # accuracy constraints do not apply to a proxy accuracy
        self._proxies: dict[Key, tuple[dict[str, Any], Outcome]] = {}
        self._full: set[Key] = set()
        self._running: dict[int, tuple[str, int, dict[str, Any]]] = {}  # id -> (stage, inner id, point)
        self._asked_proxies = 0
        self._queue: list[dict[str, Any]] | None = None
        self._next_id = 0

    def use_budget(self, budget: Any) -> None:
        self.inner.use_budget(budget)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def ask(self) -> tuple[int, dict[str, Any]] | str | None:
        if self._asked_proxies < self.proxy_trials:
            suggestion = self.inner.ask()
            if isinstance(suggestion, str):
                return WAIT
            if suggestion is not None:
                inner_id, point = suggestion
                # a resumed study re-runs a point whose row was written but whose tell was lost: counted once
                self._asked_proxies += policy_key(point) not in self._proxies
                sid = self._new_id()
                staged = {**point, STAGE_KEY: "proxy"}
                self._running[sid] = ("proxy", inner_id, staged)
                return sid, staged
            # the inner searcher has nothing left: go on to fine-tuning, and say so
            self.stop_reason = (f"stage 0 ended after {self._asked_proxies} of {self.proxy_trials} candidates: "
                                f"{self.inner.stop_reason or f'{self.inner.name} proposed no more'}")
            self._asked_proxies = self.proxy_trials
        if any(stage == "proxy" for stage, _, _ in self._running.values()):
            return WAIT  # the selection needs every stage-0 outcome
        if self._queue is None:
            self._queue = self.selection()
        while self._queue:
            point = self._queue.pop(0)
            if policy_key(point) in self._full:
                continue
            sid = self._new_id()
            staged = {**point, STAGE_KEY: "full"}
            self._running[sid] = ("full", -1, staged)
            self._full.add(policy_key(point))
            return sid, staged
        return None

    def _feasible(self, outcome: Outcome) -> bool:
        return all(v <= 0 for k, v in outcome.violations.items() if k in self.structural)

    def selection(self) -> list[dict[str, Any]]:
        """Stage-0 candidates in the order they deserve a fine-tune (see module): feasible first; under a
        structural budget those by proxy accuracy, best first; else by non-dominated rank on the objectives (proxy
        accuracy first), crowding distance descending within a rank."""
        ranked: list[dict[str, Any]] = []
        metric = self.objectives[0]
        for feasible in (True, False):
            pool = [(p, o) for p, o in self._proxies.values()
                    if o.state == "ok" and o.values is not None and self._feasible(o) == feasible]
            if feasible and self.structural:
                ranked += [p for p, o in sorted(pool, key=lambda po: metric.loss(po[1].values[0]))]  # type: ignore[index]
                continue
            while pool:
                values = [o.values for _, o in pool]
                front = pareto_indices(values, self.objectives)  # type: ignore[arg-type]
                members = [i for i in range(len(pool)) if i in front or any(values[i] == values[j] for j in front)]
                distance = crowding([tuple(obj.loss(v) for obj, v in zip(self.objectives, values[i] or ()))
                                     for i in members])
                order = sorted(range(len(members)), key=lambda k: -distance[k])
                ranked += [pool[members[k]][0] for k in order]
                pool = [pool[i] for i in range(len(pool)) if i not in members]
        return [{k: v for k, v in p.items() if k != STAGE_KEY} for p in ranked]

    def tell(self, suggestion_id: int, outcome: Outcome) -> None:
        stage, inner_id, point = self._running.pop(suggestion_id)
        if stage == "proxy":
            self._proxies[policy_key(point)] = (point, outcome)
            self.inner.tell(inner_id, self._for_inner(outcome))

    def _for_inner(self, outcome: Outcome) -> Outcome:
        return Outcome(outcome.state, outcome.values,
                       {k: v for k, v in outcome.violations.items() if k in self.structural})

    def replay(self, point: dict[str, Any], outcome: Outcome) -> None:
        if stage_of(point) == "proxy":
            self._asked_proxies += 1
            self._proxies[policy_key(point)] = (point, outcome)
            if not self.inner.resumed:  # a study loaded from the run directory already holds it
                self.inner.replay({k: v for k, v in point.items() if k != STAGE_KEY}, self._for_inner(outcome))
        else:
            self._full.add(policy_key(point))
