"""End-to-end searches in Ray local mode on tiny data."""
import json
import shutil
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import ray
import torch
from conftest import stop_search_midway

from autoprune.config import load_config
from autoprune.data import DataSpec
from autoprune.models import ModelSpec, build_model
from autoprune.objectives import DEFAULT_OBJECTIVES
from autoprune.pruning import checkpoint
from autoprune.searching.controller import MARKER, run_search
from autoprune.searching.pareto import dominates
from autoprune.searching.results import read_trials
from autoprune.searching.searchers.journal import JOURNAL_FILE

TINY = ["data.max_train_samples=256", "base.epochs=1", "finetune.epochs=0.5", "finetune.batch_size=64",
        "latency.batch_size=8", "latency.threads=1", "concurrency=2", "resources.cpu=1",
        "space.criteria=[l1, bn_scale]", "searcher.population=4", "searcher.startup_trials=3",
        "searcher.warm_start=2",
        "deploy.onnx=false", "deploy.int8=false",  # tests/test_deploy.py and test_finalize.py cover those files
        "latency.repeats=30", "latency.reference_repeats=60"]


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


def policy(row):
    """A trial's point of the space: its ratios and criterion."""
    return (row["criterion"], *sorted((k, v) for k, v in row.items() if k.startswith("ratio:")))


def load_study(run: Path) -> optuna.Study:
    """The run's Optuna study, from the journal and name its marker records."""
    marker = json.loads((run / MARKER).read_text())
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run / marker["journal"])))
    return optuna.load_study(study_name=marker["study"], storage=storage)


@pytest.fixture(scope="module")
def nsga2_run(tmp_path_factory, base_path):
    return search(tmp_path_factory.mktemp("nsga2"), base_path, "searcher.name=nsga2", "trials=6")


@pytest.fixture(scope="module")
def tpe_run(tmp_path_factory, base_path):
    return search(tmp_path_factory.mktemp("tpe"), base_path, "searcher.name=tpe", "trials=6")


@pytest.mark.parametrize("searcher", ["nsga2", pytest.param("tpe", marks=pytest.mark.slow)])  # tpe: one more search
def test_search_end_to_end(request, searcher):
    summary, lines = request.getfixturevalue(f"{searcher}_run")
    run = Path(summary.run_dir.path)
    rows = read_trials(run).to_pylist()
    assert len(rows) == 6 and len({r["trial_id"] for r in rows}) == 6
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert all(r["searcher"] == searcher and r["criterion"] in ("l1", "bn_scale") for r in rows)
    # what ranked the channels: resnet20 has batch norm in every group, so the criterion itself everywhere
    assert all(r["criterion_used"] == r["criterion"] for r in rows)
    # latency came from the search's meter: a ratio to the base x the one reference, with its prediction
    assert len({r["base_latency_ms"] for r in rows}) == 1
    for r in rows:
        assert r["latency_ms"] == pytest.approx(r["latency_ratio"] * r["base_latency_ms"])
        assert r["latency_predicted_ms"] > 0 and r["stage"] == "full" and r["proxy_accuracy"] is not None
    schema = pq.read_schema(run / "trials.parquet").names
    assert "ratio:conv1" in schema and "ratio:layer3.0.conv2" in schema
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["size_bytes"] <= r["base_size_bytes"] and r["latency_ms"] > 0
        assert r["params"] <= r["base_params"] and r["host"]
    assert len({policy(r) for r in rows}) == 6  # no point evaluated twice
    front = read_trials(run, "front.parquet").to_pylist()
    feasible = [r for r in rows if r["feasible"]]
    for f in front:
        assert not any(dominates(objectives(r), objectives(f), DEFAULT_OBJECTIVES) for r in feasible)
    for r in feasible:  # every non-dominated feasible trial is on the front (or equals one there)
        if not any(dominates(objectives(o), objectives(r), DEFAULT_OBJECTIVES) for o in feasible):
            assert objectives(r) in [objectives(f) for f in front]
    assert (run / "pareto.png").stat().st_size > 1000 and (run / MARKER).is_file()
    # the Optuna study lives in the run directory: every trial told, with its objectives' names
    marker = json.loads((run / MARKER).read_text())
    assert marker["objectives"] == ["accuracy", "size_bytes", "latency_ms"] and marker["journal"] == JOURNAL_FILE
    study = load_study(run)
    assert study.metric_names == marker["objectives"]
    told = [t for t in study.trials if "autoprune:outcome" in t.user_attrs]
    assert len(told) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in told)
    # the trial checkpoint rebuilds the pruned model with the recorded accuracy's structure
    best = front[0]
    model = checkpoint.load(run / best["checkpoint"]).build()
    assert sum(p.numel() for p in model.parameters()) == best["params"]
    assert any("front" in line for line in lines)


