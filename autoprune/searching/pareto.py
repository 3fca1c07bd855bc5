"""Pareto dominance over two or three objectives of mixed directions, and the hypervolume."""
from __future__ import annotations

from collections.abc import Sequence

from autoprune.objectives import Objective

Point = Sequence[float]  # one value per objective, in the objectives' order


def dominates(a: Point, b: Point, objectives: Sequence[Objective]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one."""
    la = [o.loss(x) for o, x in zip(objectives, a, strict=True)]
    lb = [o.loss(x) for o, x in zip(objectives, b, strict=True)]
    return all(x <= y for x, y in zip(la, lb)) and any(x < y for x, y in zip(la, lb))


def pareto_indices(points: Sequence[Point], objectives: Sequence[Objective]) -> list[int]:
    """Indices of the non-dominated points (duplicates of a front point are kept once, the first)."""
    front: list[int] = []
    for i, p in enumerate(points):
        if any(dominates(q, p, objectives) for q in points):
            continue
        if any(tuple(points[j]) == tuple(p) for j in front):
            continue
        front.append(i)
    return front


def hypervolume(points: Sequence[Point], base: Point, objectives: Sequence[Objective]) -> float:
    """Volume dominated by ``points``, each objective normalised by the base model's value.

    Each value becomes ``value / base`` (``Objective.normalised_loss``) against the reference 0 for a
    maximised objective and 1 for a minimised one: with the default (accuracy, size, latency) the base
    model itself scores 0 and a model as accurate as the base with no size and no latency scores 1, so
    hypervolumes compare across runs. Points no better than the reference in some objective add nothing.
    Exact, by slicing (fine for hundreds of points).
    """
    ref = tuple(o.reference for o in objectives)
    norm = [tuple(o.normalised_loss(v, b) for o, v, b in zip(objectives, p, base, strict=True)) for p in points]
    inside = [p for p in norm if all(x < r for x, r in zip(p, ref))]
    return _volume(inside, ref) if inside else 0.0


def _volume(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    """Volume dominated by ``points`` (each strictly below ``ref``): sweep the last coordinate, recurse on the rest."""
    if len(ref) == 2:
        return _area_2d(points, ref)
    pts = sorted(points, key=lambda p: p[-1])
    volume = 0.0
    for k, p in enumerate(pts):
        upper = pts[k + 1][-1] if k + 1 < len(pts) else ref[-1]
        if upper > p[-1]:
            volume += _volume([q[:-1] for q in pts[: k + 1]], ref[:-1]) * (upper - p[-1])
    return volume


def _area_2d(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    area, best_y = 0.0, ref[1]
    for x, y in sorted(points):
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area
