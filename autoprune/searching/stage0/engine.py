"""The stage-0 engine: a searcher's stage-0 candidates scored by resident evaluators, not as Ray Tune trials.

``Stage0Engine`` wraps the search's searcher. Every point the searcher asks at stage ``proxy`` (a staged searcher's
candidates, ``sensitivity``'s curves, ``greedy``'s proposals) is gathered into a batch; the batch goes to the
``EvaluatorPool`` (one evaluator per CPU slot of the cluster), each outcome is written to ``trials.parquet`` (``stage``
``proxy``, latency predicted by the run's latency model: ``latency_source`` ``predicted``) and told to the searcher as
it streams back. Only the points the searcher asks to fine-tune leave ``ask`` for Ray Tune, and under a latency
budget only once the latency actor has timed them within it: timing costs a second or two (the trial's own
measurement is then answered from the actor's cache), a fine-tune minutes. A point measured over the bound is told
to the searcher as failed and recorded as a ``skipped`` row, never fine-tuned. A point scored before (a resumed
search's rows) is told its recorded outcome and never scored again.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from autoprune.config import Constraint, violations
from autoprune.objectives import values_of
from autoprune.searching.results import ResultsStore, skipped_row
from autoprune.searching.searchers.base import Outcome, Searcher, stage_of
from autoprune.searching.searchers.points import Key, policy_key
from autoprune.searching.space import CRITERION_KEY
from autoprune.searching.stage0.budget import Budget
from autoprune.searching.stage0.evaluator import Scored
from autoprune.searching.stage0.keeper import LatencyKeeper
from autoprune.searching.stage0.pool import EvaluatorPool

Echo = Callable[[str], None]


class Stage0Engine(Searcher):
    """Wraps ``inner``: its stage-0 points are scored on ``pool`` in batches of ``batch`` (see module).

    Args:
        inner: the search's searcher.
        pool: the evaluators (started on first use).
        store: the run's results store (its stage-0 rows are the points already scored).
        budget: the structural budget, whose latency model predicts each candidate's latency.
        constraints: the search's constraints (each row's violations and ``feasible``).
        base: the base's values for the rows' ``base_*`` columns and relative constraints (``latency_ms`` the
            reference, the proxy metric under the metric's name).
        batch: stage-0 points gathered before a batch is scored.
        echo: where progress lines go.
        keeper: times a candidate of each batch to keep the latency model honest (``keeper``), when given.
        time_budget_s: the search's ``time_budget_s``, counted from the first ask (``prepare``, before Ray Tune
            starts; Tune gets ``time_left``): once spent, no further batch is scored and ``ask`` returns None.
    """

    def __init__(self, inner: Searcher, pool: EvaluatorPool, store: ResultsStore, budget: Budget,
                 constraints: list[Constraint], base: dict[str, Any], batch: int, echo: Echo,
                 keeper: LatencyKeeper | None = None, time_budget_s: float | None = None) -> None:
        super().__init__(inner.space, seed=inner.seed, warm_start=inner.warm_start, objectives=inner.objectives)
        self.inner, self.pool, self.store, self.budget = inner, pool, store, budget
        self.name = inner.name  # type: ignore[misc]  # the wrapped searcher's name is what the results show
        self.resumed = inner.resumed
        self.constraints, self.base, self.batch, self.echo = constraints, base, max(1, batch), echo
        self.keeper = keeper
        self.time_budget_s = time_budget_s
        self._clock: float | None = None  # the time budget counts from the first ask
        self.metric = store.metric
        self.maximize = next((o.maximize for o in self.objectives if o.name == self.metric), True)
        self.scored: dict[Key, Outcome] = {}
        self.over: set[Key] = set()  # fine-tune proposals measured over the latency bound
        for row in store.rows:
            if row.get("stage") == "proxy" and row["status"] in ("ok", "failed"):
                self.scored[policy_key(_point_of(row, self.space.groups))] = self._outcome(row)
            elif row["status"] == "skipped" and row.get("latency_source") == "measured":
                self.over.add(policy_key(_point_of(row, self.space.groups)))
        self._held: tuple[int, dict[str, Any]] | None = None
        self.count, self.wall_s = 0, 0.0  # candidates scored this run; seconds from the first batch to the last
        self._first: float | None = None

    # the searcher interface: what leaves ask() is for Ray Tune
    def ask(self) -> tuple[int, dict[str, Any]] | str | None:
        if self._clock is None:
            self._clock = time.monotonic()
        if self._held is not None:
            held, self._held = self._held, None
            return held
        while True:
            suggestion = self._next()
            if not isinstance(suggestion, tuple) or not self._measured_over(*suggestion):
                return suggestion

    def _next(self) -> tuple[int, dict[str, Any]] | str | None:
        """The searcher's next point that is not for stage 0, the stage-0 points it asks on the way scored."""
        pending: list[tuple[int, dict[str, Any]]] = []
        while True:
            if self._spent():
                return None
            suggestion = self.inner.ask()
            if self.inner.stop_reason is not None and self.inner.stop_reason != self.stop_reason:
                self.stop_reason = self.inner.stop_reason  # said when it happens
                self.echo(self.stop_reason)
            if isinstance(suggestion, tuple) and stage_of(suggestion[1]) == "proxy":
                pending.append(suggestion)
                if len(pending) >= self.batch:
                    self._score(pending)
                    pending = []
                continue
            if pending:  # the searcher waits for (or is done with, or moves past) the batch it asked: score it
                self._score(pending)
                pending = []
                if isinstance(suggestion, tuple):
                    return suggestion
                continue
            return suggestion

    def _measured_over(self, sid: int, point: dict[str, Any]) -> bool:
        """Time a fine-tune proposal (see module); when it breaks the latency bound, tell the searcher it failed."""
        limits = [lim for lim in self.budget.limits if lim.metric == "latency_ms"]
        if self.keeper is None or not limits or stage_of(point) != "full":  # greedy's short tunes walk towards it
            return False
        key = policy_key(point)
        if key not in self.over:
            report = self.keeper.measure(point)
            broken = [lim for lim in limits if report.latency_ms > lim.bound]
            if not broken:
                return False
            self.over.add(key)
            reason = f"skipped: measured latency {report.latency_ms:.3f} ms breaks '{broken[0].text}'"
            row = skipped_row(point, self.space.groups, reason, self.name, stage=stage_of(point),
                              latency_ms=report.latency_ms, latency_predicted_ms=report.predicted_ms,
                              latency_source="measured")
            self.store.append(row)
            self.echo(f"{row['trial_id']:>14s} {reason} (predicted {report.predicted_ms:.3f} ms): not fine-tuned")
        self.inner.tell(sid, Outcome("failed"))
        return True

    def prepare(self) -> None:
        """Run the stage-0 work the searcher asks for before its first fine-tune (held for the next ``ask``)."""
        suggestion = self.ask()
        if isinstance(suggestion, tuple):
            self._held = suggestion

    def tell(self, suggestion_id: int, outcome: Outcome) -> None:
        self.inner.tell(suggestion_id, outcome)

    def replay(self, point: dict[str, Any], outcome: Outcome) -> None:
        self.inner.replay(point, outcome)

    def use_budget(self, budget: Budget) -> None:
        self.inner.use_budget(budget)

    def time_left(self) -> float | None:
        """Seconds of the time budget left (None without one): what Ray Tune gets for the fine-tunes."""
        if self.time_budget_s is None:
            return None
        return self.time_budget_s - (time.monotonic() - self._clock if self._clock is not None else 0.0)

    def _spent(self) -> bool:
        """Whether the time budget is spent (then said once, as the reason the proposals ended)."""
        left = self.time_left()
        if left is None or left > 0:
            return False
        reason = (f"time budget of {self.time_budget_s:g} s reached during stage 0 after {self.count} "
                  f"candidates this run: no further candidate is scored")
        if self.stop_reason != reason:  # no candidate is scored once spent: the count, and so the reason, stay
            self.stop_reason = reason
            self.echo(reason)
        return True

    # scoring
    def _score(self, suggestions: list[tuple[int, dict[str, Any]]]) -> None:
        ids: dict[Key, list[int]] = {}  # the suggestions of each policy not scored yet (scored once, told to each)
        fresh = []
        for sid, point in suggestions:
            known = self.scored.get(policy_key(point))
            if known is not None:
                self.inner.tell(sid, known)
                continue
            if policy_key(point) not in ids:
                fresh.append(point)
            ids.setdefault(policy_key(point), []).append(sid)
        if not fresh:
            return
        start = time.perf_counter()
        if self._first is None:
            self._first = start
        if self.keeper is not None:
            self.keeper.collect()
        sign = 1.0 if self.maximize else -1.0
        batch: list[tuple[dict[str, Any], float]] = []

        def on_scored(points: list[dict[str, Any]], outcomes: list[Scored]) -> None:
            rows = [self._row(p, o) for p, o in zip(points, outcomes)]
            self.store.extend(rows)
            for point, row in zip(points, rows):
                outcome = self._outcome(row)
                self.scored[policy_key(point)] = outcome
                for sid in ids[policy_key(point)]:
                    self.inner.tell(sid, outcome)
                if row["status"] == "ok":
                    batch.append((point, sign * row[self.metric]))
            self.count += len(points)

        self.pool.map(fresh, on_scored)
        if self.keeper is not None:
            self.keeper.sample(batch)
        self.wall_s = time.perf_counter() - self._first  # the searcher's asks between batches included
        self.echo(self.progress())

    def _row(self, point: dict[str, Any], scored: Scored) -> dict[str, Any]:
        row: dict[str, Any] = {f"ratio:{g}": point[g] for g in self.space.groups}
        row.update(trial_id=f"s0-{uuid.uuid4().hex[:10]}", searcher=self.name, criterion=point[CRITERION_KEY],
                   stage="proxy", epochs=0.0, host=scored.host, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                   **{f"seconds_{k}": round(v, 4) for k, v in scored.seconds.items()},
                   **{f"base_{k}": v for k, v in self.base.items()})
        if scored.error is not None:
            row.update(status="failed", error=scored.error)
            return row
        m = scored.metrics
        predicted = self.budget.predict(point).get("latency_ms")
        row.update(status="ok", error=None, criterion_used=m["criterion_used"], params=m["params"],
                   size_bytes=m["size_bytes"], macs=m["macs"], latency_ms=predicted, latency_predicted_ms=predicted,
                   latency_source="predicted", **{self.metric: m[f"proxy_{self.metric}"],
                                                  f"proxy_{self.metric}": m[f"proxy_{self.metric}"]})
        row["feasible"] = all(v <= 0 for v in violations(self.constraints, row).values())
        return row

    def _outcome(self, row: dict[str, Any]) -> Outcome:
        if row["status"] != "ok":
            return Outcome("failed")
        return Outcome("ok", values_of(row, self.objectives), violations(self.constraints, row))

    def progress(self) -> str:
        """One line: candidates scored, the rate, how many were predicted within the budget when they were scored,
        and the best proxy metric among those."""
        rows = [r for r in self.store.rows if r.get("stage") == "proxy" and r["status"] == "ok"]
        inside = [r for r in rows if all(r[lim.metric] <= lim.bound for lim in self.budget.limits)]
        rate = 60 * self.count / self.wall_s if self.wall_s > 0 else 0.0
        pick = max if self.maximize else min
        best = pick((r[self.metric] for r in inside), default=float("nan"))
        return (f"stage 0: {len(rows)} candidates scored ({self.count} this run, {rate:.0f}/min on "
                f"{self.pool.size} evaluators)" + (f", {len(inside)} predicted within {_limits(self.budget)}"
                                                   if self.budget.active else "")
                + f"; best proxy {self.metric} {best:.4f}" + (" within it" if self.budget.active else ""))

    def close(self) -> None:
        self.pool.close()


def _point_of(row: dict[str, Any], groups: list[str]) -> dict[str, Any]:
    return {**{g: row[f"ratio:{g}"] for g in groups}, CRITERION_KEY: row["criterion"]}


def _limits(budget: Budget) -> str:
    return " and ".join(f"'{lim.text}'" for lim in budget.limits)
