"""Searchers backed by an Optuna sampler, driven through ask/tell.

Optuna gets every outcome: finished trials with their objective values and their constraint values
(``trial.set_constraint``, what Optuna 5 samplers read), failed trials as FAIL and early-stopped ones
as PRUNED, so partial-fidelity values never enter its Pareto front. Each told trial carries the user
attribute ``autoprune:outcome`` (ok, failed, stopped).

With a ``StudyJournal`` the study lives in the run directory and a resumed search loads it: NSGA-II's
generations (kept in trial attributes) and every evaluated point carry over. The sampler is re-seeded
with ``seed + trials already in the study``, so its first draws after a resume differ from the first
run's. Trials left RUNNING by an interrupted driver are closed as FAIL and their points queued again, so
each runs exactly once. A point is never handed out twice: a sampler's proposal equal to a point already
evaluated, running or queued is closed as FAIL (user attribute ``autoprune:duplicate_of``) and replaced by
a point no trial has taken, drawn at random from the space's grid (samplers such as GP ignore failed
trials, so asking them again would propose the same point). With a structural budget (``use_budget``) a proposal
predicted outside it is closed as FAIL too (user attribute ``autoprune:repaired_to``) and its repaired point is queued
in its place, so every candidate the sampler hands out, but the uniform warm starts, is predicted within the budget.
"""
from __future__ import annotations

import math
import random
import warnings
from abc import abstractmethod
from typing import Any

import optuna

from autoprune.errors import AutopruneError
from autoprune.searching.searchers.base import Outcome, Searcher
from autoprune.searching.searchers.journal import StudyJournal
from autoprune.searching.space import CRITERION_KEY, SearchSpace

OUTCOME_ATTR = "autoprune:outcome"
DUPLICATE_ATTR = "autoprune:duplicate_of"
RERUN_ATTR = "autoprune:rerun_of"
WARM_ATTR = "autoprune:warm_start"
REPAIRED_ATTR = "autoprune:repaired_to"  # a proposal outside the budget: the point it was repaired into
REPAIR_OF_ATTR = "autoprune:repair_of"   # the repaired point's trial: which proposal it repairs
MAX_REJECTED = 200  # proposals closed in one ask (duplicates, repairs) before the space counts as spent
RANDOM_DRAWS = 10_000  # random draws that look for an untaken point before the space counts as exhausted
BAND_DRAWS = 500  # the same under a budget: each draw across its band is a bisection along the latency model
optuna.logging.set_verbosity(optuna.logging.WARNING)
TrialState = optuna.trial.TrialState


