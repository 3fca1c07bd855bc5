import io

import torch

from autoprune import Policy, discover, prune
from autoprune.measure.metrics import MIN_REPEATS, count_macs, count_params, measure_latency, serialized_size
from autoprune.models import ModelSpec, build_model
from autoprune.pruning.policy import layer_macs

SHAPE = (1, 28, 28)


def test_static_metrics_of_resnet20():
    m = build_model(ModelSpec("resnet20", 10, 1))
    assert count_params(m) == sum(p.numel() for p in m.parameters())
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    assert serialized_size(m) == len(buf.getvalue())
    # convolutions: outputs (H*W*C_out) * MACs per output (C_in * 3*3, or C_in for a 1x1 shortcut)
    convs = (28 * 28 * 16 * 1 * 9                   # stem, 1 -> 16
             + 6 * 28 * 28 * 16 * 16 * 9            # layer1: six 16 -> 16
             + 14 * 14 * 32 * 16 * 9                # layer2.0.conv1, stride 2
             + 5 * 14 * 14 * 32 * 32 * 9            # the other five of layer2
             + 14 * 14 * 32 * 16                    # layer2 shortcut, 1x1
             + 7 * 7 * 64 * 32 * 9                  # layer3.0.conv1, stride 2
             + 5 * 7 * 7 * 64 * 64 * 9              # the other five of layer3
             + 7 * 7 * 64 * 32)                     # layer3 shortcut, 1x1
    fc = 64 * 10
    assert convs + fc == 31_021_952
    assert sum(layer_macs(m, torch.zeros(1, *SHAPE)).values()) == convs + fc
    # torch-pruning's counter adds 2 per element for every affine batch norm (21 of them: 7 per stage) and the fc bias
    bn_elements = 28 * 28 * 16 * 7 + 14 * 14 * 32 * 7 + 7 * 7 * 64 * 7
    assert count_macs(m, SHAPE) == convs + fc + 2 * bn_elements + 10 == 31_329_290


def test_hand_counted_macs_before_and_after_pruning():
    # toy_models.HandCounted on 3x8x8: conv1 3->8 3x3 pad 1, conv2 8->8 3x3 stride 2 in 2 groups, fc 128->10,
    # no biases, activations functional: both counters count exactly the convolutions and the linear layer
    model = build_model(ModelSpec("toy_models:HandCounted", 10, 3)).eval()
    shape, x = (3, 8, 8), torch.zeros(1, 3, 8, 8)
    before = {"conv1": (8 * 8) * 8 * (3 * 3 * 3),   # 64 positions * 8 outputs * 27 = 13824
              "conv2": (4 * 4) * 8 * (4 * 3 * 3),   # 16 positions * 8 outputs * (8/2 inputs * 9) = 4608
              "fc": 10 * 128}                       # 1280
    assert layer_macs(model, x) == before == {"conv1": 13824, "conv2": 4608, "fc": 1280}
    assert count_macs(model, shape) == sum(before.values()) == 19712
    # conv1 keeps 4 of 8 (2 of 4 positions in each of conv2's input groups), conv2 keeps 6 of 8 (3 per group)
    pruned = prune(model, Policy({"conv1": 0.5, "conv2": 0.25}), x)
    after = {"conv1": (8 * 8) * 4 * (3 * 3 * 3),    # 6912
             "conv2": (4 * 4) * 6 * (2 * 3 * 3),    # 16 * 6 * (4/2 inputs * 9) = 1728
             "fc": 10 * (6 * 4 * 4)}                # 960
    assert layer_macs(pruned, x) == after == {"conv1": 6912, "conv2": 1728, "fc": 960}
    assert count_macs(pruned, shape) == sum(after.values()) == 9600


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
