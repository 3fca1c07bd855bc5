"""End-to-end searches in Ray local mode on tiny data."""
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from autoprune import checkpoint
from autoprune.config import load_config
from autoprune.controller import MARKER, run_search
from autoprune.pareto import dominates
from autoprune.results import read_trials
from conftest import stop_search_midway

TINY = ["data.max_train_samples=256", "base.epochs=1", "finetune.epochs=0.5", "finetune.batch_size=64",
        "latency.batch_size=8", "latency.threads=1", "concurrency=2", "resources.cpu=1",
        "space.criteria=[l1, bn_scale]", "searcher.population=4", "searcher.startup_trials=3",
        "searcher.warm_start=2"]


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    return tmp_path_factory.mktemp("bases") / "resnet20.pt"


def search(tmp_path, base_path, *overrides, resume=False, run_dir=None):
    config = load_config(None, [*TINY, f"base.checkpoint={base_path}", *overrides])
    lines = []
    summary = run_search(config, run_dir or tmp_path / "run", resume=resume, echo=lines.append)
    return summary, lines


def objectives(r):
    return (r["accuracy"], r["size_bytes"], r["latency_ms"])


@pytest.fixture(scope="module")
def nsga2_run(tmp_path_factory, base_path):
    return search(tmp_path_factory.mktemp("nsga2"), base_path, "searcher.name=nsga2", "trials=6")


@pytest.fixture(scope="module")
def tpe_run(tmp_path_factory, base_path):
    return search(tmp_path_factory.mktemp("tpe"), base_path, "searcher.name=tpe", "trials=6")


@pytest.mark.parametrize("searcher", ["nsga2", "tpe"])
def test_search_end_to_end(request, searcher):
    summary, lines = request.getfixturevalue(f"{searcher}_run")
    run = Path(summary.run_dir.path)
    rows = read_trials(run).to_pylist()
    assert len(rows) == 6 and len({r["trial_id"] for r in rows}) == 6
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert all(r["searcher"] == searcher and r["criterion"] in ("l1", "bn_scale") for r in rows)
    schema = pq.read_schema(run / "trials.parquet").names
    assert "ratio:conv1" in schema and "ratio:layer3.0.conv2" in schema
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["size_bytes"] <= r["base_size_bytes"] and r["latency_ms"] > 0
        assert r["params"] <= r["base_params"] and r["host"]
    front = read_trials(run, "front.parquet").to_pylist()
    feasible = [r for r in rows if r["feasible"]]
    for f in front:
        assert not any(dominates(objectives(r), objectives(f)) for r in feasible)
    for r in feasible:  # every non-dominated feasible trial is on the front (or equals one there)
        if not any(dominates(objectives(o), objectives(r)) for o in feasible):
            assert objectives(r) in [objectives(f) for f in front]
    assert (run / "pareto.png").stat().st_size > 1000 and (run / MARKER).is_file()
    # the trial checkpoint rebuilds the pruned model with the recorded accuracy's structure
    best = front[0]
    model = checkpoint.load(run / best["checkpoint"]).build()
    assert sum(p.numel() for p in model.parameters()) == best["params"]
    assert any("front" in line for line in lines)


@pytest.mark.slow
def test_constraint_violators_never_enter_the_front(tmp_path, base_path):
    summary, lines = search(tmp_path, base_path, "trials=4", "searcher.name=random",
                            "constraints=['size_bytes <= base * 0.7']")
    rows = read_trials(summary.run_dir).to_pylist()
    front_ids = {r["trial_id"] for r in summary.front.rows}
    for r in rows:
        assert r["feasible"] == (r["size_bytes"] <= 0.7 * r["base_size_bytes"])
        if not r["feasible"]:
            assert r["trial_id"] not in front_ids


def test_no_feasible_candidate_ends_with_an_empty_front(tmp_path, base_path):
    summary, lines = search(tmp_path, base_path, "trials=2", "searcher.name=uniform",
                            "constraints=['latency_ms <= 0.000001']")
    assert summary.finished == 2 and summary.front.rows == []
    assert read_trials(summary.run_dir, "front.parquet").num_rows == 0
    assert any("no trial met every constraint" in line for line in lines)


def test_a_failing_trial_is_recorded_and_the_search_completes(tmp_path, base_path):
    summary, _ = search(tmp_path, base_path, "trials=3", "searcher.name=random", "finetune.lr=1e12")
    rows = read_trials(summary.run_dir).to_pylist()
    assert len(rows) == 3
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and all("diverged" in r["error"] for r in failed)


@pytest.mark.slow
def test_resume_after_a_stop_mid_search_runs_only_the_remaining_trials(tmp_path, base_path):
    import signal

    run = tmp_path / "run"
    # the user presses Ctrl-C mid-search
    stop_search_midway(run, [*TINY, f"base.checkpoint={base_path}", "trials=6", "concurrency=1"], 2, signal.SIGINT)
    before = {r["trial_id"]: r for r in read_trials(run).to_pylist()}
    assert 2 <= len(before) < 6
    summary, lines = search(tmp_path, base_path, "trials=6", "concurrency=1", resume=True, run_dir=run)
    after = {r["trial_id"]: r for r in read_trials(run).to_pylist()}
    assert len(after) == 6 and set(before) <= set(after)
    assert all(after[t]["finished_at"] == before[t]["finished_at"] for t in before)  # not re-run
    assert any(f"{6 - len(before)} trials to run ({len(before)} already finished)" in line for line in lines)