@pytest.mark.slow
def test_constraint_violators_never_enter_the_front(tmp_path, base_path):
    # uniform ratios 0.2, 0.5 and 0.7 keep about 64 %, 25 % and 9 % of the weights: the first breaks the constraint
    summary, _ = search(tmp_path, base_path, "trials=3", "searcher.name=uniform", "searcher.grid=3",
                        "space.criteria=[l1]", "constraints=['size_bytes <= base * 0.45']")
    rows = read_trials(summary.run_dir).to_pylist()
    feasible = [r for r in rows if r["feasible"]]
    infeasible = [r for r in rows if not r["feasible"]]
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert len(infeasible) == 1 and len(feasible) == 2
    for r in rows:
        assert r["feasible"] == (r["size_bytes"] <= 0.45 * r["base_size_bytes"])
    front_ids = {r["trial_id"] for r in summary.front.rows}
    assert not front_ids & {r["trial_id"] for r in infeasible}
    # the feasible trials form the front: exactly those no other feasible trial dominates
    expected = {r["trial_id"] for r in feasible
                if not any(dominates(objectives(o), objectives(r), DEFAULT_OBJECTIVES) for o in feasible)}
    assert front_ids == expected and front_ids


def test_no_feasible_candidate_ends_with_an_empty_front(tmp_path, base_path, monkeypatch):
    # relative paths, as the default config writes them, resolve against the directory the search started in
    monkeypatch.chdir(base_path.parent)
    summary, lines = search(tmp_path, Path(base_path.name), "trials=2", "searcher.name=uniform",
                            "constraints=['accuracy >= base + 1']")  # accuracy never exceeds 1
    assert summary.finished == 2 and summary.front.rows == []
    assert read_trials(summary.run_dir, "front.parquet").num_rows == 0
    assert any("no trial met every constraint" in line for line in lines)


@pytest.fixture
def tests_on_worker_path(monkeypatch):
    """Ray workers import ``toy_models`` too: start a Ray whose workers have tests/ on their path."""
    ray.shutdown()
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    yield
    ray.shutdown()


def test_a_failing_trial_is_recorded_and_the_search_completes(tmp_path, tests_on_worker_path):
    spec = ModelSpec("toy_models:nan_while_training", 10, 1)  # its loss is NaN as soon as fine-tuning starts
    base = tmp_path / "nan.pt"
    checkpoint.save(checkpoint.from_model(build_model(spec), spec, DataSpec(), (1, 28, 28),
                                          {"mean": [0.3], "std": [0.35]}), base)
    summary, _ = search(tmp_path, base, f"model={spec.arch}", "trials=3", "searcher.name=random")
    rows = read_trials(summary.run_dir).to_pylist()
    assert len(rows) == 3 and summary.failed == 3 and summary.front.rows == []
    assert all(r["status"] == "failed" and "training diverged" in r["error"] for r in rows), rows
    told = [t for t in load_study(Path(summary.run_dir.path)).trials if "autoprune:outcome" in t.user_attrs]
    assert [(t.state.name, t.user_attrs["autoprune:outcome"]) for t in told] == [("FAIL", "failed")] * 3


