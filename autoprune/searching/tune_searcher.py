"""Ray Tune ``Searcher`` adapter around autoprune's searchers (ask/tell).

Written instead of Ray's OptunaSearch, whose pitfalls are: a result missing an objective leaves the
Optuna trial RUNNING for ever; constraints are never passed to Optuna; and an early-stopped trial is
told as COMPLETE with partial values. Here every completion is told: finished trials with their objective
values and constraint violations, failures (a trial that raised, or errored in Tune) as failed, trials a
scheduler ended before their final result as stopped. Trials still running when the driver stops are not
told: a resumed search runs them again.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ray.tune.search import Searcher as RaySearcher

from autoprune.objectives import Objective
from autoprune.searching.screening import Verdict
from autoprune.searching.searchers import Outcome, Searcher
from autoprune.searching.searchers.base import stage_of

Violations = Callable[[dict[str, Any]], dict[str, float]]
Screen = Callable[[dict[str, Any]], Verdict]
OnSkip = Callable[[dict[str, Any], Verdict, str], None]
MAX_SKIPS_IN_A_ROW = 20


class AskTellSearch(RaySearcher):
    """Feeds Tune with ``searcher.ask()`` points and tells ``searcher`` every outcome."""

    def __init__(self, searcher: Searcher, violations: Violations, max_trials: int,
                 screen: Screen | None = None, on_skip: OnSkip | None = None) -> None:
        first = searcher.objectives[0]
        super().__init__(metric=first.name, mode="max" if first.maximize else "min")
        # not "self.searcher": Tune treats an object with that attribute as a wrapper around it
        self.policy_searcher, self.violations, self.max_trials = searcher, violations, max_trials
        self.screen, self.on_skip = screen, on_skip
        self._ids: dict[str, int] = {}
        self._asked = 0  # full-budget suggestions: stage-0 and short evaluations do not count

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]  # FINISHED is a str
        if self._asked >= self.max_trials:
            return RaySearcher.FINISHED
        skips = 0
        while True:
            suggestion = self.policy_searcher.ask()
            if suggestion is None:
                return RaySearcher.FINISHED
            if isinstance(suggestion, str):  # WAIT
                return None  # Tune asks again once a running trial has completed
            sid, point = suggestion
            # after this many skips in a row the prediction may be what is wrong: run the candidate anyway
            # only full-budget points: stage-0 and short evaluations are how a searcher learns what is fast
            screened = skips < MAX_SKIPS_IN_A_ROW and stage_of(point) == "full"
            verdict = self.screen(point) if self.screen is not None and screened else None
            if verdict is None or verdict.reason is None:
                break
            # predicted to break a latency constraint: never pruned or trained; the searcher learns it failed
            self.policy_searcher.tell(sid, Outcome("failed"))
            if self.on_skip is not None:
                self.on_skip(point, verdict, self.policy_searcher.name)
            skips += 1
        self._asked += stage_of(point) == "full"
        self._ids[trial_id] = sid
        return {"point": point, "searcher": self.policy_searcher.name, "suggestion": sid}

    def get_state(self) -> dict[str, Any]:
        """Tune snapshots this; autoprune resumes from its run directory instead, so a count is enough."""
        return {"asked": self._asked}

    def set_state(self, state: dict[str, Any]) -> None:
        self._asked = int(state.get("asked", 0))

    def __getstate__(self) -> dict[str, Any]:
        """What ``Tuner`` pickles into its experiment (for ``Tuner.restore``, which autoprune does not use: a run
        resumes from its journal and trials.parquet): everything but the searcher and the callbacks, which stay in
        the driver (Optuna's samplers hold thread locks; the stage-0 engine holds its evaluators)."""
        state = self.__dict__.copy()
        state.update(policy_searcher=None, violations=None, screen=None, on_skip=None)
        return state

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id not in self._ids:
            return
        outcome = outcome_of(result, error, self.violations, self.policy_searcher.objectives)
        self.policy_searcher.tell(self._ids.pop(trial_id), outcome)


def outcome_of(result: dict[str, Any] | None, error: bool, violations: Violations,
               objectives: Sequence[Objective]) -> Outcome:
    """Classify a trial's last result for the searcher (``error``: Tune reports the trial errored)."""
    if error or (result or {}).get("status") == "failed":
        return Outcome("failed")
    if not result or not result.get("final"):
        return Outcome("stopped")
    values = tuple(float(result[o.name]) for o in objectives)
    if not all(math.isfinite(v) for v in values):
        return Outcome("failed")
    return Outcome("ok", values, violations(result))
