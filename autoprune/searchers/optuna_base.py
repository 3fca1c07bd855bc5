"""Searchers backed by an Optuna sampler, driven through ask/tell.

Optuna gets every outcome: finished trials with their three objectives and their constraint values
(``trial.set_constraint``, what Optuna 5 samplers read), failed trials as FAIL and early-stopped ones
as PRUNED, so partial-fidelity values never enter its Pareto front.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import optuna

from autoprune.searchers.base import Outcome, Searcher
from autoprune.space import CRITERION_KEY

DIRECTIONS = ["maximize", "minimize", "minimize"]  # accuracy, size_bytes, latency_ms
optuna.logging.set_verbosity(optuna.logging.WARNING)


class OptunaSearcher(Searcher):
    """Subclasses only choose the sampler."""

    def __init__(self, space, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        self.study = optuna.create_study(directions=DIRECTIONS, sampler=self.make_sampler())
        self._running: dict[int, optuna.Trial] = {}
        self._warm_started = False

    @abstractmethod
    def make_sampler(self) -> optuna.samplers.BaseSampler: ...

    def _distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        dists: dict[str, optuna.distributions.BaseDistribution] = {
            p.group: optuna.distributions.FloatDistribution(p.low, p.high, step=p.step) for p in self.space.params}
        if len(self.space.criteria) > 1:
            dists[CRITERION_KEY] = optuna.distributions.CategoricalDistribution(list(self.space.criteria))
        return dists

    def ask(self) -> tuple[int, dict[str, Any]]:
        if not self._warm_started:  # lazily, so points replayed on resume are not queued again
            self._warm_started = True
            for point in self.warm_start_points():
                self.study.enqueue_trial(point, skip_if_exists=True)
        trial = self.study.ask(self._distributions())
        point = dict(trial.params)
        point.setdefault(CRITERION_KEY, self.space.criteria[0])
        self._running[trial.number] = trial
        return trial.number, point

    def replay(self, point: dict[str, Any], outcome: Outcome) -> None:
        dists = self._distributions()
        params = {k: point[k] for k in dists}
        if outcome.state == "ok" and outcome.values is not None:
            attrs = {f"constraints:{k}": float(v) for k, v in outcome.violations.items()}
            trial = optuna.trial.create_trial(params=params, distributions=dists, values=list(outcome.values),
                                              system_attrs=attrs)
        else:
            state = optuna.trial.TrialState.PRUNED if outcome.state == "stopped" else optuna.trial.TrialState.FAIL
            trial = optuna.trial.create_trial(params=params, distributions=dists, state=state)
        self.study.add_trial(trial)

    def tell(self, suggestion_id: int, outcome: Outcome) -> None:
        trial = self._running.pop(suggestion_id)
        if outcome.state == "ok" and outcome.values is not None:
            for key, value in outcome.violations.items():
                trial.set_constraint(key, value)
            self.study.tell(trial, list(outcome.values))
        elif outcome.state == "stopped":
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
