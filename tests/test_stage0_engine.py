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


class ScriptedSearcher:
    """Asks its stage-0 points, then (once all are told) its fine-tune points; records what it is told."""

    def __init__(self, space, proxies, fine_tunes):
        from autoprune.objectives import DEFAULT_OBJECTIVES

        self.space, self.seed, self.warm_start, self.objectives = space, 0, 0, DEFAULT_OBJECTIVES
        self.name, self.resumed, self.stop_reason = "scripted", False, None
        self.queue = [{**p, "stage": "proxy"} for p in proxies] + [dict(p) for p in fine_tunes]
        self.asked, self.told = {}, {}

    def ask(self):
        if self.queue and self.queue[0].get("stage") != "proxy" and len(self.told) < len(self.asked):
            return "wait"
        if not self.queue:
            return None
        sid = len(self.asked)
        self.asked[sid] = self.queue.pop(0)
        return sid, self.asked[sid]

    def tell(self, sid, outcome):
        self.told[sid] = outcome


class FakePool:
    size, started, lost = 1, 1, 0

    def __init__(self):
        self.scored = []

    def map(self, points, on_scored):
        from autoprune.searching.stage0.evaluator import Scored

        self.scored += points
        on_scored(points, [Scored({"proxy_accuracy": 0.5, "params": 1, "size_bytes": 1, "macs": 1.0,
                                   "channels": {}, "criterion_used": p["criterion"]}) for p in points])


class FakeKeeper:
    """Latency: 10 ms per unit of mean ratio kept (a point at ratio 0.5 everywhere: 5 ms)."""

    def __init__(self, space):
        self.space, self.measured = space, []

    def measure(self, point):
        from autoprune.measure.latency import LatencyReport

        self.measured.append(point)
        ms = 10 * sum(1 - point[g] for g in self.space.groups) / len(self.space.groups)
        return LatencyReport(ms, 0.0, ms / 10, ms, 10.0, 10.0, ms - 1.0)

    def collect(self):
        pass

    def sample(self, batch):
        pass


def test_a_fine_tune_measured_over_the_latency_bound_is_skipped_not_fine_tuned(tmp_path):
    from autoprune.config import Constraint
    from autoprune.searching.results import ResultsStore
    from autoprune.searching.stage0.budget import Budget, Limit
    from autoprune.searching.stage0.engine import Stage0Engine

    space = SearchSpace((RatioParam("a", 16, 0.0, 0.8, 0.1), RatioParam("b", 16, 0.0, 0.8, 0.1)), ("l1",))
    point = lambda r: {"a": r, "b": r, "criterion": "l1"}  # noqa: E731
    constraint = Constraint.parse("latency_ms <= base * 0.5", "constraints")
    budget = Budget(space, None, [Limit("latency_ms", 5.0, constraint.text)])
    budget.predict = lambda p: {"latency_ms": 4.0}  # every point predicted within: only the measurement tells
    store = ResultsStore(tmp_path, space.groups)
    inner = ScriptedSearcher(space, [point(0.3), point(0.6)], [point(0.3), point(0.6)])
    keeper = FakeKeeper(space)
    engine = Stage0Engine(inner, FakePool(), store, budget, [constraint], {"latency_ms": 10.0}, batch=4,
                          echo=lambda line: None, keeper=keeper)
    sid, fine_tune = engine.ask()
    assert fine_tune == point(0.6) and keeper.measured == [point(0.3), point(0.6)]  # 0.3 keeps 7 ms: over 5
    assert inner.told[2].state == "failed" and 3 not in inner.told  # the one over is failed, the other asked
    skipped = [r for r in store.rows if r["status"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["ratio:a"] == 0.3 and skipped[0]["latency_ms"] == pytest.approx(7.0)
    assert skipped[0]["latency_source"] == "measured" and "breaks 'latency_ms <= base * 0.5'" in skipped[0]["error"]
    assert engine.ask() is None

    # resumed: the point measured over is failed again without another measurement or another row
    again = ScriptedSearcher(space, [point(0.3), point(0.6)], [point(0.3)])
    keeper.measured.clear()
    pool = FakePool()
    resumed = Stage0Engine(again, pool, ResultsStore(tmp_path, space.groups), budget, [constraint],
                           {"latency_ms": 10.0}, batch=4, echo=lambda line: None, keeper=keeper)
    assert resumed.ask() is None and keeper.measured == [] and again.told[2].state == "failed"
    assert pool.scored == [] and again.told[0].state == again.told[1].state == "ok"  # told from the rows
    rows = ResultsStore(tmp_path, space.groups).rows
    assert sum(r["status"] == "skipped" for r in rows) == 1 and sum(r["stage"] == "proxy" for r in rows) == 2


def test_one_policy_asked_twice_in_a_batch_is_scored_once_and_told_to_both(tmp_path):
    from autoprune.searching.results import ResultsStore
    from autoprune.searching.stage0.budget import Budget
    from autoprune.searching.stage0.engine import Stage0Engine

    space = SearchSpace((RatioParam("a", 16, 0.0, 0.8, 0.1),), ("l1",))
    inner = ScriptedSearcher(space, [{"a": 0.3, "criterion": "l1"}] * 2 + [{"a": 0.5, "criterion": "l1"}], [])
    pool = FakePool()
    budget = Budget(space, None, [])
    budget.predict = lambda p: {"latency_ms": 5.0}
    engine = Stage0Engine(inner, pool, ResultsStore(tmp_path, space.groups), budget, [],
                          {"latency_ms": 10.0}, batch=4, echo=lambda line: None)
    assert engine.ask() is None
    assert [p["a"] for p in pool.scored] == [0.3, 0.5] and sorted(inner.told) == [0, 1, 2]


def test_a_time_budget_spent_in_stage_0_scores_no_further_batch_and_says_so(tmp_path, monkeypatch):
    from autoprune.searching.results import ResultsStore
    from autoprune.searching.stage0 import engine as engine_module
    from autoprune.searching.stage0.budget import Budget
    from autoprune.searching.stage0.engine import Stage0Engine

    space = SearchSpace((RatioParam("a", 16, 0.0, 0.8, 0.1),), ("l1",))
    inner = ScriptedSearcher(space, [{"a": round(0.1 * i, 1), "criterion": "l1"} for i in range(8)],
                             [{"a": 0.5, "criterion": "l1"}])
    now = [100.0]
    monkeypatch.setattr(engine_module.time, "monotonic", lambda: now[0])

    class SlowPool(FakePool):
        def map(self, points, on_scored):
            super().map(points, on_scored)
            now[0] += 6.0  # each batch takes 6 s of the search's clock

    pool, lines = SlowPool(), []
    budget = Budget(space, None, [])
    budget.predict = lambda p: {"latency_ms": 5.0}
    engine = Stage0Engine(inner, pool, ResultsStore(tmp_path, space.groups), budget, [], {"latency_ms": 10.0},
                          batch=2, echo=lines.append, time_budget_s=10.0)
    assert engine.ask() is None  # no fine-tune either: the budget is spent
    assert len(pool.scored) == 4  # two batches: 0 s and 6 s in; at 12 s none
    assert lines[-1] == "time budget of 10 s reached during stage 0 after 4 candidates this run: no further " \
                        "candidate is scored"
    assert engine.stop_reason == lines[-1]
