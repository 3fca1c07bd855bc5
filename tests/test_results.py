import json

import pytest

from autoprune import AutopruneError
from autoprune.searching.front import write_front
from autoprune.searching.results import ResultsStore, read_trials, run_objectives


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


class FailingFileSystem:
    """The run directory's filesystem, but a write that stops halfway or a move that fails."""

    def __init__(self, fs, fails):
        self.fs, self.fails = fs, fails

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def open_output_stream(self, path, *args, **kwargs):
        stream = self.fs.open_output_stream(path, *args, **kwargs)
        if self.fails != "writing":
            return stream
        class HalfWritten:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                stream.close()

            def write(self, data):
                stream.write(data[: len(data) // 2])
                raise OSError("disk full")

        return HalfWritten()

    def move(self, src, dest):
        raise OSError("disk full")


@pytest.mark.parametrize("fails", ["writing", "moving"])
def test_a_rewrite_that_fails_midway_leaves_the_previous_rows_and_no_temporary(tmp_path, fails):
    store = ResultsStore(tmp_path, ["conv1", "layer1.0.conv1"])
    store.append(row(1))
    real = store.run.fs
    store.run.fs = FailingFileSystem(real, fails)
    with pytest.raises(OSError, match="disk full"):
        store.append(row(2))
    store.run.fs = real
    assert [r["trial_id"] for r in read_trials(tmp_path).to_pylist()] == ["t1"]
    assert [p.name for p in tmp_path.iterdir()] == ["trials.parquet"]


def test_missing_and_corrupt_results(tmp_path):
    with pytest.raises(AutopruneError, match="trials.parquet does not exist"):
        read_trials(tmp_path)
    (tmp_path / "trials.parquet").write_bytes(b"PAR1 broken")
    with pytest.raises(AutopruneError, match="is unreadable"):
        read_trials(tmp_path)


def write_marker(run, **fields):
    (run / "autoprune-run.json").write_text(json.dumps({"format": "autoprune-run", **fields}))


def test_the_run_objectives_come_from_its_marker(tmp_path):
    with pytest.raises(AutopruneError, match="not an autoprune run directory"):
        run_objectives(tmp_path)
    write_marker(tmp_path, version=1)  # before objectives were configurable: always the default three
    assert [o.name for o in run_objectives(tmp_path)] == ["accuracy", "size_bytes", "latency_ms"]
    write_marker(tmp_path, version=2, objectives=["macs", "accuracy"])
    assert [o.name for o in run_objectives(tmp_path)] == ["macs", "accuracy"]


def test_front_and_plot_follow_the_configured_objectives(tmp_path):
    write_marker(tmp_path, version=2, objectives=["accuracy", "macs"])
    base = {"base_accuracy": 0.9, "base_macs": 1000, "base_size_bytes": 100, "base_latency_ms": 1.0}
    store = ResultsStore(tmp_path, ["conv1"])
    # on (accuracy, macs): t1 and t2 trade off, t3 is dominated by t2, t4 would lead but breaks a constraint;
    # size and latency, not objectives here, would have put t3 on the front
    store.append(row(1, accuracy=0.85, macs=800, size_bytes=90, latency_ms=0.9, **base))
    store.append(row(2, accuracy=0.80, macs=400, size_bytes=90, latency_ms=0.9, **base))
    store.append(row(3, accuracy=0.75, macs=500, size_bytes=10, latency_ms=0.1, **base))
    store.append(row(4, accuracy=0.89, macs=100, feasible=False, **base))
    store.append(row(5, status="failed", error="boom"))
    front = write_front(tmp_path)
    assert [r["trial_id"] for r in front.rows] == ["t1", "t2"]  # best accuracy first
    assert front.hypervolume == pytest.approx(0.85 / 0.9 * 0.2 + 0.80 / 0.9 * 0.4)
    assert [r["trial_id"] for r in read_trials(tmp_path, "front.parquet").to_pylist()] == ["t1", "t2"]
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_knee_follows_the_objectives_and_their_directions():
    from autoprune.deploy.export import knee
    from autoprune.objectives import OBJECTIVES

    rows = [{"accuracy": 0.9, "macs": 100, "latency_ms": 9.0},
            {"accuracy": 0.8, "macs": 40, "latency_ms": 1.0},
            {"accuracy": 0.5, "macs": 10, "latency_ms": 5.0}]
    assert knee(rows, (OBJECTIVES["accuracy"], OBJECTIVES["macs"])) is rows[1]
    assert knee(rows, (OBJECTIVES["latency_ms"], OBJECTIVES["macs"])) is rows[1]
    assert knee(rows, (OBJECTIVES["accuracy"], OBJECTIVES["latency_ms"])) is rows[1]
    assert knee(rows[::2], (OBJECTIVES["macs"], OBJECTIVES["latency_ms"])) is rows[2]


class FakeTrial:
    """What StoreCallback reads of a Tune trial."""

    def __init__(self, trial_id, last_result, error_msg=None):
        self.trial_id, self.last_result, self.error_msg, self.checkpoint = trial_id, last_result, error_msg, None
        self.config = {"point": {"conv1": 0.5, "criterion": "l1"}, "searcher": "random"}


def test_every_trial_tune_ends_is_recorded_once_with_its_true_status(tmp_path):
    from autoprune.config import load_config
    from autoprune.searching.space import RatioParam, SearchSpace
    from autoprune.searching.tune_searcher import outcome_of
    from autoprune.searching.tuning import StoreCallback

    config = load_config(None, ["objectives=[accuracy, macs]"])
    space = SearchSpace((RatioParam("conv1", 16, 0.0, 0.7, 0.1),), ("l1",))
    store, lines = ResultsStore(tmp_path, space.groups), []
    callback = StoreCallback(store, space, config, lines.append)
    epoch_one = {"status": "running", "final": False, "epoch": 1, "accuracy": 0.7, "macs": 500, "host": "node-2"}
    final = {"status": "ok", "final": True, "accuracy": 0.8, "macs": 400, "size_bytes": 900, "latency_ms": 1.0,
             "base_accuracy": 0.9, "base_macs": 1000, "base_size_bytes": 1000, "base_latency_ms": 2.0, "host": "n"}
    # a trial whose node was lost after its first epoch, beyond max_failures: Tune reports an error
    callback.on_trial_error(0, [], FakeTrial("lost", epoch_one, "ray.exceptions.ActorDiedError: the actor died\n"))
    callback.on_trial_complete(0, [], FakeTrial("asha", epoch_one))  # a scheduler stopped it after epoch 1
    callback.on_trial_complete(0, [], FakeTrial("nan", {"status": "failed", "final": True, "epoch": 0,
                                                         "error": "TrainingDiverged: training diverged"}))
    callback.on_trial_complete(0, [], FakeTrial("ok", final))
    rows = {r["trial_id"]: r for r in read_trials(tmp_path).to_pylist()}
    assert {t: r["status"] for t, r in rows.items()} == {"lost": "failed", "asha": "stopped", "nan": "failed",
                                                          "ok": "ok"}
    assert "ActorDiedError" in rows["lost"]["error"] and rows["lost"]["host"] == "node-2"
    assert rows["nan"]["error"] == "TrainingDiverged: training diverged"
    assert rows["ok"]["feasible"] and rows["ok"]["accuracy"] == 0.8 and rows["ok"]["error"] is None
    # the searcher is told the same: values in the configured objectives' order
    told = [outcome_of(r, e, lambda _: {}, config.objectives)
            for r, e in ((epoch_one, True), (epoch_one, False), ({"status": "failed", "final": True}, False),
                         (final, False))]
    assert [o.state for o in told] == ["failed", "stopped", "failed", "ok"] and told[3].values == (0.8, 400.0)


def test_a_named_metric_to_minimise_gets_its_columns_its_front_and_best_pick(tmp_path):
    from autoprune.deploy.export import pick_trial

    write_marker(tmp_path, version=2, metric={"name": "wer", "mode": "min"}, objectives=["wer", "macs"])
    assert [(o.name, o.direction) for o in run_objectives(tmp_path)] == [("wer", "minimize"), ("macs", "minimize")]
    store = ResultsStore(tmp_path, ["conv1"], metric="wer")
    for col in ("wer", "test_wer", "proxy_wer", "base_wer", "base_test_wer"):
        assert col in store.schema.names, col
    assert "accuracy" not in store.schema.names
    base = {"base_wer": 0.1, "base_macs": 1000, "base_size_bytes": 100, "base_latency_ms": 1.0}
    store.append(row(1, wer=0.12, macs=800, **base))
    store.append(row(2, wer=0.20, macs=400, **base))
    store.append(row(3, wer=0.25, macs=900, **base))  # dominated: a higher word error rate and more MACs than t1
    front = write_front(tmp_path)
    assert sorted(r["trial_id"] for r in front.rows) == ["t1", "t2"]
    assert pick_trial(tmp_path, "best")["trial_id"] == "t1"  # the lowest word error rate
    assert pick_trial(tmp_path, "knee", metric_bound=0.15)["trial_id"] == "t1"  # wer at most 0.15
