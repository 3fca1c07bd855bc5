import itertools
import random

import pytest

from autoprune import AutopruneError
from autoprune.objectives import DEFAULT_OBJECTIVES, OBJECTIVES, parse_objectives
from autoprune.searching.pareto import dominates, hypervolume, pareto_indices

ACC_SIZE_LAT = DEFAULT_OBJECTIVES  # max, min, min
SIZE_ACC = (OBJECTIVES["size_bytes"], OBJECTIVES["accuracy"])  # min, max
LAT_ACC_MACS = (OBJECTIVES["latency_ms"], OBJECTIVES["accuracy"], OBJECTIVES["macs"])  # min, max, min


def test_dominance_directions():
    assert dominates((0.9, 10, 1), (0.8, 10, 1), ACC_SIZE_LAT)      # more accurate
    assert dominates((0.9, 5, 1), (0.9, 10, 1), ACC_SIZE_LAT)       # smaller
    assert dominates((0.9, 10, 1), (0.9, 10, 2), ACC_SIZE_LAT)      # faster
    assert not dominates((0.9, 10, 1), (0.9, 10, 1), ACC_SIZE_LAT)
    assert not dominates((0.9, 10, 2), (0.8, 5, 1), ACC_SIZE_LAT)
    assert dominates((5, 0.9), (10, 0.9), SIZE_ACC) and dominates((10, 0.9), (10, 0.8), SIZE_ACC)
    assert not dominates((5, 0.8), (10, 0.9), SIZE_ACC) and not dominates((10, 0.9), (5, 0.8), SIZE_ACC)
    assert dominates((1, 0.9, 100), (2, 0.9, 100), LAT_ACC_MACS)
    assert not dominates((1, 0.9, 100), (2, 0.95, 100), LAT_ACC_MACS)


def brute_force_front(points, objectives):
    """Points no other point beats in one objective without losing in another."""
    def better_or_equal(a, b):
        return all((x >= y) if o.maximize else (x <= y) for o, x, y in zip(objectives, a, b))
    return {i for i, p in enumerate(points)
            if not any(better_or_equal(q, p) and q != p for q in points)}


@pytest.mark.parametrize("objectives", [ACC_SIZE_LAT, SIZE_ACC, LAT_ACC_MACS], ids=["3d", "2d", "3d-mixed"])
def test_front_is_exactly_the_non_dominated_points(objectives):
    rng = random.Random(0)
    for _ in range(20):
        # small integer grids: ties and duplicates happen
        pts = [tuple(rng.randint(0, 5) for _ in objectives) for _ in range(40)]
        front = set(pareto_indices(pts, objectives))
        expected = brute_force_front(pts, objectives)
        assert {pts[i] for i in front} == {pts[i] for i in expected}  # the same points...
        assert len(front) == len({pts[i] for i in front})             # ...each once


def test_hypervolume_is_normalised_by_the_base():
    base = (0.8, 100, 10)
    assert hypervolume([base], base, ACC_SIZE_LAT) == 0.0
    assert hypervolume([(0.8, 50, 5)], base, ACC_SIZE_LAT) == pytest.approx(0.25)
    assert hypervolume([(0.4, 50, 5)], base, ACC_SIZE_LAT) == pytest.approx(0.125)
    # two boxes overlapping in the (0.4, 50, 5) box
    two = hypervolume([(0.8, 50, 5), (0.4, 25, 2.5)], base, ACC_SIZE_LAT)
    assert two == pytest.approx(0.25 + 0.5 * 0.75 * 0.75 - 0.5 * 0.5 * 0.5)
    assert hypervolume([(0.9, 120, 5)], base, ACC_SIZE_LAT) == 0.0  # bigger than the base: adds nothing


def test_hypervolume_of_two_objectives_in_either_order():
    base = (100, 0.8)  # size, accuracy
    assert hypervolume([base], base, SIZE_ACC) == 0.0
    assert hypervolume([(50, 0.8)], base, SIZE_ACC) == pytest.approx(0.5)
    assert hypervolume([(50, 0.8), (25, 0.4)], base, SIZE_ACC) == pytest.approx(0.5 + 0.25 * 0.5)
    swapped = (OBJECTIVES["accuracy"], OBJECTIVES["size_bytes"])
    assert hypervolume([(0.8, 50), (0.4, 25)], (0.8, 100), swapped) == pytest.approx(0.5 + 0.25 * 0.5)


def test_hypervolume_matches_a_grid_count_for_mixed_directions():
    base = (10.0, 0.8, 1000.0)  # latency (min), accuracy (max), macs (min)
    rng = random.Random(3)
    pts = [(rng.uniform(1, 10), rng.uniform(0.2, 0.8), rng.uniform(100, 1000)) for _ in range(6)]
    exact = hypervolume(pts, base, LAT_ACC_MACS)
    n = 40  # count grid cells (cell centres) dominated by some point, in normalised units
    cells = 0
    for i, j, k in itertools.product(range(n), repeat=3):
        lat, acc, macs = (i + 0.5) / n, -(j + 0.5) / n, (k + 0.5) / n  # latency/base, -accuracy/base, macs/base
        if any(p[0] / 10 <= lat and -p[1] / 0.8 <= acc and p[2] / 1000 <= macs for p in pts):
            cells += 1
    assert exact == pytest.approx(cells / n ** 3, abs=0.03)


def test_hypervolume_never_falls_when_points_are_added():
    rng = random.Random(1)
    base = (0.9, 1000, 10)
    pts, last = [], 0.0
    for _ in range(30):
        pts.append((rng.uniform(0.5, 0.9), rng.uniform(100, 1000), rng.uniform(1, 10)))
        hv = hypervolume(pts, base, ACC_SIZE_LAT)
        assert hv >= last - 1e-12
        last = hv


@pytest.mark.parametrize("names, needle", [
    (["accuracy"], "two or three objectives, got 1"),
    (["accuracy", "size_bytes", "latency_ms", "macs"], "two or three objectives, got 4"),
    (["accuracy", "accuracy"], "names an objective twice"),
    (["accuracy", "flops"], "unknown objective 'flops'"),
    ("accuracy", "must be a list"),
])
def test_bad_objective_lists_name_the_key(names, needle):
    with pytest.raises(AutopruneError) as e:
        parse_objectives(names)
    assert "config key 'objectives'" in str(e.value) and needle in str(e.value) and "\n" not in str(e.value)
