"""Bad input: at most three lines naming the problem, a non-zero exit, no traceback, earlier results intact."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoprune import AutopruneError
from autoprune.data import DataSpec
from autoprune.models import ModelSpec, build_model
from autoprune.pruning import checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "data.max_train_samples=256", "--set", "base.epochs=0.2", "--set", "finetune.epochs=0.2",
        "--set", "latency.batch_size=8", "--set", "latency.threads=1", "--set", "latency.repeats=30",
        "--set", "latency.reference_repeats=30", "--set", "resources.cpu=1",
        "--set", "searcher.proxy_trials=0"]  # the default space's 400 stage-0 candidates: tests/test_stage0_*


def cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def refused(proc, *needles):
    err = proc.stderr.strip()
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in err and len(err.splitlines()) <= 3, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base.pt"
    model = build_model(ModelSpec("resnet20", 10, 1))
    checkpoint.save(checkpoint.from_model(model, ModelSpec("resnet20", 10, 1), DataSpec(), (1, 28, 28),
                                          {"mean": [0.3], "std": [0.35]}), path)
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_malformed_yaml(tmp_path):
    refused(cli("search", write(tmp_path / "c.yaml", "trials: [1,\n")), "c.yaml", "not valid YAML")


def test_unknown_key(tmp_path):
    refused(cli("search", write(tmp_path / "c.yaml", "trails: 4\n")), "unknown config key 'trails'")


def test_missing_config_file(tmp_path):
    refused(cli("search", tmp_path / "none.yaml"), "none.yaml", "does not exist")


def test_policy_naming_a_missing_layer(tmp_path, base):
    p = write(tmp_path / "p.json", json.dumps({"schema_version": 1, "ratios": {"layer9.conv1": 0.5}}))
    refused(cli("prune", "--base", base, "--policy", p, "--out", tmp_path / "o"), "layer9.conv1")


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_ratio_out_of_range(tmp_path, base, ratio):
    p = write(tmp_path / "p.json", json.dumps({"schema_version": 1, "ratios": {"conv1": ratio}}))
    refused(cli("prune", "--base", base, "--policy", p, "--out", tmp_path / "o"), "'conv1'", "[0, 1)")


def test_model_that_cannot_be_traced(tmp_path):
    spec = ModelSpec("toy_models:Untraceable", 10, 3)
    sys.path.insert(0, str(ROOT / "tests"))
    path = tmp_path / "u.pt"
    checkpoint.save(checkpoint.from_model(build_model(spec), spec, DataSpec(), (3, 8, 8), {"mean": [0], "std": [1]}),
                    path)
    refused(cli("groups", "--base", path), "cannot trace model Untraceable")


def test_missing_data_root(tmp_path):
    refused(cli("search", ROOT / "search_spaces/resnet56_cifar10.yaml", "--set", f"data.root={tmp_path / 'no'}",
                "--set", "resources.gpu=0", "--out", tmp_path / "run"), str(tmp_path / "no"), "cifar-10-batches-py")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_or_truncated_checkpoint(tmp_path, base, damage):
    bad = tmp_path / "bad.pt"
    data = base.read_bytes()
    bad.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"not a checkpoint")
    p = write(tmp_path / "p.json", json.dumps({"schema_version": 1, "ratios": {}}))
    refused(cli("prune", "--base", bad, "--policy", p, "--out", tmp_path / "o"), "bad.pt")


def test_base_checkpoint_of_another_architecture(tmp_path, base):
    refused(cli("search", ROOT / "search_spaces/resnet20_fashionmnist.yaml", "--set", "model=vgg11_bn",
                "--set", f"base.checkpoint={base}", "--out", tmp_path / "run"), "holds 'resnet20'", "vgg11_bn")


def test_nan_loss_during_finetuning(tmp_path, base):
    p = write(tmp_path / "p.json", json.dumps({"schema_version": 1, "ratios": {"conv1": 0.5}}))
    refused(cli("prune", "--base", base, "--policy", p, "--out", tmp_path / "o", "--lr", "1e30",
                "--finetune-epochs", "0.05", "--threads", "1"), "training diverged")


@pytest.mark.slow  # the same refusal in Python: test_search.py::test_no_feasible_candidate_ends_with_an_empty_front
def test_constraints_no_candidate_meets(tmp_path, base):
    run = tmp_path / "run"
    proc = cli("search", ROOT / "search_spaces/resnet20_fashionmnist.yaml", *TINY, "--set", "trials=2",
               "--set", "searcher.name=uniform", "--set", f"base.checkpoint={base}",
               "--set", "constraints=['accuracy >= base + 1']", "--out", run)
    refused(proc, "no trial met every constraint", "accuracy >= base + 1")
    from autoprune.searching.results import read_trials

    assert read_trials(run).num_rows == 2 and read_trials(run, "front.parquet").num_rows == 0
    # earlier results stay intact: a second search into the same directory is refused, nothing changes
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
    refused(cli("search", ROOT / "search_spaces/resnet20_fashionmnist.yaml", "--out", run), "is not empty")
    assert before == {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
    refused(cli("export", run, "--out", tmp_path / "exp"), "no Pareto-front trial")
    assert not (tmp_path / "exp").exists()


def test_missing_run_directory_for_export(tmp_path):
    refused(cli("export", tmp_path / "norun", "--out", tmp_path / "e"), "norun", "does not exist")


def test_unreachable_cluster_address(tmp_path):
    proc = cli("submit", ROOT / "search_spaces/resnet20_fashionmnist.yaml", "--address", "http://127.0.0.1:9")
    refused(proc, "cannot reach the Ray job server at http://127.0.0.1:9")
    refused(cli("status", "job-1", "--address", "http://127.0.0.1:9"), "http://127.0.0.1:9")


def test_an_address_that_never_answers_is_given_up_after_the_connect_timeout(monkeypatch):
    """A head that drops packets would leave Ray's client retrying: the job server is probed first, with a bounded
    timeout, and nothing else is tried once the probe fails."""
    import socket

    from autoprune.searching import jobs

    probes = []

    def silent(address, timeout=None):
        probes.append((address, timeout))
        raise socket.timeout("timed out")

    monkeypatch.setattr(jobs.socket, "create_connection", silent)
    monkeypatch.setattr("ray.job_submission.JobSubmissionClient", lambda *a, **k: pytest.fail("client created"))
    with pytest.raises(AutopruneError, match=r"cannot reach the Ray job server at http://10\.0\.0\.1:8265: timed out"):
        jobs.client("10.0.0.1:8265")
    assert probes == [(("10.0.0.1", 8265), jobs.CONNECT_TIMEOUT_S)] and 0 < jobs.CONNECT_TIMEOUT_S <= 10


def test_resume_of_a_directory_autoprune_did_not_create(tmp_path):
    (tmp_path / "x").mkdir()
    refused(cli("search", "--resume", tmp_path / "x"), "not an autoprune run directory")


def test_bad_objectives(tmp_path):
    refused(cli("search", write(tmp_path / "c.yaml", "objectives: [accuracy, accuracy]\n")),
            "config key 'objectives'", "twice")
    refused(cli("search", write(tmp_path / "d.yaml", "objectives: [accuracy, flops]\n")),
            "config key 'objectives'", "unknown objective 'flops'")


def test_resume_with_other_objectives(tmp_path):
    from autoprune.config import load_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(load_config(None).to_yaml())
    (run / "autoprune-run.json").write_text(json.dumps({"format": "autoprune-run", "version": 2, "study": "s",
                                                        "objectives": ["accuracy", "size_bytes", "latency_ms"]}))
    refused(cli("search", "--resume", run, "--set", "objectives=[accuracy, macs]"), "config key 'objectives'",
            "keeps its objectives")


@pytest.mark.slow  # the engine's clock, injected: tests/test_stage0_engine.py
def test_a_time_budget_spent_before_any_fine_tune_says_so(tmp_path, base):
    # a millisecond is spent by the first stage-0 batch of sensitivity's curves on any machine: then the budget ends
    # the search before any fine-tune (the engine's clock: tests/test_stage0_engine.py)
    proc = cli("search", "search_spaces/resnet20_fashionmnist.yaml", "--out", tmp_path / "run", *TINY,
               "--set", f"base.checkpoint={base}", "--set", "searcher.name=sensitivity", "--set", "time_budget_s=0.001",
               "--set", "constraints=[]", "--set", "latency.calibration=0", "--set", "searcher.population=4")
    refused(proc, "the time budget (0.001 s, time_budget_s) ended the search before any fine-tuned trial finished",
            f"--resume {tmp_path / 'run'}")
    assert (tmp_path / "run" / "autoprune-run.json").is_file()  # the run directory stays, resumable


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU: the requests are valid")
@pytest.mark.parametrize("sets, needle", [
    (["resources.gpu=0.5"], "config key 'resources.gpu': each trial asks for 0.5 GPU, but no node of the Ray "
                            "cluster has a GPU"),
    (["latency.device=cuda"], "config key 'latency.device': candidates are timed on CUDA, but no node of the Ray "
                              "cluster has a GPU"),
])
def test_a_gpu_the_cluster_does_not_have_is_refused_at_start(tmp_path, base, sets, needle):
    """Tune would wait for ever for the GPU (or every trial would fail on CUDA): refused before anything runs."""
    out = tmp_path / "run"
    proc = cli("search", ROOT / "search_spaces/resnet20_fashionmnist.yaml", "--out", out, "--set",
               f"base.checkpoint={base}", *TINY,
               *[a for s in sets for a in ("--set", s)])
    refused(proc, needle)
    assert not out.exists()  # nothing trained, nothing written
