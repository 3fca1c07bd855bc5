import pytest

from autoprune import AutopruneError
from autoprune.results import ResultsStore, read_trials


def row(i, **kw):
    return {"trial_id": f"t{i}", "status": "ok", "searcher": "nsga2", "criterion": "l1", "ratio:conv1": 0.5,
            "accuracy": 0.8, "size_bytes": 1000, "latency_ms": 1.0, "feasible": True, **kw}


def test_rows_are_appended_once_per_trial_and_survive_reopening(tmp_path):
    store = ResultsStore(tmp_path, ["conv1", "layer1.0.conv1"])
    store.append(row(1))
    store.append(row(2, status="failed", error="NaN"))
    store.append(row(1, accuracy=0.85))  # the same trial again replaces, never duplicates
    table = read_trials(tmp_path)
    assert table.num_rows == 2
    for col in ("trial_id", "status", "error", "searcher", "criterion", "ratio:conv1", "ratio:layer1.0.conv1",
                "accuracy", "test_accuracy", "params", "size_bytes", "macs", "latency_ms", "latency_iqr_ms",
                "feasible", "base_accuracy", "base_latency_ms", "seconds_prune", "seconds_finetune",
                "seconds_measure", "host"):
        assert col in table.schema.names, col
    reopened = ResultsStore(tmp_path, ["conv1", "layer1.0.conv1"])
    assert "t1" in reopened and {r["trial_id"]: r["accuracy"] for r in reopened.rows}["t1"] == 0.85
    assert [p.name for p in tmp_path.iterdir()] == ["trials.parquet"]  # no temporary files left


def test_missing_and_corrupt_results(tmp_path):
    with pytest.raises(AutopruneError, match="trials.parquet does not exist"):
        read_trials(tmp_path)
    (tmp_path / "trials.parquet").write_bytes(b"PAR1 broken")
    with pytest.raises(AutopruneError, match="is unreadable"):
        read_trials(tmp_path)
