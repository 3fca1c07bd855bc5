"""What the searchers that walk the space themselves (``sensitivity``, ``greedy``) share about points."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from autoprune.errors import AutopruneError
from autoprune.objectives import Objective, score_of
from autoprune.searching.searchers.base import EPOCHS_KEY, STAGE_KEY, Outcome, stage_of
from autoprune.searching.space import CRITERION_KEY, SearchSpace

Key = tuple[tuple[str, Any], ...]
Predict = Callable[[dict[str, int]], float]  # a structure (channels kept per group) -> a metric, e.g. latency (ms)


def policy_key(point: dict[str, Any]) -> Key:
    """A point without its stage or epochs: one key per policy (ratios rounded past float noise)."""
    return tuple(sorted((k, round(v, 9) if isinstance(v, float) else v) for k, v in point.items()
                        if k not in (STAGE_KEY, EPOCHS_KEY)))


def channels(space: SearchSpace, point: dict[str, Any]) -> dict[str, int]:
    """The channel count each group keeps under the point's policy."""
    policy = space.policy(point)
    return {p.group: policy.keep(p.group, p.channels) for p in space.params}


def full_structure(space: SearchSpace) -> dict[str, int]:
    """The base model's structure: every channel kept."""
    return {p.group: p.channels for p in space.params}


def low_point(space: SearchSpace, criterion: str) -> dict[str, Any]:
    """Every group at its lowest ratio (the base model when every low is 0)."""
    return {**{p.group: p.low for p in space.params}, CRITERION_KEY: criterion}


def score_index(objectives: Sequence[Objective], searcher: str) -> int:
    """Where the task's metric sits among the objectives: its (proxy or short fine-tune) value ranks candidates, so a
    searcher that ranks by it needs it there."""
    score = score_of(objectives)
    if score is None:
        raise AutopruneError(f"config key 'objectives': searcher '{searcher}' ranks candidates by the task's metric, "
                             f"add it to {[o.name for o in objectives]}")
    return list(objectives).index(score)


class StageBook:
    """The suggestions of a searcher that evaluates its own candidates at cheap stages (``sensitivity``: ``proxy``;
    ``greedy``: ``proxy`` then ``short``) before fine-tuning some in full: ids, what is running (stage and policy),
    each cheap stage's outcomes by policy (``outcomes``: the main cheap stage's), and the policies already handed out
    (or replayed) as full trials."""

    def __init__(self, stage: str, epochs: float | None = None) -> None:
        self.stage, self.epochs = stage, epochs  # epochs: a "short" stage's fine-tuning
        self.by_stage: dict[str, dict[Key, Outcome]] = {stage: {}}
        self.running: dict[int, tuple[str, Key]] = {}
        self.full: set[Key] = set()
        self._next_id = 0

    @property
    def outcomes(self) -> dict[Key, Outcome]:
        return self.by_stage[self.stage]

    def of(self, stage: str) -> dict[Key, Outcome]:
        """The outcomes of a cheap ``stage``, by policy."""
        return self.by_stage.setdefault(stage, {})

    def pending(self, point: dict[str, Any], stage: str) -> bool:
        """Neither evaluated at ``stage`` nor running there."""
        key = policy_key(point)
        return key not in self.of(stage) and (stage, key) not in self.running.values()

    def suggest(self, point: dict[str, Any], stage: str) -> tuple[int, dict[str, Any]]:
        self._next_id += 1
        self.running[self._next_id] = (stage, policy_key(point))
        extra = {EPOCHS_KEY: self.epochs} if stage == "short" and self.epochs is not None else {}
        return self._next_id, {**point, STAGE_KEY: stage, **extra}

    def suggest_full(self, point: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """The point as a full trial, unless one was handed out (or replayed) for its policy already."""
        if policy_key(point) in self.full:
            return None
        self.full.add(policy_key(point))
        return self.suggest(point, "full")

    def tell(self, suggestion_id: int, outcome: Outcome) -> None:
        stage, key = self.running.pop(suggestion_id)
        if stage != "full":
            self.of(stage)[key] = outcome

    def replay(self, point: dict[str, Any], outcome: Outcome) -> None:
        stage = stage_of(point)
        if stage == "full":
            self.full.add(policy_key(point))
        else:
            self.of(stage)[policy_key(point)] = outcome
