import math

import pytest
import torch

from autoprune import Policy, discover, prune
from autoprune.models import ModelSpec, build_model
from autoprune.tasks.training import TrainConfig, TrainingDiverged, distillation_loss, evaluate, recalibrate_bn, train


def small_batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_kd_finetuning_lowers_the_distillation_loss_on_a_small_batch():
    torch.manual_seed(0)
    teacher = build_model(ModelSpec("resnet20", 10, 1)).eval()
    student = prune(teacher, Policy.uniform(discover(teacher, torch.zeros(1, 1, 28, 28)), 0.5),
                    torch.zeros(1, 1, 28, 28))
    x, y = small_batch()
    config = TrainConfig(epochs=15, lr=0.05, kd_alpha=0.7, kd_temperature=4.0)

    def loss_now():
        student.eval()
        with torch.no_grad():
            return distillation_loss(student(x), teacher(x), y, 0.7, 4.0).item()

    before = loss_now()
    losses = train(student, [(x, y)], config, teacher=teacher)
    after = loss_now()
    assert len(losses) == 15 and losses[-1] < 0.85 * losses[0]
    assert after < before  # also in eval mode, with running BN statistics


def test_distillation_loss_is_cross_entropy_without_alpha_and_zero_kl_for_equal_logits():
    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    ce = torch.nn.functional.cross_entropy(logits, y)
    torch.testing.assert_close(distillation_loss(logits, logits * 3, y, 0.0, 4.0), ce)
    torch.testing.assert_close(distillation_loss(logits, logits, y, 1.0, 4.0), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_training_is_seeded():
    x, y = small_batch()
    results = []
    for _ in range(2):
        torch.manual_seed(1)
        m = build_model(ModelSpec("resnet20", 10, 1))
        results.append(train(m, [(x, y)], TrainConfig(epochs=2, seed=3)))
    assert results[0] == results[1]


def test_nan_loss_raises_training_diverged():
    m = build_model(ModelSpec("resnet20", 10, 1))
    x, y = small_batch()
    x[0, 0, 0, 0] = math.nan
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        train(m, [(x, y)], TrainConfig(epochs=1))


def test_bn_recalibration_reestimates_running_statistics():
    m = build_model(ModelSpec("resnet20", 10, 1))
    x, y = small_batch(64)
    x = x * 3 + 2
    recalibrate_bn(m, [(x, y)], batches=1)
    # the stem's BN now tracks the statistics of the stem conv's outputs on this data
    with torch.no_grad():
        out = m.conv1(x)
    torch.testing.assert_close(m.bn1.running_mean, out.mean((0, 2, 3)), atol=1e-4, rtol=1e-4)
    assert m.bn1.momentum == 0.1 and not m.training


def test_evaluate_counts_top1():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0].long(), 3).float()

    x = torch.tensor([[0.0], [1.0], [2.0], [1.0]])
    y = torch.tensor([0, 1, 0, 1])
    assert evaluate(Fixed(), [(x, y)]) == 0.75


def test_training_stopped_after_an_epoch_resumes_on_the_same_schedule_and_optimizer_state():
    import copy

    batches = [small_batch(16, seed=s) for s in range(3)]
    config = TrainConfig(epochs=3, lr=0.05, seed=0)
    torch.manual_seed(0)
    start = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    straight = copy.deepcopy(start)
    train(straight, batches, config)

    class Stop(Exception):
        pass

    def stop_after_first(epoch, loss):
        if epoch == 1:
            raise Stop

    interrupted, progress = copy.deepcopy(start), {}
    with pytest.raises(Stop):
        train(interrupted, batches, config, on_epoch=stop_after_first, progress=progress)
    assert progress["step"] == 3 and progress["epoch"] == 1
    saved = {k: v.clone() for k, v in interrupted.state_dict().items()}
    resumed = copy.deepcopy(start)
    resumed.load_state_dict(saved)
    losses = train(resumed, batches, config, progress=progress)
    assert len(losses) == 2 and progress["epoch"] == 3  # only the two remaining epochs ran
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)  # same lr schedule and momentum as the uninterrupted run
    restarted = copy.deepcopy(start)
    restarted.load_state_dict(saved)
    train(restarted, batches, TrainConfig(epochs=2, lr=0.05, seed=0))  # the old behaviour: a fresh schedule
    assert not all(torch.allclose(a, b) for a, b in zip(straight.parameters(), restarted.parameters()))


def test_base_training_on_ray_reports_each_epoch_it_finishes(ray_local):
    from autoprune.data import DataSpec, load_data
    from autoprune.searching.base_training import fit

    data = load_data(DataSpec(max_train_samples=64))
    model = build_model(ModelSpec("resnet20", num_classes=10, in_channels=1))
    lines: list[str] = []
    fitted = fit(model, data, TrainConfig(epochs=2, lr=0.05), batch_size=32, echo=lines.append, want_gpu=False)
    epochs = [line for line in lines if line.startswith("  base epoch")]
    assert [line.split(":")[0] for line in epochs] == ["  base epoch 1/2", "  base epoch 2/2"]
    assert [float(line.split("loss ")[1].split()[0]) for line in epochs] == pytest.approx(fitted.losses, abs=1e-4)
    assert lines[-1].startswith("  trained on ")
