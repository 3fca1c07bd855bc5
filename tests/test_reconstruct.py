"""Least-squares reconstruction: consumers of pruned channels are re-fitted to the unpruned model's outputs."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.models import ModelSpec, build_model
from autoprune.pruning import prune
from autoprune.pruning.policy import Policy, discover
from autoprune.pruning.reconstruct import reconstruct
from autoprune.tasks.training import recalibrate_bn


class TwoConv(nn.Module):
    def __init__(self, width: int = 8, groups: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 6, 3, padding=1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


def smooth_images(n: int, seed: int, size: int = 12) -> torch.Tensor:
    """Spatially correlated images (upsampled noise): neighbouring patches look alike, as in real data."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(n, 3, size // 4, size // 4, generator=g), size=size, mode="bilinear")


def correlated_filters(conv: nn.Conv2d, rank: int = 4, noise: float = 0.1) -> None:
    """Make ``conv``'s filters mixes of a few shared ones plus noise: redundant, as a trained layer's are."""
    with torch.no_grad():
        basis = conv.weight[:rank].clone()
        mix = torch.randn(conv.out_channels, rank) / rank ** 0.5
        conv.weight.copy_(torch.einsum("oc,cikl->oikl", mix, basis) + noise * basis.std() * torch.randn_like(conv.weight))


def batches(n: int, seed: int, size: int = 12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(smooth_images(16, seed + i, size), torch.zeros(16, dtype=torch.long)) for i in range(n)]


def relative_error(pruned: nn.Module, base: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        y = base(x)
        return float((pruned(x) - y).norm() / y.norm())


def pruned_toy(model: nn.Module, ratio: float = 0.5) -> nn.Module:
    example = torch.zeros(1, 3, 12, 12)
    return prune(model, Policy.uniform(discover(model, example), ratio), example)


@pytest.mark.parametrize("groups, margin", [(1, 0.5), (2, 0.8)])  # a grouped conv mixes only its block's inputs
def test_refit_lowers_held_out_error_of_the_consumer(groups, margin):
    torch.manual_seed(0)
    base = TwoConv(16, groups).eval()
    correlated_filters(base.conv1)
    pruned = pruned_toy(base)
    held_out = smooth_images(32, seed=100)
    before = relative_error(pruned, base, held_out)

    report = reconstruct(base, pruned, batches(4, seed=0), max_rows=2000)

    assert [f.name for f in report.layers] == ["conv2"] and not report.skipped
    assert relative_error(pruned, base, held_out) < margin * before
    fit = report.layers[0]
    assert fit.error_after < margin * fit.error_before and fit.rows == 2000


def test_removed_channels_that_are_combinations_of_kept_ones_are_recovered_exactly():
    torch.manual_seed(0)
    base = TwoConv().eval()
    with torch.no_grad():  # channels 4..7 are 0.1 x channels 0..3: smallest L1, pruned, and redundant
        base.conv1.weight[4:] = 0.1 * base.conv1.weight[:4]
        base.conv1.bias[4:] = 0.1 * base.conv1.bias[:4]
    pruned = pruned_toy(base)
    assert pruned.autoprune_record.kept == {"conv1": [0, 1, 2, 3]}
    held_out = smooth_images(32, seed=100)
    assert relative_error(pruned, base, held_out) > 0.05

    reconstruct(base, pruned, batches(4, seed=0), ridge=1e-9)

    assert relative_error(pruned, base, held_out) < 1e-5
    expected = base.conv2.weight[:, :4] + 0.1 * base.conv2.weight[:, 4:]
    torch.testing.assert_close(pruned.conv2.weight, expected, atol=1e-4, rtol=1e-4)


def test_resnet20_logits_move_towards_the_base():
    torch.manual_seed(0)
    base = build_model(ModelSpec("resnet20", 10, 1))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 28, 28, generator=g), torch.zeros(16, dtype=torch.long)) for _ in range(6)]
    recalibrate_bn(base, data)
    example = torch.zeros(1, 1, 28, 28)
    pruned = prune(base, Policy.uniform(discover(base, example), 0.5), example)
    shapes = {n: p.shape for n, p in pruned.named_parameters()}
    held_out = torch.randn(64, 1, 28, 28, generator=g)
    with torch.no_grad():
        target = base(held_out)
        before = F.mse_loss(pruned(held_out), target).item()

    report = reconstruct(base, pruned, data[:4], max_rows=2048)

    with torch.no_grad():
        logits = pruned(held_out)
    assert F.mse_loss(logits, target).item() < 0.5 * before
    assert {n: p.shape for n, p in pruned.named_parameters()} == shapes and logits.shape == (64, 10)
    convs = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in pruned.modules())
    assert len(report.layers) == convs - 1 and not report.skipped  # all but the stem, whose input is the image
    assert all(f.error_after <= f.error_before for f in report.layers) and report.seconds > 0
    assert f"{convs - 1} layers re-fitted" in report.summary()


def test_depthwise_and_concatenated_consumers_are_refitted():
    from toy_models import Branchy

    torch.manual_seed(0)
    base = Branchy().eval()
    example = torch.zeros(1, 3, 12, 12)
    pruned = prune(base, Policy.uniform(discover(base, example), 0.5), example)
    held_out = smooth_images(32, seed=100)
    before = relative_error(pruned, base, held_out)

    report = reconstruct(base, pruned, batches(4, seed=0))

    assert {"depthwise.0", "project.0", "head"} <= {f.name for f in report.layers}
    assert relative_error(pruned, base, held_out) < before


def test_needs_a_pruned_model_and_batches():
    base = TwoConv()
    with pytest.raises(AutopruneError, match="no pruning record"):
        reconstruct(base, TwoConv(), batches(1, seed=0))
    with pytest.raises(AutopruneError, match="no calibration batches"):
        reconstruct(base, pruned_toy(base), [])