@pytest.mark.slow
def test_resume_after_a_stop_mid_search_runs_only_the_remaining_trials(tmp_path, base_path):
    import signal

    run = tmp_path / "run"
    # the user presses Ctrl-C mid-search
    stop_search_midway(run, [*TINY, f"base.checkpoint={base_path}", "trials=4", "concurrency=1",
                                   "searcher.proxy_trials=0"], 2, signal.SIGINT)
    before = {r["trial_id"]: r for r in read_trials(run).to_pylist()}
    assert 2 <= len(before) < 4
    _, lines = search(tmp_path, base_path, "trials=4", "concurrency=1", resume=True, run_dir=run)
    after = {r["trial_id"]: r for r in read_trials(run).to_pylist()}
    assert len(after) == 4 and set(before) <= set(after)
    assert all(after[t]["finished_at"] == before[t]["finished_at"] for t in before)  # not re-run
    assert any(f"{4 - len(before)} trials to run ({len(before)} already finished)" in line for line in lines)
    assert len({policy(r) for r in after.values()}) == 4  # resumed points are new


def test_resume_continues_the_study_and_runs_the_interrupted_point_once(nsga2_run, tmp_path, base_path):
    run = tmp_path / "run"
    shutil.copytree(nsga2_run[0].run_dir.path, run)
    before = {r["trial_id"]: r for r in read_trials(run).to_pylist()}
    # the driver died right after handing out a seventh point: the study holds that trial RUNNING
    study = load_study(run)
    distributions = study.trials[-1].distributions
    params = {name: "bn_scale" if name == "criterion" else 0.1 for name in distributions}
    assert ("bn_scale", *sorted((f"ratio:{g}", 0.1) for g in params if g != "criterion")) not in map(policy, before.values())
    study.enqueue_trial(params)
    study.ask(distributions)
    _, lines = search(tmp_path, base_path, "searcher.name=nsga2", "trials=9", resume=True, run_dir=run)
    after = read_trials(run).to_pylist()
    assert len(after) == 9 and len({policy(r) for r in after}) == 9  # the count is exact, every point new
    assert all(r["finished_at"] == before[r["trial_id"]]["finished_at"] for r in after if r["trial_id"] in before)
    new = [r for r in after if r["trial_id"] not in before]
    assert [policy(r) for r in new].count(("bn_scale", *sorted((f"ratio:{g}", 0.1) for g in params
                                                                 if g != "criterion"))) == 1  # it ran again, once
    assert any("3 trials to run (6 already finished)" in line for line in lines)
    states = [t.state.name for t in load_study(run).trials if "autoprune:outcome" in t.user_attrs]
    assert states == ["COMPLETE"] * 9


def test_resume_refuses_a_directory_autoprune_did_not_create(tmp_path, base_path):
    from autoprune import AutopruneError

    (tmp_path / "foreign").mkdir()
    with pytest.raises(AutopruneError, match="not an autoprune run directory"):
        search(tmp_path, base_path, "trials=1", resume=True, run_dir=tmp_path / "foreign")


