"""``autoprune submit`` / ``status`` / ``logs`` of a Ray Job on a ``cluster/local.sh`` multi-node cluster (``up``,
``down``), with a latency target on another node: one advertising a custom resource."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from conftest import submit_and_wait

from autoprune.searching.results import read_trials

pytestmark = pytest.mark.slow  # a three-node cluster and a Ray Job: a minute or two

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.max_train_samples=256", "base.epochs=1", "finetune.batch_size=64", "finetune.epochs=0.3",
        "latency.batch_size=8", "latency.threads=1", "latency.repeats=30", "latency.reference_repeats=30",
        "resources.cpu=1", "space.criteria=[l1]", "searcher.name=uniform", "searcher.grid=2", "trials=2",
        "concurrency=2"]


def test_candidates_are_timed_on_the_node_advertising_the_latency_target(tmp_path):
    ray.shutdown()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY": str(bin_dir / "ray"), "AUTOPRUNE_RAY_TEMP_DIR": f"/tmp/ap-lat-{os.getpid()}",
           "AUTOPRUNE_LATENCY_NODE": "edge_box"}
    up = subprocess.run(["bash", str(ROOT / "cluster/local.sh"), "up", "2"], env=env, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    assert "latency node: resource 'edge_box'" in up.stdout
    base = f"base.checkpoint={tmp_path / 'base.pt'}"
    try:
        status, logs = submit_and_wait(tmp_path / "run", [*TINY, base, "latency.target=edge_box"])
        assert status == "SUCCEEDED", logs[-3000:]
        assert "2 trials finished" in logs
        # the actor reports the node it ran on; that node advertises edge_box (the only node that does)
        assert "on node" in logs and "resources: edge_box" in logs, logs[-3000:]
        rows = read_trials(tmp_path / "run").to_pylist()
        assert len(rows) == 2 and all(r["status"] == "ok" and r["latency_ms"] > 0 for r in rows)
        status, logs = submit_and_wait(tmp_path / "run2", [*TINY, base, "latency.target=phone"])
        assert status == "FAILED"
        assert "config key 'latency.target'" in logs and "'phone'" in logs and "Traceback" not in logs
    finally:
        subprocess.run(["bash", str(ROOT / "cluster/local.sh"), "down"], env=env, capture_output=True)
