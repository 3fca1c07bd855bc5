"""Resident stage-0 evaluators on the Ray cluster: one actor per CPU slot of every node, candidates sent in chunks.

Each evaluator is a Ray actor holding a ``Stage0Evaluator`` (the base model, its rankings, the calibration batches),
pinned to a node (hard node affinity) with ``slots = node CPUs // cpu per evaluator`` of them per node, so they
spread over every node that has room. The actors reserve no logical CPU: a staged searcher's stage 0 runs while no
fine-tune does (it waits for every stage-0 outcome before it fine-tunes), and fine-tunes keep their Ray Tune trials'
reservations; ``greedy`` scores its next iteration while the previous one's model fine-tunes, sharing those cores.
``map`` streams each chunk's outcomes back as it finishes. An evaluator that dies (its node lost, its process killed)
is replaced where its node still lives, and its chunk is sent again: no candidate is lost, none is counted twice (a
chunk's outcomes are handed over once, when its call returns). Nodes that join while ``map`` runs
get evaluators when the next chunk returns (a look at the cluster's nodes: milliseconds), or within ``RECONCILE_S``
when none does.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoprune.errors import AutopruneError
from autoprune.searching.stage0.evaluator import Scored, Stage0Evaluator, Stage0Settings

RECONCILE_S = 5.0  # how often map looks for nodes that joined while no chunk returns
MAX_LOSSES_IN_A_ROW = 8  # beyond the evaluators map started with, dying with no chunk finished in between
OnScored = Callable[[list[dict[str, Any]], list[Scored]], None]


@dataclass
class _Evaluator:
    handle: Any
    node: str


class EvaluatorPool:
    """Stage-0 evaluators over the cluster's nodes (see module).

    Args:
        base: the unpruned model.
        task: the task (its calibration and proxy split).
        space: the search space.
        settings: how candidates are scored; ``settings.threads`` torch threads per evaluator.
        cpus: CPUs one evaluator stands for (``resources.cpu``); a node with N CPUs gets ``N // cpus`` evaluators.
        chunk: candidates per call.
    """

    def __init__(self, base: Any, task: Any, space: Any, settings: Stage0Settings, cpus: float = 1.0,
                 chunk: int = 4) -> None:
        import ray

        self.settings, self.cpus, self.chunk = settings, cpus, max(1, chunk)
        self._refs = (ray.put(base), ray.put(task), space)
        self._evaluators: list[_Evaluator] = []
        self.started = 0     # evaluators started, replacements included
        self.lost = 0        # evaluators that died
        self.resent = 0      # chunks sent again after their evaluator died

    @property
    def size(self) -> int:
        return len(self._evaluators)

    def _slots(self) -> dict[str, int]:
        """Evaluators each live node can hold: its CPUs // ``cpus``."""
        import ray

        return {n["NodeID"]: int(n["Resources"].get("CPU", 0) // self.cpus) for n in ray.nodes()
                if n.get("Alive") and n["Resources"].get("CPU", 0) >= self.cpus}

    def capacity(self) -> int:
        """Evaluators the live nodes can hold now."""
        return sum(self._slots().values())

    def reconcile(self) -> None:
        """Start evaluators on every node with fewer than its slots (a joined node, a replaced evaluator)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        slots = self._slots()
        self._evaluators = [e for e in self._evaluators if e.node in slots]
        for node, count in slots.items():
            have = sum(e.node == node for e in self._evaluators)
            for _ in range(count - have):
                actor = ray.remote(Stage0Evaluator).options(
                    num_cpus=0, max_restarts=0, max_concurrency=1,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                base, task, space = self._refs
                self._evaluators.append(_Evaluator(actor.remote(base, task, space, self.settings), node))
                self.started += 1
        if not self._evaluators:
            raise AutopruneError(f"no node of the Ray cluster has {self.cpus:g} CPU(s) for a stage-0 evaluator "
                                 f"(resources.cpu)")

    def base_outcome(self) -> dict[str, Any]:
        """The base's proxy metric, size, params and MACs, from an evaluator."""
        import ray

        self.reconcile()
        try:
            return dict(ray.get(self._evaluators[0].handle.base_outcome.remote()))
        except ray.exceptions.RayActorError as e:  # its constructor raised: the evaluators cannot start
            raise AutopruneError(f"a stage-0 evaluator could not start: {_cause(e)}") from None

    def map(self, points: list[dict[str, Any]], on_scored: OnScored) -> None:
        """Score every point; ``on_scored(points, outcomes)`` gets each chunk once, as it finishes (any order)."""
        import ray

        self.reconcile()
        queue = [points[i:i + self.chunk] for i in range(0, len(points), self.chunk)]
        running: dict[Any, tuple[_Evaluator, list[dict[str, Any]]]] = {}
        last, losses, evaluators = time.monotonic(), 0, len(self._evaluators)
        while queue or running:
            busy = {id(e) for e, _ in running.values()}
            for evaluator in [e for e in self._evaluators if id(e) not in busy]:
                if not queue:
                    break
                chunk = queue.pop(0)
                running[evaluator.handle.score_many.remote(chunk)] = (evaluator, chunk)
            done, _ = ray.wait(list(running), num_returns=1, timeout=RECONCILE_S)
            for ref in done:
                evaluator, chunk = running.pop(ref)
                try:
                    outcomes = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
                    self.lost += 1
                    self.resent += 1
                    losses += 1
                    # a lost node takes all its evaluators' chunks at once: only more losses than that say that
                    # something kills every evaluator (e.g. one that cannot start: its error, once)
                    if losses > MAX_LOSSES_IN_A_ROW + evaluators:
                        raise AutopruneError(f"stage-0 evaluators keep dying ({losses} in a row, none scored a "
                                             f"candidate): {_cause(e)}") from None
                    self._evaluators = [e for e in self._evaluators if e is not evaluator]
                    queue.insert(0, chunk)
                    self.reconcile()  # a replacement where the node still lives
                    continue
                losses = 0
                on_scored(chunk, outcomes)
            if done or time.monotonic() - last >= RECONCILE_S:
                self.reconcile()
                last = time.monotonic()

    def close(self) -> None:
        """Stop every evaluator."""
        import ray

        for e in self._evaluators:
            ray.kill(e.handle)
        self._evaluators = []


def _cause(error: Exception) -> str:
    """The first line of what killed an evaluator (the exception its constructor raised, where it raised)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line for line in lines if "Error:" in line and not line.startswith("ray.exceptions")]
    return (raised[-1] if raised else lines[0] if lines else type(error).__name__)[:300]
