"""The latency model: per-bucket MACs fitted by NNLS on timed structures, and its leave-one-out error."""
import pytest
import torch
from torch import nn

from autoprune.measure.predictor import LatencyModel, _fit_line, loo_errors
from autoprune.measure.structure import StructureModel
from autoprune.pruning.policy import discover


class TwoResolutions(nn.Module):
    """Conv a at 16x16, conv b at 8x8 (after a stride-2 conv), then a classifier: three buckets."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def structure():
    model = TwoResolutions()
    x = torch.zeros(1, 3, 16, 16)
    return StructureModel.from_model(model, x, discover(model, x))


def planted(structure, channels, costs):
    """A latency that is ``costs[0]`` plus ``costs[k]`` ms per million MACs of bucket k: what NNLS must recover."""
    row = LatencyModel(structure).features(channels)
    return sum(c * f for c, f in zip(costs, row))


def test_line_through_total_macs_until_there_are_enough_structures():
    assert _fit_line([(10.0, 5.0)]) == (0.0, 0.5)
    a, b = _fit_line([(10.0, 6.0), (5.0, 3.5), (2.0, 2.0)])
    assert b == pytest.approx(0.5) and a == pytest.approx(1.0)


def test_nnls_recovers_the_fixed_cost_and_each_buckets_rate(structure):
    names = list(structure.group_channels)
    model = LatencyModel(structure)
    costs = [0.5, 3.0, 7.0, 11.0]  # fixed, then per million MACs at 16x16, at 8x8 (conv b and c: its input is 16x16)
    assert len(model.features(structure.group_channels)) == 1 + 3  # buckets: conv@16x16, conv@8x8, linear
    grid = [{names[0]: a, names[1]: b} for a in (2, 4, 6, 8) for b in (1, 3, 5, 8)]
    observations = [(structure.group_channels, planted(structure, structure.group_channels, costs))]
    observations += [(c, planted(structure, c, costs)) for c in grid]
    model.fit(observations)
    assert model.fitted_on.startswith("per-layer-bucket")
    probe = {names[0]: 5, names[1]: 7}
    assert model.predict(probe) == pytest.approx(planted(structure, probe, costs), rel=1e-6)
    assert max(loo_errors(structure, None, observations)) < 1e-6


def test_too_few_structures_fall_back_to_the_line_and_loo_skips_the_base(structure):
    names = list(structure.group_channels)
    model = LatencyModel(structure)
    full = structure.group_channels
    model.fit([(full, 4.0), ({names[0]: 4}, 3.0)])
    assert model.fitted_on == "total MACs (line)"
    assert model.predict(full) == pytest.approx(4.0)  # proportional through the base with two points
    assert len(loo_errors(structure, None, [(full, 4.0), ({names[0]: 4}, 3.0), ({names[0]: 2}, 2.5)])) == 2
