"""The resident stage-0 engine: outcomes equal an in-process evaluation, and a killed evaluator loses no candidate."""
import random

import pytest
import ray

from autoprune.pruning import checkpoint, prune
from autoprune.pruning.policy import discover
from autoprune.searching.base_training import PACKAGED_BASES
from autoprune.searching.space import RatioParam, SearchSpace
from autoprune.searching.stage0 import EvaluatorPool, Stage0Evaluator, Stage0Settings
from autoprune.tasks.classification import ClassificationTask, Recipe
from autoprune.tasks.training import recalibrate_bn

SETTINGS = Stage0Settings(bn_batches=2, threads=1, seed=3)


@pytest.fixture(scope="module")
def setup(embedded):
    base = checkpoint.load(PACKAGED_BASES / "resnet20_embedded.pt").build().eval()
    task = ClassificationTask(embedded, Recipe(proxy_samples=128))
    groups = discover(base, task.example_input())
    space = SearchSpace(tuple(RatioParam(g.name, g.channels, 0.0, 0.7, 0.1) for g in groups), ("l1", "bn_scale"))
    rng = random.Random(0)
    points = [{**{p.group: rng.choice(p.grid()) for p in space.params}, "criterion": rng.choice(space.criteria)}
              for _ in range(10)]
    return base, task, space, points


def by_hand(base, task, space, point):
    """Stage 0 without the engine: prune (ranking on the spot), recalibrate, evaluate."""
    pruned = prune(base, space.policy(point), task.example_input(), task.calibration(8, seed=SETTINGS.seed))
    recalibrate_bn(pruned, task.calibration(SETTINGS.bn_batches, seed=SETTINGS.seed + 1), SETTINGS.bn_batches)
    return task.evaluate(pruned, "proxy"), {k: len(v) for k, v in pruned.autoprune_record.kept.items()}


def test_resident_evaluator_scores_as_a_fresh_pruning_does(setup):
    base, task, space, points = setup
    evaluator = Stage0Evaluator(base, task, space, SETTINGS)
    for point in points[:4]:
        scored = evaluator.score(point)
        assert scored.error is None
        accuracy, kept = by_hand(base, task, space, point)
        assert scored.metrics["proxy_accuracy"] == accuracy and scored.metrics["channels"] == kept
    assert evaluator.base_outcome()["proxy_accuracy"] == task.evaluate(base, "proxy")
    bad = evaluator.score({**points[0], "criterion": "nonsense"})
    assert bad.error is not None and "nonsense" in bad.error  # an outcome, not an exception


def test_pool_outcomes_equal_in_process_ones_and_a_killed_evaluator_loses_no_candidate(setup, ray_local):
    base, task, space, points = setup
    evaluator = Stage0Evaluator(base, task, space, SETTINGS)
    expected = {i: evaluator.score(p).metrics["proxy_accuracy"] for i, p in enumerate(points)}
    pool = EvaluatorPool(base, task, space, SETTINGS, cpus=1.0, chunk=1)
    got: dict[int, list[float]] = {}
    killed = []

    def on_scored(chunk, outcomes):
        for point, scored in zip(chunk, outcomes):
            got.setdefault(points.index(point), []).append(scored.metrics["proxy_accuracy"])
        if not killed:  # kill an evaluator while the others' chunks are in flight
            victim = pool._evaluators[-1].handle
            ray.kill(victim, no_restart=True)
            killed.append(victim)

    try:
        pool.map(points, on_scored)
        assert pool.lost >= 1 and pool.resent >= 1 and pool.size == pool.capacity()
    finally:
        pool.close()
    assert sorted(got) == list(range(len(points)))
    assert all(len(v) == 1 for v in got.values())  # each candidate handed over exactly once
    assert {i: v[0] for i, v in got.items()} == expected