def test_resume_refuses_a_directory_autoprune_did_not_create(tmp_path, base_path):
    from autoprune import AutopruneError

    (tmp_path / "foreign").mkdir()
    with pytest.raises(AutopruneError, match="not an autoprune run directory"):
        search(tmp_path, base_path, "trials=1", resume=True, run_dir=tmp_path / "foreign")


def test_export_reproduces_the_pruned_model_and_its_test_accuracy(nsga2_run, tmp_path):
    import json

    import autoprune
    from autoprune.export import export_trial, pick_trial

    run = Path(nsga2_run[0].run_dir.path)
    row = pick_trial(run, "knee")
    assert row["trial_id"] in {r["trial_id"] for r in read_trials(run, "front.parquet").to_pylist()}
    metrics = export_trial(run, row, tmp_path / "export")
    out = tmp_path / "export"
    assert sorted(p.name for p in out.iterdir()) == ["MANIFEST.sha256", "README.md", "metrics.json", "model.pt",
                                                   "model.pt2", "policy.json"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_accuracy"] == row["test_accuracy"] == metrics["test_accuracy"]
    for key in ("latency_ms", "size_bytes", "params", "macs", "input_shape", "preprocess"):
        assert key in saved
    assert saved["input_shape"] == ["batch", 1, 28, 28] and len(saved["preprocess"]["mean"]) == 1
    module = autoprune.load(out)
    program = torch.export.load(str(out / "model.pt2")).module()
    for batch in (1, 5):
        x = torch.randn(batch, 1, 28, 28)
        torch.testing.assert_close(program(x), module(x), rtol=1e-5, atol=1e-5)
    raw = torch.load(out / "model.pt", weights_only=True)
    assert raw["prune_record"]["policy"] == json.loads((out / "policy.json").read_text())
    # a tampered file is refused
    from autoprune import AutopruneError

    data = bytearray((out / "model.pt").read_bytes())
    data[-100] ^= 0xFF
    (out / "model.pt").write_bytes(bytes(data))
    with pytest.raises(AutopruneError, match="model.pt does not match its checksum"):
        autoprune.load(out)


def test_export_picks_and_limits(nsga2_run):
    from autoprune import AutopruneError
    from autoprune.export import pick_trial

    run = Path(nsga2_run[0].run_dir.path)
    front = read_trials(run, "front.parquet").to_pylist()
    assert pick_trial(run, "max-accuracy")["accuracy"] == max(r["accuracy"] for r in front)
    assert pick_trial(run, "min-latency")["latency_ms"] == min(r["latency_ms"] for r in front)
    assert pick_trial(run, "min-size")["size_bytes"] == min(r["size_bytes"] for r in front)
    any_id = read_trials(run).to_pylist()[0]["trial_id"]
    assert pick_trial(run, f"trial:{any_id}")["trial_id"] == any_id
    with pytest.raises(AutopruneError, match="meets the requested limits"):
        pick_trial(run, "knee", max_latency_ms=1e-9)
    with pytest.raises(AutopruneError, match="has no trial 'zzz'"):
        pick_trial(run, "trial:zzz")
    with pytest.raises(AutopruneError, match="--pick must be one of"):
        pick_trial(run, "best")


@pytest.mark.slow
def test_early_stopped_trials_never_pollute_the_front(tmp_path, base_path):
    summary, _ = search(tmp_path, base_path, "trials=6", "searcher.name=random", "scheduler=asha",
                        "finetune.epochs=3", "data.max_train_samples=128")
    rows = read_trials(summary.run_dir).to_pylist()
    assert len(rows) == 6 and {r["status"] for r in rows} <= {"ok", "stopped"}
    front_ids = {r["trial_id"] for r in summary.front.rows}
    assert all(r["trial_id"] not in front_ids for r in rows if r["status"] == "stopped")


@pytest.mark.slow
def test_run_directory_behind_a_filesystem_uri(tmp_path, base_path):
    """Shared storage goes through pyarrow filesystems: a file:// URI exercises the same path as s3:// or gs://."""
    from autoprune.cli import main

    uri = (tmp_path / "shared" / "run").as_uri()
    summary, _ = search(tmp_path, base_path, "trials=2", "searcher.name=uniform", run_dir=uri)
    assert summary.run_dir.uri == uri and summary.finished == 2
    local = tmp_path / "shared" / "run"
    assert {"trials.parquet", "front.parquet", "pareto.png", "config.yaml", MARKER} <= {p.name for p in local.iterdir()}
    assert read_trials(uri).num_rows == 2
    assert main(["front", uri]) == 0
    assert main(["export", uri, "--pick", "max-accuracy", "--out", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "model.pt2").is_file()


def test_knee_is_the_point_nearest_the_ideal():
    from autoprune.export import knee

    rows = [{"accuracy": 0.9, "size_bytes": 100, "latency_ms": 10.0},   # accurate but big and slow
            {"accuracy": 0.85, "size_bytes": 40, "latency_ms": 4.0},   # balanced
            {"accuracy": 0.5, "size_bytes": 10, "latency_ms": 1.0}]    # tiny but poor
    assert knee(rows) is rows[1]
