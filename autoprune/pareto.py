"""Pareto front of accuracy (max), size (min) and latency (min), and its hypervolume."""
from __future__ import annotations

from typing import Sequence

Point = Sequence[float]  # (accuracy, size_bytes, latency_ms)


def _as_minimisation(p: Point) -> tuple[float, float, float]:
    return (-float(p[0]), float(p[1]), float(p[2]))


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one."""
    ma, mb = _as_minimisation(a), _as_minimisation(b)
    return all(x <= y for x, y in zip(ma, mb)) and any(x < y for x, y in zip(ma, mb))


def pareto_indices(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points (duplicates of a front point are kept once, the first)."""
    front: list[int] = []
    for i, p in enumerate(points):
        if any(dominates(q, p) for q in points):
            continue
        if any(tuple(points[j]) == tuple(p) for j in front):
            continue
        front.append(i)
    return front


def hypervolume(points: Sequence[Point], base: Point) -> float:
    """Volume dominated by ``points``, normalised by the base model, bounded by (0 accuracy, base size, base latency).

    Each point becomes (accuracy / base accuracy, size / base size, latency / base latency); the
    reference is (0, 1, 1). So the base model itself scores 0 and a model as accurate as the base with
    no size and no latency would score 1: comparable across runs. Points no smaller or no faster than the
    base add nothing. Exact, by slicing along latency (fine for hundreds of points).
    """
    scale = [float(base[0]) or 1.0, float(base[1]) or 1.0, float(base[2]) or 1.0]
    norm = [(-float(p[0]) / scale[0], float(p[1]) / scale[1], float(p[2]) / scale[2]) for p in points]
    ref = (0.0, 1.0, 1.0)
    pts = [p for p in norm if all(x < y for x, y in zip(p, ref))]
    if not pts:
        return 0.0
    pts.sort(key=lambda p: p[2])
    volume = 0.0
    for k, p in enumerate(pts):
        z_next = pts[k + 1][2] if k + 1 < len(pts) else ref[2]
        if z_next > p[2]:
            volume += _area_2d([q[:2] for q in pts[: k + 1]], ref[:2]) * (z_next - p[2])
    return volume


def _area_2d(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    area, best_y = 0.0, ref[1]
    for x, y in sorted(points):
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area
