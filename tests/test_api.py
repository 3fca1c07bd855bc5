"""The Python API: a model, evaluation and training loop of your own, searched on Ray (local mode)."""
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autoprune
from autoprune.errors import AutopruneError

QUICK = {"trials": 3, "concurrency": 2, "searcher": {"name": "random", "warm_start": 2, "startup_trials": 2},
         "space": {"ratio": {"low": 0.0, "high": 0.6, "step": 0.3}, "criteria": ["l1"]},
         "latency": {"batch_size": 1, "threads": 1, "repeats": 20, "reference_repeats": 40}}


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    return x, (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()


TRAIN, VAL = make_data(256, 0), make_data(128, 1)


def accuracy(model):
    with torch.no_grad():
        return (model(VAL[0]).argmax(1) == VAL[1]).float().mean().item()


def finetune(model, epochs, teacher):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(0, max(1, round(epochs * 4)) * 64, 64):
        x, y = TRAIN[0][i % 256:i % 256 + 64], TRAIN[1][i % 256:i % 256 + 64]
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = SmallNet()
    for _ in range(10):
        finetune(model, 1, None)
    return model.eval()


def calibration():
    return [(TRAIN[0][i:i + 32], TRAIN[1][i:i + 32]) for i in range(0, 256, 32)]


def test_search_a_model_of_your_own_then_export_and_reload_it(trained, tmp_path):
    lines = []
    result = autoprune.search(trained, TRAIN[0][:1], evaluate=accuracy, finetune=finetune, calibration=calibration(),
                              out=tmp_path / "run", echo=lines.append, config={"finetune": {"epochs": 1}}, **QUICK)
    assert result.finished == 3 and len(result.trials) == 3 and (result.trials["status"] == "ok").all()
    assert len(result.front) >= 1 and {"accuracy", "latency_ms", "ratio:features.0"} <= set(result.front.columns)
    assert any("given in Python" in line for line in lines)
    metrics = autoprune.export(result.run_dir, pick="knee", out=tmp_path / "export")
    assert metrics["test_accuracy"] == pytest.approx(accuracy(autoprune.load(tmp_path / "export", model=trained)))
    with pytest.raises(AutopruneError, match="needs that unpruned model"):
        autoprune.load(tmp_path / "export")
    program = torch.export.load(tmp_path / "export" / "model.pt2").module()
    assert program(VAL[0][:5]).shape == (5, 4)


def test_a_metric_to_minimise_without_finetune_and_a_failing_evaluate(trained, tmp_path):
    base_params = sum(p.numel() for p in trained.parameters())

    def error(model):  # fails on the smallest candidates: their trials fail with the message, the search goes on
        if sum(p.numel() for p in model.parameters()) < 0.3 * base_params:
            raise ValueError("this candidate is too small for the check")
        return 1.0 - accuracy(model)

    lines = []
    result = autoprune.search(trained, TRAIN[0][:1], evaluate=error, calibration=calibration(), out=tmp_path / "run",
                              echo=lines.append, metric={"name": "err", "mode": "min"},
                              **{**QUICK, "trials": 4, "searcher": {"name": "uniform", "grid": 4}})
    assert any("no finetune given" in line for line in lines)
    failed = result.trials[result.trials["status"] == "failed"]
    assert len(failed) >= 1 and failed["error"].str.contains("this candidate is too small").all()
    ok = result.trials[result.trials["status"] == "ok"]
    assert "err" in result.front.columns and "accuracy" not in result.trials.columns
    best = autoprune.export(result.run_dir, pick="best", out=tmp_path / "best")
    assert best["val_err"] == pytest.approx(ok["err"].min())


def test_a_callable_that_cannot_be_pickled_is_refused_before_any_trial(trained, tmp_path):
    lock = threading.Lock()

    def evaluate(model):
        with lock:
            return accuracy(model)

    with pytest.raises(AutopruneError, match="evaluate cannot be sent to the Ray workers"):
        autoprune.search(trained, TRAIN[0][:1], evaluate=evaluate, out=tmp_path / "run", **QUICK)
    assert not (tmp_path / "run").exists()


def test_a_model_that_does_not_export_cannot_be_timed_in_onnxruntime(tmp_path):
    from conftest import Mystery

    settings = {**QUICK, "latency": {**QUICK["latency"], "runtime": "onnxruntime"}}
    with pytest.raises(AutopruneError, match="config key 'latency.runtime': onnxruntime times the model's ONNX export, "
                                             "but the model does not export to ONNX: operator 'autoprune_test.mystery'"):
        autoprune.search(Mystery(3, 4).eval(), TRAIN[0][:1], evaluate=accuracy, out=tmp_path / "run", **settings)
