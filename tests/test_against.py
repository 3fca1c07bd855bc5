"""``finalize --against uniform``: the uniform policy measured closest to the finalized model's latency."""
import torch

from autoprune.config import load_config
from autoprune.deploy.against import comparison, uniform_at_latency
from autoprune.measure.latency import LatencyReport
from autoprune.models import ModelSpec, build_model
from autoprune.pruning import discover
from autoprune.searching.space import SearchSpace


class ChannelMeter:
    """Latency proportional to the channels kept (a stand-in for timing)."""

    def __init__(self):
        self.timed = []

    def measure(self, model, channels):
        ms = sum(channels.values()) / 100
        self.timed.append(ms)
        return LatencyReport(ms, 0.0, 1.0, ms, 1.0, 1.0, ms)


def test_the_uniform_policy_closest_in_latency_prunes_with_the_picks_criterion():
    model = build_model(ModelSpec("resnet20", 10, 1)).eval()
    x = torch.zeros(1, 1, 28, 28)
    groups = discover(model, x)
    space = SearchSpace.from_config(load_config(None, ["space.criteria=[taylor]"]), groups)  # a data-driven ranking
    meter = ChannelMeter()
    full = sum(g.channels for g in groups) / 100
    match = uniform_at_latency(model, x, space, "taylor", meter, target_ms=0.52 * full)
    assert len(meter.timed) == 8 and sorted(match.timed) == [round(0.1 * i, 1) for i in range(8)]
    assert match.ratio == 0.5 and match.policy.criterion == "taylor"  # 0.5 keeps about half: closest to 0.52
    assert set(match.policy.ratios.values()) == {0.5} and match.latency_ms == match.timed[0.5]
    final = {"test_accuracy": 0.80}
    uniform = {"val_accuracy": 0.7, "test_accuracy": 0.78, "latency_ms": 2.0}
    compared = comparison(match, final, uniform, 4.0, "accuracy")
    assert compared["speedup"] == 2.0 and compared["accuracy"] == 0.7 and compared["ratio"] == 0.5
    assert abs(compared["test_accuracy_difference"] - 0.02) < 1e-12
