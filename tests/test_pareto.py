import random

import pytest

from autoprune.pareto import dominates, hypervolume, pareto_indices


def test_dominance_directions():
    assert dominates((0.9, 10, 1), (0.8, 10, 1))      # more accurate
    assert dominates((0.9, 5, 1), (0.9, 10, 1))       # smaller
    assert dominates((0.9, 10, 1), (0.9, 10, 2))      # faster
    assert not dominates((0.9, 10, 1), (0.9, 10, 1))
    assert not dominates((0.9, 10, 2), (0.8, 5, 1))


def test_front_is_non_dominated_and_holds_every_non_dominated_point():
    rng = random.Random(0)
    for _ in range(20):
        pts = [(rng.random(), rng.randint(1, 20), rng.random()) for _ in range(40)]
        front = set(pareto_indices(pts))
        for i in front:
            assert not any(dominates(pts[j], pts[i]) for j in range(len(pts)))
        for i in set(range(len(pts))) - front:
            assert any(dominates(pts[j], pts[i]) for j in range(len(pts))) or pts[i] in [pts[j] for j in front]


def test_hypervolume_is_normalised_by_the_base():
    base = (0.8, 100, 10)
    assert hypervolume([base], base) == 0.0
    assert hypervolume([(0.8, 50, 5)], base) == pytest.approx(0.25)
    assert hypervolume([(0.4, 50, 5)], base) == pytest.approx(0.125)
    # two boxes overlapping in the (0.4, 50, 5) box
    two = hypervolume([(0.8, 50, 5), (0.4, 25, 2.5)], base)
    assert two == pytest.approx(0.25 + 0.5 * 0.75 * 0.75 - 0.5 * 0.5 * 0.5)
    assert hypervolume([(0.9, 120, 5)], base) == 0.0  # bigger than the base: adds nothing


def test_hypervolume_never_falls_when_points_are_added():
    rng = random.Random(1)
    base = (0.9, 1000, 10)
    pts, last = [], 0.0
    for _ in range(30):
        pts.append((rng.uniform(0.5, 0.9), rng.uniform(100, 1000), rng.uniform(1, 10)))
        hv = hypervolume(pts, base)
        assert hv >= last - 1e-12
        last = hv