def test_export_reproduces_the_pruned_model_and_its_test_accuracy(nsga2_run, tmp_path):
    import json

    import autoprune
    from autoprune.deploy.export import export_trial, pick_trial

    run = Path(nsga2_run[0].run_dir.path)
    row = pick_trial(run, "knee")
    assert row["trial_id"] in {r["trial_id"] for r in read_trials(run, "front.parquet").to_pylist()}
    metrics = export_trial(run, row, tmp_path / "export")
    out = tmp_path / "export"
    assert sorted(p.name for p in out.iterdir()) == ["MANIFEST.sha256", "README.md", "metrics.json", "model.pt",
                                                   "model.pt2", "policy.json"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_accuracy"] == row["test_accuracy"] == metrics["test_accuracy"]
    for key in ("latency_ms", "size_bytes", "params", "macs"):  # the trial's own figures, not just their keys
        assert saved[key] == pytest.approx(row[key]), key
    assert saved["params"] == sum(p.numel() for p in autoprune.load(out).parameters())
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
    from autoprune.deploy.export import pick_trial

    run = Path(nsga2_run[0].run_dir.path)
    front = read_trials(run, "front.parquet").to_pylist()
    assert pick_trial(run, "best")["accuracy"] == max(r["accuracy"] for r in front)
    assert pick_trial(run, "min-latency")["latency_ms"] == min(r["latency_ms"] for r in front)
    assert pick_trial(run, "min-size")["size_bytes"] == min(r["size_bytes"] for r in front)
    any_id = read_trials(run).to_pylist()[0]["trial_id"]
    assert pick_trial(run, f"trial:{any_id}")["trial_id"] == any_id
    with pytest.raises(AutopruneError, match="meets the requested limits"):
        pick_trial(run, "knee", max_latency_ms=1e-9)
    with pytest.raises(AutopruneError, match="has no trial 'zzz'"):
        pick_trial(run, "trial:zzz")
    with pytest.raises(AutopruneError, match="--pick must be one of"):
        pick_trial(run, "max-accuracy")


@pytest.mark.slow
def test_early_stopped_trials_never_pollute_the_front(tmp_path, base_path):
    # one at a time, uniform ratios 0.3, 0.6, 0.9: the first trial sets ASHA's rung at epoch 1 and finishes; the
    # more pruned ones score below it after one epoch and are stopped there. A base of its own, trained well above
    # chance (a barely trained one leaves every candidate at chance, tied, and nothing is stopped)
    summary, _ = search(tmp_path, tmp_path / "base.pt", "trials=3", "concurrency=1", "searcher.name=uniform",
                        "searcher.grid=3", "space.criteria=[l1]", "space.ratio.high=0.9", "space.ratio.step=0.3",
                        "scheduler=asha", "finetune.epochs=3", "data.max_train_samples=1024", "base.epochs=3")
    rows = read_trials(summary.run_dir).to_pylist()
    assert len(rows) == 3 and {r["status"] for r in rows} <= {"ok", "stopped"}
    stopped = [r for r in rows if r["status"] == "stopped"]
    assert stopped and rows[0]["status"] == "ok", [(r["status"], r["accuracy"]) for r in rows]
    front_ids = {r["trial_id"] for r in summary.front.rows}
    assert front_ids and not front_ids & {r["trial_id"] for r in stopped}
    assert not (Path(summary.run_dir.path) / JOURNAL_FILE).exists()  # uniform keeps no study


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
    assert main(["export", uri, "--pick", "best", "--out", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "model.pt2").is_file()
    assert main(["search", "--resume", uri, "--set", "trials=3"]) == 0  # the CLI resumes a URI as well
    assert read_trials(uri).num_rows == 3


def test_cli_resume_takes_a_filesystem_uri(nsga2_run, tmp_path, capsys):
    from autoprune.cli import main

    run = tmp_path / "run"
    shutil.copytree(nsga2_run[0].run_dir.path, run)
    assert main(["search", "--resume", run.as_uri(), "--out", str(run)]) == 0  # both name the same directory
    assert "0 trials to run (6 already finished)" in capsys.readouterr().out
    (tmp_path / "foreign").mkdir()
    assert main(["search", "--resume", (tmp_path / "foreign").as_uri()]) != 0
    assert f"'{(tmp_path / 'foreign').as_uri()}' is not an autoprune run directory" in capsys.readouterr().err


def test_knee_is_the_point_nearest_the_ideal():
    from autoprune.deploy.export import knee

    rows = [{"accuracy": 0.9, "size_bytes": 100, "latency_ms": 10.0},   # accurate but big and slow
            {"accuracy": 0.85, "size_bytes": 40, "latency_ms": 4.0},   # balanced
            {"accuracy": 0.5, "size_bytes": 10, "latency_ms": 1.0}]    # tiny but poor
    assert knee(rows, DEFAULT_OBJECTIVES) is rows[1]


def test_staged_search_fine_tunes_only_the_best_stage0_candidates(tmp_path, base_path):
    summary, lines = search(tmp_path, base_path, "searcher.name=nsga2", "searcher.proxy_trials=6", "trials=2",
                            "space.criteria=[l1]", "constraints=[]")
    rows = read_trials(summary.run_dir).to_pylist()
    proxies = [r for r in rows if r["stage"] == "proxy"]
    full = [r for r in rows if r["stage"] == "full"]
    assert len(proxies) == 6 and len(full) == 2 and all(r["status"] == "ok" for r in rows)
    assert all(r["epochs"] == 0 and r["accuracy"] == r["proxy_accuracy"] for r in proxies)
    assert {policy(r) for r in full} <= {policy(r) for r in proxies}  # fine-tuned: stage-0 candidates
    front_ids = {r["trial_id"] for r in read_trials(summary.run_dir, "front.parquet").to_pylist()}
    assert front_ids and front_ids <= {r["trial_id"] for r in full}  # stage-0 rows never enter the front


@pytest.mark.slow  # greedy's rules: tests/test_searchers_sensitivity_greedy.py
def test_greedy_screens_at_stage_0_and_short_tunes_its_shortlist_through_ray(tmp_path, base_path):
    summary, _ = search(tmp_path, base_path, "searcher.name=greedy", "searcher.greedy_shortlist=1",
                        "searcher.greedy_step=0.02", "searcher.short_epochs=0.1", "trials=1",
                        "space.criteria=[l1]", "space.ratio.high=0.6", "constraints=[]",
                        "latency.calibration=0")  # latency predicted along the MACs: every group has a proposal
    rows = read_trials(summary.run_dir).to_pylist()
    assert all(r["status"] == "ok" for r in rows)

    def first_iteration(stage):
        """The base with one group raised, at its lowest ratio of the stage's rows: iteration 1's (later iterations
        may run before the search ends; one that raises the same group again does so to a higher ratio)."""
        raised = {}
        for r in rows:
            groups = [(k, v) for k, v in r.items() if k.startswith("ratio:") and v > 0]
            if r["stage"] == stage and len(groups) == 1 and groups[0][1] < raised.get(groups[0][0], (1.0,))[0]:
                raised[groups[0][0]] = (groups[0][1], r)
        return [r for _, r in raised.values()]

    proxies, shorts, full = first_iteration("proxy"), first_iteration("short"), first_iteration("full")
    assert len(proxies) > 1 and len(shorts) == 1 and len(full) == 1, [r["stage"] for r in rows]
    best = max(proxies, key=lambda r: (r["accuracy"], -r["latency_ms"]))
    assert policy(shorts[0]) == policy(best) == policy(full[0])  # the best at stage 0, short-tuned, kept


@pytest.mark.slow  # which candidates are skipped depends on this CPU's latencies: the rule is in test_tune_searcher
def test_candidates_predicted_to_break_a_latency_constraint_are_skipped_unpruned(tmp_path, base_path):
    # uniform 0.7, the space's smallest model, runs at 0.51-0.54x the base on the machines tried: well within 0.6
    summary, lines = search(tmp_path, base_path, "searcher.name=uniform", "searcher.grid=4", "trials=4",
                            "space.criteria=[l1]", "constraints=['latency_ms <= base * 0.6']")
    rows = read_trials(summary.run_dir).to_pylist()
    skipped = [r for r in rows if r["status"] == "skipped"]
    ran = [r for r in rows if r["status"] != "skipped"]
    assert skipped and ran and len(skipped) + len(ran) == 4
    base = ran[0]["base_latency_ms"]
    for r in skipped:  # never pruned, fine-tuned or timed: only the prediction that ruled them out
        assert r["latency_predicted_ms"] > 0.6 * base * 1.15 and r["latency_ms"] is None and r["accuracy"] is None
        assert "breaks 'latency_ms <= base * 0.6'" in r["error"]
    assert max(r["ratio:layer1.0.conv1"] for r in skipped) < min(r["ratio:layer1.0.conv1"] for r in ran)
