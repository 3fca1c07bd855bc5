import io

import torch

from autoprune import Policy, discover, prune
from autoprune.measure import MIN_REPEATS, count_macs, count_params, measure_latency, serialized_size
from autoprune.models import ModelSpec, build_model

SHAPE = (1, 28, 28)


def test_static_metrics_of_resnet20():
    m = build_model(ModelSpec("resnet20", 10, 1))
    assert count_params(m) == sum(p.numel() for p in m.parameters())
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    assert serialized_size(m) == len(buf.getvalue())
    # the stem conv alone: 28*28 outputs * 16 channels * 9 MACs
    assert count_macs(m, SHAPE) > 28 * 28 * 16 * 9


def test_half_pruned_resnet20_measures_a_speedup():
    torch.manual_seed(0)
    base = build_model(ModelSpec("resnet20", 10, 1)).eval()
    pruned = prune(base, Policy.uniform(discover(base, torch.zeros(1, *SHAPE)), 0.5), torch.zeros(1, *SHAPE))
    lat = measure_latency({"base": base, "pruned": pruned}, SHAPE, batch_size=32, threads=1, repeats=30)
    assert lat["base"].repeats >= MIN_REPEATS and lat["pruned"].repeats >= MIN_REPEATS
    assert lat["pruned"].iqr_ms >= 0 and lat["base"].threads == 1 and lat["base"].device == "cpu"
    assert lat["base"].median_ms / lat["pruned"].median_ms > 1.0


def test_latency_restores_thread_count_and_enforces_minimum_repeats():
    before = torch.get_num_threads()
    lat = measure_latency({"m": torch.nn.Linear(4, 2)}, (4,), batch_size=2, threads=1, repeats=3)
    assert lat["m"].repeats == MIN_REPEATS and torch.get_num_threads() == before
