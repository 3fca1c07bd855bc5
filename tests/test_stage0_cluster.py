"""The stage-0 engine on a cluster: evaluators on every node with room, on a node that joins mid-search, none lost
with a node; and a search stopped mid-stage-0 resumes without scoring any candidate twice."""
import random
import signal
import time

import pytest
import ray
from conftest import stop_search_midway

from autoprune.config import load_config
from autoprune.pruning import checkpoint
from autoprune.pruning.policy import discover
from autoprune.searching.base_training import PACKAGED_BASES
from autoprune.searching.controller import run_search
from autoprune.searching.results import read_trials
from autoprune.searching.space import RatioParam, SearchSpace
from autoprune.searching.stage0 import EvaluatorPool, Stage0Settings
from autoprune.tasks.classification import ClassificationTask, Recipe

pytestmark = pytest.mark.slow  # a multi-node cluster; a killed driver


@pytest.fixture
def fresh_ray():
    ray.shutdown()
    yield
    ray.shutdown()


def test_evaluators_spread_over_nodes_follow_a_joining_node_and_lose_nothing_with_a_lost_one(embedded, fresh_ray,
                                                                                             monkeypatch):
    from ray.cluster_utils import Cluster

    import autoprune.searching.stage0.pool as pool_module
    from autoprune.searching.stage0.evaluator import Stage0Evaluator

    class Unhurried(Stage0Evaluator):  # defined here: Ray ships it by value
        """Each chunk takes at least half a second, so the nodes removed below hold chunks in flight on any CPU."""

        def score_many(self, points):
            time.sleep(0.5)
            return super().score_many(points)

    monkeypatch.setattr(pool_module, "Stage0Evaluator", Unhurried)

    base = checkpoint.load(PACKAGED_BASES / "resnet20_embedded.pt").build().eval()
    task = ClassificationTask(embedded, Recipe(proxy_samples=64))
    groups = discover(base, task.example_input())
    space = SearchSpace(tuple(RatioParam(g.name, g.channels, 0.0, 0.7, 0.1) for g in groups), ("l1",))
    rng = random.Random(0)
    points = [{**{p.group: rng.choice(p.grid()) for p in space.params}, "criterion": "l1"} for _ in range(16)]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address)
    try:
        pool = EvaluatorPool(base, task, space, Stage0Settings(bn_batches=1), cpus=1.0, chunk=1)
        pool.reconcile()
        assert sorted(e.node for e in pool._evaluators) == sorted(w.node_id for w in workers)  # one per worker
        seen: list[int] = []
        events: dict[str, str] = {}

        def on_scored(chunk, outcomes):
            seen.extend(points.index(p) for p in chunk)
            assert all(o.error is None for o in outcomes)
            if len(seen) == 2:
                events["joined"] = cluster.add_node(num_cpus=1).node_id
            if len(seen) == 8 and "joined" in events and events["joined"] in {e.node for e in pool._evaluators}:
                # every evaluator but the one whose chunk just returned is busy: the first two nodes hold at least
                # one chunk in flight when they go
                events["grown"] = "yes"
                for worker in workers:
                    cluster.remove_node(worker, allow_graceful=False)

        pool.map(points, on_scored)
        assert events.get("grown") == "yes"  # the node that joined got an evaluator while map ran
        assert sorted(seen) == list(range(len(points)))  # each candidate exactly once, the lost nodes' included
        assert pool.lost >= 1 and pool.resent >= 1
        lost = {w.node_id for w in workers}
        for _ in range(600):  # until the cluster reports them dead (seconds)
            if not lost & {n["NodeID"] for n in ray.nodes() if n["Alive"]}:
                break
            time.sleep(0.1)
        pool.reconcile()
        assert [e.node for e in pool._evaluators] == [events["joined"]]
        pool.close()
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_search_killed_mid_stage0_resumes_without_rescoring(tmp_path, fresh_ray):
    run_dir = tmp_path / "run"
    sets = [f"base.checkpoint={tmp_path / 'base.pt'}", "searcher.proxy_trials=48", "searcher.population=8",
            "trials=1", "finetune.epochs=0.2", "latency.repeats=30", "latency.reference_repeats=30",
            "latency.calibration=2", "searcher.proxy_samples=128", "searcher.proxy_batches=2"]
    stop_search_midway(run_dir, sets, 12, signal.SIGKILL)
    before = {r["trial_id"]: r for r in read_trials(run_dir).to_pylist() if r["stage"] == "proxy"}
    assert 8 <= len(before) < 48
    run_search(load_config(run_dir / "config.yaml"), run_dir, resume=True, echo=lambda _: None)
    after = [r for r in read_trials(run_dir).to_pylist() if r["stage"] == "proxy"]
    assert set(before) <= {r["trial_id"] for r in after}
    policies = [(r["criterion"], *sorted((k, v) for k, v in r.items() if k.startswith("ratio:"))) for r in after]
    assert len(policies) == len(set(policies))  # no candidate scored twice
    assert len(after) == 48  # the stage-0 budget spent, a row whose tell was lost counted once
