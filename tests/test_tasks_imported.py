"""Tasks named by import path, and bases from the user's own weights."""
import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import AUTOPRUNE, run_ok
from toy_tasks import Denoiser

from autoprune.config import load_config
from autoprune.errors import AutopruneError
from autoprune.searching.controller import base_from_weights, build_task
from autoprune.tasks.imported import ImportedTask

TASK = ["model=toy_tasks:Denoiser", "task=toy_tasks:DenoisingTask", "task_args={samples: 48}",
        "metric={name: mse, mode: min}"]


def test_an_imported_task_travels_as_its_path_and_arguments():
    task = ImportedTask("toy_tasks:DenoisingTask", {"samples": 48})
    assert task.metric.name == "mse" and task._task is None  # the class's metric, without building the task
    first = task.calibration(2)
    payload = pickle.dumps(task)
    assert len(payload) < 1000 and b"toy_tasks:DenoisingTask" in payload  # no data in it
    again = pickle.loads(payload)
    assert again._task is None
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again.calibration(2)))


@pytest.mark.parametrize("path, needle", [
    ("toy_tasks.DenoisingTask", "is not 'package.module:name'"),
    ("no_such_module:Task", "cannot import module 'no_such_module'"),
    ("toy_tasks:Denoiser", "is not a subclass of autoprune.tasks.Task"),
    ("toy_tasks:Missing", "'Missing' not found in module 'toy_tasks'"),
])
def test_a_bad_task_path_is_named(path, needle):
    with pytest.raises(AutopruneError, match=needle):
        ImportedTask(path)


def test_unknown_task_arguments_are_named_on_first_use():
    task = ImportedTask("toy_tasks:DenoisingTask", {"colour": "red"})
    with pytest.raises(AutopruneError, match="config key 'task_args'.*colour"):
        task.calibration(1)


def test_the_config_metric_must_be_the_tasks():
    with pytest.raises(AutopruneError, match=r"the ImportedTask reports mse \(min\), not accuracy \(max\)"):
        build_task(load_config(None, TASK[:3]), None)
    assert build_task(load_config(None, TASK), None).metric.name == "mse"


def test_the_gradient_criteria_need_the_tasks_loss():
    assert build_task(load_config(None, [*TASK, "space.criteria=[taylor, hessian]"]), None).has_loss
    lossless = [item.replace("DenoisingTask", "LosslessDenoisingTask") for item in TASK]
    with pytest.raises(AutopruneError, match="'taylor' ranks channels by gradients of the task's loss, which "
                                             "toy_tasks:LosslessDenoisingTask does not define"):
        build_task(load_config(None, [*lossless, "space.criteria=[l1, taylor]"]), None)
    assert not build_task(load_config(None, [*lossless, "space.criteria=[l1]"]), None).has_loss


def weights_config(tmp_path, state):
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    return load_config(None, [*TASK, f"base.weights={path}", f"base.checkpoint={tmp_path / 'base.pt'}"])


def test_the_base_comes_from_the_users_weights_unchanged(tmp_path):
    torch.manual_seed(3)
    trained = Denoiser()
    config = weights_config(tmp_path, trained.state_dict())
    lines = []
    base, path = base_from_weights(config, None, build_task(config, None), lines.append)
    assert path == tmp_path / "base.pt" and path.is_file() and "base from weights" in lines[0]
    rebuilt = base.build(path)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), trained.state_dict().values()))
    assert base.input_shape == (1, 12, 12) and base.metrics["val_mse"] > 0
    again, _ = base_from_weights(config, None, build_task(config, None), lines.append)  # same weights: reused
    assert len(lines) == 1 and again.metrics == base.metrics


@pytest.mark.parametrize("edit, needle", [
    (lambda s: {k: v for k, v in s.items() if k != "body.0.weight"}, "misses 'body.0.weight'"),
    (lambda s: {**s, "head.weight": torch.zeros(1)}, "has unexpected 'head.weight'"),
    (lambda s: {**s, "body.0.weight": torch.zeros(3)}, "size mismatch for body.0.weight"),
    (lambda s: [1, 2], "is not a state_dict"),
])
def test_weights_that_do_not_fit_name_the_first_bad_key(tmp_path, edit, needle):
    config = weights_config(tmp_path, edit(Denoiser().state_dict()))
    with pytest.raises(AutopruneError, match=needle) as e:
        base_from_weights(config, None, build_task(config, None), print)
    assert "\n" not in str(e.value)


def test_callables_are_checked_when_the_task_is_made():
    from autoprune.tasks.callables import CallableTask

    example = torch.zeros(1, 1, 12, 12)
    with pytest.raises(AutopruneError, match="evaluate must be a callable"):
        CallableTask(0.9, example)
    with pytest.raises(AutopruneError, match="finetune must be callable"):
        CallableTask(lambda m: 0.5, example, finetune="sgd")
    with pytest.raises(AutopruneError, match="calibration batch 1 is a str"):
        CallableTask(lambda m: 0.5, example, calibration=[torch.zeros(2, 1, 12, 12), "x"])
    task = CallableTask(lambda m: "high", example, calibration=[torch.zeros(2, 1, 12, 12)])
    assert task.calibration(1)[0][1] is None  # bare input tensors: no targets
    with pytest.raises(AutopruneError, match="evaluate returned str, not a number"):
        task.evaluate(Denoiser())
    assert not task.trains


def test_a_task_of_your_own_searched_and_finalized_through_the_cli(tmp_path):
    """The denoising toy task, its model factory and trained weights: search, front and finalize by the CLI,
    the metric (mse, to minimise) named in the table and the model card."""
    torch.manual_seed(0)
    model = Denoiser()
    task = ImportedTask("toy_tasks:DenoisingTask", {"samples": 48}).task
    task.finetune(model, 3)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "denoise.yaml").write_text(f"""
model: toy_tasks:Denoiser
task: toy_tasks:DenoisingTask
task_args: {{samples: 48}}
metric: {{name: mse, mode: min}}
base: {{weights: {tmp_path / 'weights.pt'}}}
space: {{ratio: {{high: 0.6}}, criteria: [l1]}}
finetune: {{epochs: 1, final_epochs: 1}}
constraints: ["mse <= base * 2"]
searcher: {{name: random, warm_start: 2}}
trials: 3
concurrency: 2
latency: {{repeats: 20, reference_repeats: 40}}
""")
    tests = (Path(__file__).parent,)
    searched = run_ok([*AUTOPRUNE, "search", tmp_path / "denoise.yaml", "--out", tmp_path / "run"], tmp_path, tests)
    assert "base from weights" in searched and "3 trials finished" in searched
    header = next(line for line in searched.splitlines() if "criterion" in line and "ratios mean" in line)
    assert "mse" in header and "accuracy" not in header
    final = run_ok([*AUTOPRUNE, "finalize", tmp_path / "run", "--pick", "best", "--out", tmp_path / "final"],
                   tmp_path, tests)
    assert "test mse" in final and "test mse" in (tmp_path / "final" / "README.md").read_text()
    # a metric to minimise in every runtime: int8 checked on it too (a higher mse is the worse one)
    runtimes = json.loads((tmp_path / "final" / "metrics.json").read_text())["runtimes"]
    assert {"torch", "onnxruntime", "int8"} <= set(runtimes)
    torch_mse = runtimes["torch"]["test_mse"]
    assert runtimes["onnxruntime"]["test_mse"] == pytest.approx(torch_mse, rel=1e-3)
    assert abs(runtimes["int8"]["test_mse"] - torch_mse) <= 0.25 * torch_mse  # int8 keeps what fp32 has
