"""The searcher interface: ask for a point of the space, tell how it went."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from autoprune.objectives import DEFAULT_OBJECTIVES, Objective
from autoprune.searching.space import SearchSpace

# how far a suggested point is evaluated (absent: "full"): "proxy" (stage 0: prune + BN recalibration + proxy
# subset), "short" (a short fine-tune of EPOCHS_KEY epochs) or "full" (the budget)
STAGE_KEY = "stage"
EPOCHS_KEY = "epochs"
WAIT = "wait"          # ask(): nothing to suggest until running suggestions have been told


def stage_of(point: dict[str, Any]) -> str:
    return str(point.get(STAGE_KEY, "full"))


@dataclass(frozen=True)
class Outcome:
    """How a suggested point fared.

    ``state`` is ``ok`` (finished: ``values`` holds one value per objective of the searcher, in order),
    ``failed`` (raised), or ``stopped`` (ended early by a scheduler: its partial values must not reach
    the front). ``violations`` holds one value per constraint, <= 0 when satisfied.
    """

    state: str
    values: tuple[float, ...] | None = None
    violations: dict[str, float] = field(default_factory=dict)


class Searcher(ABC):
    """Proposes per-layer sparsity policies. A new searcher is one subclass in one file.

    ``resumed`` is True when the searcher restored its own state from the run directory (an Optuna
    study in its journal): the trials already evaluated need no ``replay`` then.
    """

    name: ClassVar[str]
    resumed: bool = False
    budget: Any = None  # the search's structural budget (``use_budget``)
    stop_reason: str | None = None  # why its proposals ended before their schedule did (one line for the user)

    def __init__(self, space: SearchSpace, *, seed: int = 0, warm_start: int = 0,
                 objectives: Sequence[Objective] = DEFAULT_OBJECTIVES, **settings: Any) -> None:
        self.space = space
        self.seed = seed
        self.warm_start = warm_start
        self.objectives = tuple(objectives)
        self.settings = settings
        self.seed_points: list[dict[str, Any]] = []  # evaluated first after the uniform ones (SensitivitySeeded)

    @abstractmethod
    def ask(self) -> tuple[int, dict[str, Any]] | str | None:
        """A new ``(suggestion_id, point)``, ``WAIT`` while it needs outcomes of running suggestions first, or None
        when it has nothing left to try. A point may name its stage (``STAGE_KEY``); only ``full`` points enter
        the front and count against the trial budget."""

    @abstractmethod
    def tell(self, suggestion_id: int, outcome: Outcome) -> None:
        """Report the outcome of a suggestion."""

    @abstractmethod
    def replay(self, point: dict[str, Any], outcome: Outcome) -> None:
        """Learn from a point evaluated earlier (a resumed search) without suggesting it again."""

    def use_budget(self, budget: Any) -> None:
        """Take the search's structural budget (``autoprune.searching.stage0.budget.Budget``): a searcher that draws
        points itself repairs its proposals into it; a wrapper hands it to the searchers it wraps."""
        self.budget = budget

    def warm_start_points(self) -> list[dict[str, Any]]:
        """Uniform policies evaluated first, so every search starts from the manual baseline, then
        ``seed_points`` (e.g. sensitivity allocations)."""
        uniform = [self.space.uniform_point(r) for r in self.space.uniform_ratios(self.warm_start)]
        uniform = uniform if self.warm_start else []
        return uniform + [p for p in self.seed_points if p not in uniform]
