"""``finalize --against uniform``: what the search bought, measured.

The baseline every pruning search must beat is uniform pruning at the same latency. ``uniform_at_latency`` times
each uniform policy of the run's space (every grid ratio, in the finalize's meter: the runtime, threads and batch
the search timed) and takes the one whose measured latency is closest to the finalized model's; ``finalize`` then
prunes and fine-tunes it exactly as it did the chosen trial (criterion, epochs, distillation, seed) and reports both,
and the difference, in ``metrics.json`` (``against_uniform``) and the model card.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from autoprune.measure.latency import LatencyMeter
    from autoprune.pruning.policy import Policy
    from autoprune.searching.space import SearchSpace

AGAINST = ("uniform",)


@dataclass(frozen=True)
class UniformMatch:
    """The uniform ``ratio`` whose ``latency_ms`` came closest to ``target_ms``, its ``policy``, and every ratio
    timed (``timed``: ratio -> ms)."""

    ratio: float
    policy: Policy
    latency_ms: float
    target_ms: float
    timed: dict[float, float]


def uniform_at_latency(base_model: nn.Module, example: torch.Tensor, space: SearchSpace, criterion: str,
                       meter: LatencyMeter, target_ms: float) -> UniformMatch:
    """The uniform policy of ``space`` (with ``criterion``) measured closest to ``target_ms`` by ``meter``.

    Args:
        base_model: the unpruned base.
        example: one input batch (the structure does not depend on its values).
        space: the run's search space (its grids, ``round_to`` and ``small_step``).
        criterion: the channel ranking the returned policy prunes with.
        meter: times each uniform structure against the base.
        target_ms: the latency to match (the finalized model's).

    Returns:
        The closest uniform policy and what each uniform ratio measured."""
    from autoprune.pruning import prune
    from autoprune.pruning.structural import RECORD_ATTR

    timed: dict[float, float] = {}
    for ratio in sorted({r for p in space.params for r in p.grid()}):
        structure = replace(space.policy(space.uniform_point(ratio)), criterion="l1")  # the ranking is not timed
        pruned = prune(base_model, structure, example)
        timed[ratio] = meter.measure(pruned, getattr(pruned, RECORD_ATTR).channels_after()).latency_ms
    ratio = min(timed, key=lambda r: (abs(timed[r] - target_ms), r))
    return UniformMatch(ratio, space.policy(space.uniform_point(ratio, criterion)), timed[ratio], target_ms, timed)


def comparison(match: UniformMatch, final: dict[str, Any], uniform: dict[str, Any], base_ms: float,
               metric: str) -> dict[str, Any]:
    """``metrics.json``'s ``against_uniform``: the uniform model's figures (as ``final``'s), its ratio, what each
    uniform ratio measured, and the finalized model's test metric minus the uniform one's."""
    return {**uniform, metric: uniform[f"val_{metric}"], "speedup": base_ms / uniform["latency_ms"],
            "ratio": match.ratio, "criterion": match.policy.criterion,
            "timed": {f"{r:g}": ms for r, ms in match.timed.items()},
            f"test_{metric}_difference": final[f"test_{metric}"] - uniform[f"test_{metric}"]}
