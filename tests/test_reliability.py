"""Failures a long search must survive: a worker node lost mid-trial, the driver killed mid-search. (``autoprune
submit`` to a ``cluster/local.sh`` cluster: tests/test_latency_target.py.)"""
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
from conftest import stop_search_midway

from autoprune.config import load_config
from autoprune.searching.controller import run_search
from autoprune.searching.results import read_trials

pytestmark = pytest.mark.slow  # minutes each: a multi-node cluster, a killed driver

TINY = ["data.max_train_samples=512", "base.epochs=1", "finetune.batch_size=64", "latency.batch_size=8",
        "latency.threads=1", "latency.repeats=30", "latency.reference_repeats=30", "resources.cpu=1",
        "space.criteria=[l1]", "searcher.name=random", "searcher.warm_start=0"]


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    return tmp_path_factory.mktemp("bases") / "resnet20.pt"


@pytest.fixture
def fresh_ray():
    ray.shutdown()  # other modules leave a local instance running
    yield
    ray.shutdown()


def trial_checkpoints(run_dir: Path) -> dict[str, int]:
    """Trial directory -> number of checkpoints Tune has persisted for it."""
    return {t.name: len(list(t.glob("checkpoint_*"))) for t in run_dir.glob("tune-*/trial_*")}


def test_worker_node_loss_resumes_the_trial_on_another_node(tmp_path, base_path, fresh_ray):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    run_dir = tmp_path / "run"
    config = load_config(None, [*TINY, f"base.checkpoint={base_path}", "trials=2", "concurrency=2",
                                "finetune.epochs=8", "max_failures=2"])
    killed = threading.Event()

    def kill_a_node_mid_trial() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            counts = trial_checkpoints(run_dir)
            if len(counts) == 2 and all(c >= 1 for c in counts.values()):
                cluster.remove_node(workers[0], allow_graceful=False)
                killed.set()
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_node_mid_trial, daemon=True)
    killer.start()
    try:
        summary = run_search(config, run_dir, echo=lambda m: None)
    finally:
        killer.join(timeout=5)
        ray.shutdown()
        cluster.shutdown()
    assert killed.is_set(), "no trial checkpointed before the end"
    rows = read_trials(run_dir).to_pylist()
    assert len(rows) == 2 and len({r["trial_id"] for r in rows}) == 2  # every trial exactly once
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    resumed = [r for r in rows if r["resumed_from_epoch"] is not None]
    assert resumed and all(1 <= r["resumed_from_epoch"] < 8 for r in resumed)
    assert summary.finished == 2


def test_driver_crash_then_resume_completes_without_rerunning_or_losing_trials(tmp_path, base_path, fresh_ray):
    run_dir = tmp_path / "run"
    # the driver and everything it started die at once
    stop_search_midway(run_dir, [*TINY, f"base.checkpoint={base_path}", "trials=4", "concurrency=1",
                                 "finetune.epochs=1", "searcher.proxy_trials=0"], 2, signal.SIGKILL)
    before = {r["trial_id"]: r for r in read_trials(run_dir).to_pylist()}  # still readable: atomic writes
    assert 2 <= len(before) < 4
    config = load_config(run_dir / "config.yaml")
    lines: list[str] = []
    run_search(config, run_dir, resume=True, echo=lines.append)
    after = {r["trial_id"]: r for r in read_trials(run_dir).to_pylist()}
    assert len(after) == 4 and set(before) <= set(after)
    assert all(after[t]["finished_at"] == before[t]["finished_at"] for t in before)
    assert all(r["status"] == "ok" for r in after.values())
    points = {(r["criterion"], *sorted((k, v) for k, v in r.items() if k.startswith("ratio:"))) for r in after.values()}
    assert len(points) == 4  # the resumed study proposed only new points
