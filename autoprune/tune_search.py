"""Ray Tune ``Searcher`` adapter around autoprune's searchers (ask/tell).

Written instead of Ray's OptunaSearch, whose pitfalls are: a result missing an objective leaves the
Optuna trial RUNNING for ever; constraints are never passed to Optuna; and an early-stopped trial is
told as COMPLETE with partial values. Here every completion is told: finished trials with their three
objectives and constraint violations, failures as failed, trials without a final result as stopped.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from ray.tune.search import Searcher as RaySearcher

from autoprune.config import OBJECTIVES
from autoprune.searchers import Outcome, Searcher

Violations = Callable[[dict[str, Any]], dict[str, float]]


class AskTellSearch(RaySearcher):
    """Feeds Tune with ``searcher.ask()`` points and tells ``searcher`` every outcome."""

    def __init__(self, searcher: Searcher, violations: Violations, max_trials: int) -> None:
        super().__init__(metric="accuracy", mode="max")
        # not "self.searcher": Tune treats an object with that attribute as a wrapper around it
        self.policy_searcher, self.violations, self.max_trials = searcher, violations, max_trials
        self._ids: dict[str, int] = {}
        self._asked = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._asked >= self.max_trials:
            return RaySearcher.FINISHED
        suggestion = self.policy_searcher.ask()
        if suggestion is None:
            return RaySearcher.FINISHED
        self._asked += 1
        sid, point = suggestion
        self._ids[trial_id] = sid
        return {"point": point, "searcher": self.policy_searcher.name, "suggestion": sid}

    def get_state(self) -> dict[str, Any]:
        """Tune snapshots this; autoprune resumes from trials.parquet instead, so a count is enough."""
        return {"asked": self._asked}

    def set_state(self, state: dict[str, Any]) -> None:
        self._asked = int(state.get("asked", 0))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id not in self._ids:
            return
        self.policy_searcher.tell(self._ids.pop(trial_id), outcome_of(result, error, self.violations))


def outcome_of(result: dict[str, Any] | None, error: bool, violations: Violations) -> Outcome:
    """Classify a trial's last result for the searcher."""
    if error or result is None or result.get("status") == "failed":
        return Outcome("failed")
    if not result.get("final"):
        return Outcome("stopped")
    values = tuple(float(result[k]) for k in OBJECTIVES)
    if not all(math.isfinite(v) for v in values):
        return Outcome("failed")
    return Outcome("ok", values, violations(result))  # type: ignore[arg-type]
