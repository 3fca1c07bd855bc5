"""The command line end to end on the embedded data, and its one-line errors."""
import json
import subprocess
import sys

import pytest
import torch

from autoprune.cli import main


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "base.pt"
    assert main(["train-base", "--model", "resnet20", "--epochs", "1", "--max-train-samples", "1024",
                 "--threads", "2", "--out", str(path)]) == 0
    return path


def test_train_groups_prune_end_to_end(base_ckpt, tmp_path, capsys):
    policy = tmp_path / "policy.json"
    assert main(["groups", "--base", str(base_ckpt), "--write-policy", str(policy), "--ratio", "0.5"]) == 0
    doc = json.loads(policy.read_text())
    doc["ratios"]["conv1"] = 0.25  # non-uniform
    policy.write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert main(["prune", "--base", str(base_ckpt), "--policy", str(policy), "--out", str(out),
                 "--finetune-epochs", "0.25", "--kd", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    for row in ("val accuracy", "params", "MACs", "latency (ms)", "speedup"):
        assert row in printed
    metrics = json.loads((out / "metrics.json").read_text())
    for side in ("base", "pruned"):
        for key in ("val_accuracy", "test_accuracy", "params", "size_bytes", "macs", "latency_ms", "latency_iqr_ms"):
            assert key in metrics[side], (side, key)
    assert metrics["pruned"]["params"] < metrics["base"]["params"]
    assert metrics["pruned"]["channels"]["conv1"] == 12
    assert {"load", "prune", "recalibrate", "finetune", "measure", "save"} <= set(metrics["seconds"])
    raw = torch.load(out / "pruned.pt", weights_only=True)
    assert raw["metrics"]["test_accuracy"] == metrics["pruned"]["test_accuracy"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True)


def assert_one_line_error(proc, needle):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert needle in err, err
    assert len(err.splitlines()) <= 3 and "Traceback" not in err


def test_missing_policy_file(base_ckpt, tmp_path):
    proc = run_cli("prune", "--base", str(base_ckpt), "--policy", str(tmp_path / "none.json"), "--out", str(tmp_path))
    assert_one_line_error(proc, "none.json")


def test_missing_data_root_for_train_base(tmp_path):
    assert_one_line_error(run_cli("train-base", "--dataset", "mnist", "--data-root", str(tmp_path / "nope"),
                                  "--out", str(tmp_path / "b.pt")), str(tmp_path / "nope"))
