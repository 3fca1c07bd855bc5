"""The contract every Task meets (like Optuna's sampler test suite): the built-in classification task, a denoising
task with a metric to minimise, that task named by import path, and the Python API's task around user callables
all pass it."""
import math

import pytest
import torch
from toy_tasks import Denoiser, DenoisingTask

from autoprune.data import DataSpec, load_data
from autoprune.errors import AutopruneError
from autoprune.models import ModelSpec, build_model
from autoprune.objectives import MODES
from autoprune.tasks.base import SPLITS, Metric, Task
from autoprune.tasks.callables import CallableTask
from autoprune.tasks.classification import ClassificationTask, Recipe
from autoprune.tasks.imported import ImportedTask


def classification():
    data = load_data(DataSpec(max_train_samples=1024))
    return ClassificationTask(data, Recipe(batch_size=64, lr=0.05, proxy_samples=100)), \
        lambda: build_model(ModelSpec("resnet20", num_classes=10, in_channels=1)).eval()


def denoising():
    return DenoisingTask(), lambda: Denoiser().eval()


def imported():
    return ImportedTask("toy_tasks:DenoisingTask", {"samples": 64}), lambda: Denoiser().eval()


def callables():
    """The Python API's task around a user's own functions (here those of the denoising task)."""
    own = DenoisingTask()
    task = CallableTask(lambda m: own.evaluate(m, "val"), own.example_input(),
                        finetune=lambda m, epochs, teacher: own.finetune(m, epochs, teacher=teacher),
                        calibration=own.calibration(6), test=lambda m: own.evaluate(m, "test"), metric=own.metric)
    return task, lambda: Denoiser().eval()


IMPLEMENTATIONS = {"classification": classification, "denoising": denoising, "imported": imported,
                   "callables": callables}


@pytest.fixture(params=sorted(IMPLEMENTATIONS), scope="module")
def case(request):
    torch.manual_seed(0)
    return IMPLEMENTATIONS[request.param]()


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_the_metric_has_an_identifier_name_and_a_direction(case):
    task, _ = case
    assert isinstance(task, Task) and task.metric.name.isidentifier() and task.metric.mode in MODES


def test_calibration_gives_count_batches_of_inputs_and_targets_the_same_for_the_same_seed(case):
    task, _ = case
    first, again, other = task.calibration(3, seed=0), task.calibration(3, seed=0), task.calibration(3, seed=1)
    assert len(first) == 3
    for (x, y), (x2, y2) in zip(first, again):
        assert torch.equal(x, x2) and torch.equal(y, y2) and x.device.type == "cpu"
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_the_example_input_is_one_sample_the_model_accepts(case):
    task, make = case
    example = task.example_input()
    assert example.shape[0] == 1
    with torch.no_grad():
        make()(example)


@pytest.mark.parametrize("split", SPLITS)
def test_evaluate_is_finite_repeatable_and_leaves_the_model_unchanged(case, split):
    task, make = case
    model = make()
    before = params(model)
    value = task.evaluate(model, split)
    assert isinstance(value, float) and math.isfinite(value)
    assert task.evaluate(model, split) == value
    assert all(torch.equal(a, b) for a, b in zip(before, params(model)))


def test_an_unknown_split_is_refused_by_name(case):
    task, make = case
    with pytest.raises(AutopruneError, match="unknown split 'train'"):
        task.evaluate(make(), "train")


def test_finetune_trains_in_place_and_reports_each_whole_epoch(case):
    task, make = case
    model, epochs = make(), []
    before = params(model)
    task.finetune(model, 2, on_epoch=lambda e, logs: epochs.append((e, set(logs))))
    assert [e for e, _ in epochs] == [1, 2]
    assert not all(torch.equal(a, b) for a, b in zip(before, params(model)))


def test_finetune_improves_the_metric_on_the_training_distribution(case):
    task, make = case
    model = make()
    before = task.evaluate(model, "val")
    task.finetune(model, 3)
    assert task.metric.better(task.evaluate(model, "val"), before)


def test_a_fractional_epoch_trains_and_reports_once(case):
    task, make = case
    model, epochs = make(), []
    before = params(model)
    task.finetune(model, 0.5, on_epoch=lambda e, logs: epochs.append(e))
    assert epochs == [1]
    assert not all(torch.equal(a, b) for a, b in zip(before, params(model)))


def test_finetune_distils_from_a_teacher(case):
    """The same student fine-tuned the same way with and without a teacher: with it, its outputs end closer to the
    teacher's (a fine-tune that ignores ``teacher`` fails), and the teacher is left as it was."""
    import copy

    task, make = case
    torch.manual_seed(1)
    teacher = make()
    torch.manual_seed(2)
    student = make()
    alone, taught = copy.deepcopy(student), copy.deepcopy(student)
    teacher_before = params(teacher)
    # the toy tasks' epochs are a few small batches: six of them let the teacher's pull show (one for ResNet-20)
    epochs = 1 if isinstance(task, ClassificationTask) else 6
    torch.manual_seed(3)
    task.finetune(alone, epochs)
    torch.manual_seed(3)
    task.finetune(taught, epochs, teacher=teacher)
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, params(teacher)))
    batches = task.calibration(2)
    inputs = torch.cat([x for x, _ in batches]) if batches else task.example_input()

    def gap(model):
        with torch.no_grad():
            return torch.mean((model.eval()(inputs) - teacher.eval()(inputs)) ** 2).item()

    # seeded batches and init; measured ratios 0.15 (classification) to 0.67 (imported)
    assert gap(taught) < 0.8 * gap(alone), (gap(taught), gap(alone))


def test_an_interrupted_finetune_resumes_from_its_progress_without_repeating_epochs(case):
    task, make = case
    model, progress, seen = make(), {}, []

    def crash(epoch, logs):
        seen.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        task.finetune(model, 3, on_epoch=crash, progress=progress)
    assert progress and int(progress["epoch"]) == 1
    task.finetune(model, 3, on_epoch=lambda e, logs: seen.append(e), progress=dict(progress))
    assert seen == [1, 2, 3]


def test_metric_rejects_a_bad_mode_and_name():
    with pytest.raises(AutopruneError, match="mode must be 'max' or 'min'"):
        Metric("psnr", "up")
    with pytest.raises(AutopruneError, match="must be an identifier"):
        Metric("top-1")
    with pytest.raises(AutopruneError, match="is a cost autoprune measures itself"):
        Metric("latency_ms", "min")
    assert Metric("mse", "min").better(0.1, 0.2) and Metric("psnr", "max").better(30.0, 20.0)


def test_a_loss_when_defined_is_one_differentiable_value_per_sample(case):
    task, make = case
    model = make()
    batch = task.calibration(1)[0]
    if not task.has_loss:
        with pytest.raises(NotImplementedError, match="has no loss"):
            task.loss(model, batch)
        return
    losses = task.loss(model, batch)
    assert losses.shape == (len(batch[0]),) and torch.isfinite(losses).all()
    losses.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