class OptunaSearcher(Searcher):
    """Subclasses only choose the sampler."""

    def __init__(self, space: SearchSpace, *, study: StudyJournal | None = None, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        self.journal = study
        previous = study.trials() if study else 0
        self.resumed = previous > 0
        names = [o.name for o in self.objectives]
        self.study = optuna.create_study(directions=[o.direction for o in self.objectives],
                                         sampler=self.make_sampler(self.seed + previous),
                                         storage=study.storage() if study else None,
                                         study_name=study.name if study else None, load_if_exists=True)
        if self.study.metric_names is None:
            with warnings.catch_warnings():  # experimental since Optuna 3.2; optuna-dashboard shows the names
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(names)
        elif self.study.metric_names != names:
            raise AutopruneError(f"config key 'objectives': the study '{self.study.study_name}' optimises "
                                 f"{self.study.metric_names}, not {names}; a resumed search keeps its objectives")
        self._running: dict[int, tuple[optuna.Trial, dict[str, Any]]] = {}
        self._trial_keys: dict[int, tuple[Any, ...]] = {}  # trial number -> its point's key (``_taken``)
        self._rng = random.Random(self.seed + previous)
        self._warm_started = False
        self._close_interrupted()

    @abstractmethod
    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler: ...

    def _distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        dists: dict[str, optuna.distributions.BaseDistribution] = {
            p.group: optuna.distributions.FloatDistribution(p.low, p.high, step=p.step) for p in self.space.params}
        if len(self.space.criteria) > 1:
            dists[CRITERION_KEY] = optuna.distributions.CategoricalDistribution(list(self.space.criteria))
        return dists

    def _point(self, params: dict[str, Any]) -> dict[str, Any]:
        """The point of the space that Optuna parameters stand for (ratios snapped onto their grid)."""
        point: dict[str, Any] = {p.group: p.snap(float(params[p.group])) for p in self.space.params}
        point[CRITERION_KEY] = params.get(CRITERION_KEY, self.space.criteria[0])
        return point

    @staticmethod
    def _key(point: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(sorted(point.items()))

    def _taken(self) -> dict[tuple[Any, ...], int]:
        """Points evaluated (told), running, or queued, each with the number of its trial."""
        taken: dict[tuple[Any, ...], int] = {}
        for t in self.study.get_trials(deepcopy=False):
            if OUTCOME_ATTR in t.user_attrs or t.state == TrialState.WAITING:
                key = self._trial_keys.get(t.number)  # a trial's point never changes: its key is computed once
                if key is None:
                    params = t.params if OUTCOME_ATTR in t.user_attrs else t.system_attrs["fixed_params"]
                    key = self._trial_keys[t.number] = self._key(self._point(params))
                taken[key] = t.number
        for number, (_, point) in self._running.items():
            taken[self._key(point)] = number
        return taken

    def _close_interrupted(self) -> None:
        """Trials a stopped driver left RUNNING never finished: close them and queue their points again."""
        interrupted = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in interrupted:
            self.study.tell(t.number, state=TrialState.FAIL)
            self.study.enqueue_trial(dict(t.params), user_attrs={RERUN_ATTR: t.number})
        if interrupted:
            self._save()

    def _save(self) -> None:
        if self.journal is not None:
            self.journal.save()

    def _untaken(self, taken: dict[tuple[Any, ...], int]) -> dict[str, Any] | None:
        """A random grid point no trial has taken (under a budget, drawn across its band); None when the space is
        exhausted."""
        size = math.prod(len(p.grid()) for p in self.space.params) * len(self.space.criteria)
        for _ in range(self._draws() if len(taken) < size else 0):
            if self.budget is not None and self.budget.active:
                point = self.budget.band_point(self._rng)
            else:
                point = {p.group: self._rng.choice(p.grid()) for p in self.space.params}
                point[CRITERION_KEY] = self._rng.choice(self.space.criteria)
            if self._key(point) not in taken:
                return point
        return None

    def _budgeted(self) -> bool:
        """Whether draws are taken across the budget's band (not the whole space)."""
        return self.budget is not None and self.budget.active

    def _draws(self) -> int:
        return BAND_DRAWS if self._budgeted() else RANDOM_DRAWS

    def ask(self) -> tuple[int, dict[str, Any]] | None:
        """The next point no trial has taken; None when the space holds none (``RANDOM_DRAWS``)."""
        dists = self._distributions()
        if not self._warm_started:  # lazily and skipping existing ones: points replayed or resumed are not queued again
            self._warm_started = True
            for point in self.warm_start_points():
                self.study.enqueue_trial({k: point[k] for k in dists}, skip_if_exists=True,
                                         user_attrs={WARM_ATTR: True})
        for _ in range(MAX_REJECTED):  # each turn takes a queued trial or a sampler's draw, and queues another point
            trial = self.study.ask(dists)
            point = self._point(trial.params)
            if self._repairs(trial, point):
                repaired = self.budget.repair(point)
                trial.set_user_attr(REPAIRED_ATTR, {k: repaired[k] for k in dists})
                self.study.tell(trial, state=TrialState.FAIL)
                self.study.enqueue_trial({k: repaired[k] for k in dists}, user_attrs={REPAIR_OF_ATTR: trial.number})
                continue
            taken = self._taken()
            twin = taken.get(self._key(point))
            if twin is None:
                self._running[trial.number] = (trial, point)
                self._save()  # a resumed search finds it RUNNING and runs it again
                return trial.number, point
            trial.set_user_attr(DUPLICATE_ATTR, twin)
            self.study.tell(trial, state=TrialState.FAIL)
            fresh = self._untaken(taken)
            if fresh is None:
                within = " within the budget" if self._budgeted() else ""
                self.stop_reason = (f"{self.name} found no untaken point in {self._draws()} random draws "
                                    f"({len(taken)} points taken): the space{within} is spent")
                break
            self.study.enqueue_trial({k: fresh[k] for k in dists})
        else:
            self.stop_reason = (f"{self.name}'s last {MAX_REJECTED} proposals were all taken points or outside the "
                                f"budget ({len(self._taken())} points taken): widen the space or loosen the budget")
        self._save()
        return None

    def use_budget(self, budget: Any) -> None:
        """Repair proposals into ``budget``; seed the first population (``population - warm_start`` points after the
        uniform ones) across its feasible band, unless seed points were given (sensitivity allocations)."""
        self.budget = budget
        count = int(self.settings.get("population", 8)) - self.warm_start
        if budget.active and not self.seed_points and not self.resumed:
            self.seed_points = [budget.band_point(self._rng) for _ in range(max(0, count))]

    def _repairs(self, trial: optuna.Trial, point: dict[str, Any]) -> bool:
        """Whether ``point`` is a proposal to repair: outside the budget, and not a warm start, a re-run or a repair."""
        if self.budget is None or not self.budget.active:
            return False
        return not {WARM_ATTR, RERUN_ATTR, REPAIR_OF_ATTR} & set(trial.user_attrs) and not self.budget.within(point)

    def replay(self, point: dict[str, Any], outcome: Outcome) -> None:
        dists = self._distributions()
        params = {k: point[k] for k in dists}
        attrs = {OUTCOME_ATTR: outcome.state}
        if outcome.state == "ok" and outcome.values is not None:
            constraints = {f"constraints:{k}": float(v) for k, v in outcome.violations.items()}
            trial = optuna.trial.create_trial(params=params, distributions=dists, values=list(outcome.values),
                                              user_attrs=attrs, system_attrs=constraints)
        else:
            state = TrialState.PRUNED if outcome.state == "stopped" else TrialState.FAIL
            trial = optuna.trial.create_trial(params=params, distributions=dists, state=state, user_attrs=attrs)
        self.study.add_trial(trial)

    def tell(self, suggestion_id: int, outcome: Outcome) -> None:
        trial, _ = self._running.pop(suggestion_id)
        trial.set_user_attr(OUTCOME_ATTR, outcome.state)
        if outcome.state == "ok" and outcome.values is not None:
            for key, value in outcome.violations.items():
                trial.set_constraint(key, value)
            self.study.tell(trial, list(outcome.values))
        elif outcome.state == "stopped":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, state=TrialState.FAIL)
        self._save()
