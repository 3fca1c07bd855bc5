"""Feasibility first: what the search space can reach, and the constraints it can never meet.

The space's corners (every group at its highest ratio: the smallest model; at its midpoint; at its
lowest ratio: the largest) are pruned (structure only: weights do not change MACs, params, size or
latency) and measured. A constraint on those metrics that even the best corner violates is refused
before any trial runs.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autoprune.config import Constraint
from autoprune.errors import AutopruneError
from autoprune.measure.latency import Meter
from autoprune.measure.metrics import count_macs, count_params, serialized_size
from autoprune.pruning import prune
from autoprune.pruning.policy import Policy
from autoprune.pruning.structural import RECORD_ATTR
from autoprune.searching.space import SearchSpace

STATIC = ("macs", "params", "size_bytes", "latency_ms")  # what a structure alone decides


def corner_policies(space: SearchSpace) -> dict[str, Policy]:
    """The smallest, uniform-midpoint and largest models of the space."""
    def at(pick: Any) -> Policy:
        return Policy({p.group: pick(p) for p in space.params}, "l1", space.round_to, list(space.ignore),
                      space.small_step)

    return {"smallest": at(lambda p: p.high), "midpoint": at(lambda p: p.snap((p.low + p.high) / 2)),
            "largest": at(lambda p: p.low)}


def space_report(base: nn.Module, example_input: torch.Tensor, space: SearchSpace, meter: Meter) -> list[dict[str, Any]]:
    """One row per corner (and the base): MACs, params, size and latency on the target."""
    shape = tuple(example_input.shape[1:])
    rows = [{"model": "base", "macs": count_macs(base, shape), "params": count_params(base),
             "size_bytes": serialized_size(base), "latency_ms": meter.reference().latency_ms}]
    for name, policy in corner_policies(space).items():
        pruned = prune(base, policy, example_input)
        channels = getattr(pruned, RECORD_ATTR).channels_after()
        rows.append({"model": name, "macs": count_macs(pruned, shape), "params": count_params(pruned),
                     "size_bytes": serialized_size(pruned), "latency_ms": meter.measure(pruned, channels).latency_ms})
    return rows


def format_report(rows: list[dict[str, Any]]) -> str:
    base = rows[0]
    lines = [f"{'model':>9s} {'MACs':>14s} {'params':>12s} {'size KB':>10s} {'latency ms':>11s} {'x base lat':>10s}"]
    for r in rows:
        lines.append(f"{r['model']:>9s} {r['macs']:>14,d} {r['params']:>12,d} {r['size_bytes'] / 1024:>10.1f} "
                     f"{r['latency_ms']:>11.3f} {r['latency_ms'] / base['latency_ms']:>10.2f}")
    return "\n".join(lines)


def check_constraints(rows: list[dict[str, Any]], constraints: list[Constraint], latency_hint: str = "") -> None:
    """Refuse a constraint on a structural metric that no model of the space can meet, naming it (with
    ``latency_hint`` appended for a latency constraint)."""
    base = {k: float(v) for k, v in rows[0].items() if k != "model"}
    corners = rows[1:]
    for c in constraints:
        if c.metric not in STATIC:
            continue
        bound = c.bound(base)
        values = [float(r[c.metric]) for r in corners]
        best = min(values) if c.op == "<=" else max(values)
        if c.violation({c.metric: best}, base) > 0:
            which = "smallest" if c.op == "<=" else "largest"
            raise AutopruneError(f"constraint '{c.text}' cannot be met: the {which} model of the search space has "
                                 f"{c.metric} {best:,.6g} (bound {bound:,.6g}); widen space.ratio or relax it"
                                 + (latency_hint if c.metric == "latency_ms" else ""))
