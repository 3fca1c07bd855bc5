"""The latency model kept honest: structures timed across the space before stage 0, and a few stage-0 candidates
timed while it runs.

Stage-0 candidates are not timed: the search's latency model predicts them (``autoprune.measure.predictor``). It is
fitted on what the latency actor has timed: the base and the space's corners, then ``calibrate``'s structures (half
drawn across the budget's latency band, half random proposals repaired onto its bound, the shapes a repairing
searcher hands out), then, while stage 0 runs, the most promising candidate of each batch (``sample``: the best proxy
metric predicted within the budget, not timed yet), timed by the actor in the background, and every proposal the
engine is about to fine-tune (``measure``). Each refresh hands the budget the refitted model and tightens its latency
bound by the model's leave-one-out error.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from autoprune.measure.latency import RemoteMeter
from autoprune.measure.structure import structure_key
from autoprune.pruning import prune
from autoprune.pruning.structural import RECORD_ATTR
from autoprune.searching.searchers.points import channels
from autoprune.searching.space import CRITERION_KEY, SearchSpace
from autoprune.searching.stage0.budget import Budget

Echo = Callable[[str], None]
MIN_MARGIN = 0.01  # the latency bound is tightened by at least this fraction


class LatencyKeeper:
    """Times structures on the search's latency actor ``meter`` and keeps ``budget``'s latency model current.

    Args:
        meter: the latency actor (a Ray actor handle of ``LatencyMeter``).
        base_model: the unpruned model (structures are pruned from it to be timed).
        example: an example input.
        budget: the budget whose latency model and margin are refreshed.
    """

    def __init__(self, meter: Any, base_model: Any, example: Any, budget: Budget) -> None:
        self.meter, self.base_model, self.example, self.budget = meter, base_model, example, budget
        self._timing: list[Any] = []     # measurements the actor is still making
        self._timed: set[str] = set()    # structures sent to be timed

    def calibrate(self, count: int, seed: int, echo: Echo) -> None:
        """Time ``count`` structures across the space (see module), then refresh."""
        start = time.perf_counter()
        rng = random.Random(seed)
        remote = RemoteMeter(self.meter)
        for i in range(count):
            point = (self.budget.band_point(rng) if i % 2 == 0 or not self.budget.active
                     else self.budget.repair(random_point(self.budget.space, rng)))
            remote.measure(*structure_of(self.base_model, self.example, self.budget.space, point))
        summary = self.refresh()
        error = summary["loo_error"]
        echo(f"latency model: {count} structures timed across the space in {time.perf_counter() - start:.0f} s, "
             f"{summary['measured']} in all; {summary['predictor']}, leave-one-out median error "
             + (f"{100 * error:.1f} %" if error is not None else "n/a")
             + (f"; latency bound tightened by {100 * self.budget.margin:.1f} %" if self.budget.active else ""))

    def sample(self, scored: list[tuple[dict[str, Any], float]]) -> None:
        """Time (in the background) the best of a batch's ``(point, proxy score, higher is better)`` that is predicted
        within the budget and was not timed yet."""
        for point, _ in sorted(scored, key=lambda ps: -ps[1]):
            key = structure_key(channels(self.budget.space, point))
            if key in self._timed or not self.budget.within(point):
                continue
            self._timed.add(key)
            model, kept = structure_of(self.base_model, self.example, self.budget.space, point)
            self._timing.append(self.meter.measure.remote(model, kept))
            return

    def measure(self, point: dict[str, Any]) -> Any:
        """Time ``point``'s structure now (the actor answers a structure it timed before from its cache) and refresh
        the budget; returns the actor's ``LatencyReport``."""
        self._timed.add(structure_key(channels(self.budget.space, point)))
        report = RemoteMeter(self.meter).measure(*structure_of(self.base_model, self.example, self.budget.space, point))
        self.refresh()
        return report

    def collect(self) -> None:
        """Refresh the budget when background measurements have finished."""
        import ray

        if not self._timing:
            return
        done, self._timing = ray.wait(self._timing, num_returns=len(self._timing), timeout=0)
        if done:
            ray.get(done)
            self.refresh()

    def refresh(self) -> dict[str, Any]:
        """Hand the budget the actor's current model, its latency bound tightened by the model's leave-one-out
        error; returns the actor's summary."""
        import ray

        summary = ray.get(self.meter.summary.remote())
        error = summary["loo_error"]
        self.budget.update(ray.get(self.meter.predictor.remote()),
                           max(MIN_MARGIN, error if error is not None else MIN_MARGIN))
        return summary


def random_point(space: SearchSpace, rng: random.Random) -> dict[str, Any]:
    """Every ratio drawn from its grid."""
    return {**{p.group: rng.choice(p.grid()) for p in space.params}, CRITERION_KEY: "l1"}


def structure_of(base_model: Any, example: Any, space: SearchSpace, point: dict[str, Any]) -> tuple[Any, dict[str, int]]:
    """The point's structure pruned from the base (by ``l1``: latency depends on channel counts, not on which
    channels), with its channel counts: what the latency actor times."""
    pruned = prune(base_model, space.policy({**point, CRITERION_KEY: "l1"}), example)
    return pruned, getattr(pruned, RECORD_ATTR).channels_after()
