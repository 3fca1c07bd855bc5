"""Sparsity training (network slimming): an L1 penalty on batch-norm scales, and the search's slimmed base."""
import copy

import pytest
import torch
from torch import nn

from autoprune.config import load_config
from autoprune.errors import AutopruneError
from autoprune.pruning import prune
from autoprune.pruning.policy import Policy, discover
from autoprune.tasks.training import TrainConfig, small_bn_scales, train


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def fixed_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(4)]


def scales_l1(model: nn.Module) -> float:
    return sum(float(m.weight.detach().abs().sum()) for m in model.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, nn.Module]:
    """The same model trained on the same batches with the same seed, without and with the penalty."""
    plain, slim = tiny(), tiny()
    train(plain, fixed_batches(), TrainConfig(epochs=10, lr=0.1, seed=0))
    train(slim, fixed_batches(), TrainConfig(epochs=10, lr=0.1, seed=0, sparsity_l1=0.1))
    return plain, slim


def test_penalty_drives_batch_norm_scales_down(trained):
    plain, slim = trained
    assert scales_l1(slim) < 0.5 * scales_l1(plain)
    assert small_bn_scales(slim) > small_bn_scales(plain) + 0.2
    assert small_bn_scales(tiny()) == 0.0  # scales start at 1


def test_bn_scale_ranking_separates_channels_more(trained):
    example = torch.zeros(1, 3, 8, 8)
    x = torch.cat([x for x, _ in fixed_batches()])
    change = {}
    for name, model in zip(("plain", "slim"), trained):
        model.eval()
        pruned = prune(model, Policy.uniform(discover(model, example), 0.25, criterion="bn_scale"), example)
        with torch.no_grad():
            change[name] = float((pruned(x) - model(x)).norm() / model(x).norm())
    assert change["slim"] < 0.5 * change["plain"]  # the channels it drops were switched off by the penalty


def test_without_penalty_training_is_unchanged():
    a, b = tiny(), tiny()
    train(a, fixed_batches(), TrainConfig(epochs=2, lr=0.05, seed=0))
    train(b, fixed_batches(), TrainConfig(epochs=2, lr=0.05, seed=0, sparsity_l1=0.0))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_negative_penalty_is_an_error():
    with pytest.raises(AutopruneError, match="sparsity_l1 must be >= 0"):
        train(tiny(), fixed_batches(), TrainConfig(sparsity_l1=-0.1))


def test_config_keys_default_and_validate():
    config = load_config(None)
    assert (config["base.sparsity_l1"], config["base.sparsity_epochs"], config["space.reconstruct"]) == (0.0, 1.0, False)
    assert load_config(None, ["base.sparsity_l1=1e-4", "space.reconstruct=true"])["space.reconstruct"] is True
    for key in ("base.sparsity_l1", "base.sparsity_epochs"):
        with pytest.raises(AutopruneError, match=f"config key '{key}' must be >= 0, got -1"):
            load_config(None, [f"{key}=-1"])
    with pytest.raises(AutopruneError, match="config key 'space.reconstruct' must be bool"):
        load_config(None, ["space.reconstruct=1"])


def test_ensure_base_trains_saves_and_reuses_the_slimmed_base(tmp_path):
    from autoprune.data import DataSpec, load_data
    from autoprune.pruning import checkpoint
    from autoprune.searching.controller import build_task, ensure_base

    data = load_data(DataSpec(max_train_samples=256))
    base_path = tmp_path / "base.pt"
    config = load_config(None, ["model=toy_models:branchy", f"base.checkpoint={base_path}", "base.epochs=1",
                                "base.sparsity_l1=0.01", "base.sparsity_epochs=2", "base.batch_size=64"])
    lines: list[str] = []
    slim, slim_path = ensure_base(config, data, build_task(config, data), lines.append)

    assert slim_path == tmp_path / "base.slim-0.01-2ep.pt" and slim_path.is_file() and base_path.is_file()
    assert slim.metrics["sparsity_l1"] == 0.01 and slim.metrics["sparsity_trained_from"] == str(base_path)
    assert any(line.startswith("sparsity training:") for line in lines)
    base = checkpoint.load(base_path)
    assert any(not torch.equal(slim.state_dict[k], base.state_dict[k]) for k in base.state_dict)

    lines.clear()
    again, again_path = ensure_base(config, data, build_task(config, data), lines.append)
    assert again_path == slim_path and "reused" in lines[-1]
    assert all(torch.equal(again.state_dict[k], v) for k, v in slim.state_dict.items())
    plain = copy.deepcopy(config)
    plain.raw["base"]["sparsity_l1"] = 0.0
    assert ensure_base(plain, data, build_task(plain, data), lines.append)[1] == base_path
