import random

import pytest
import torch

from autoprune import AutopruneError, Policy, discover, prune
from autoprune.measure import count_macs, count_params
from autoprune.models import ModelSpec, build_model
from autoprune.pruning import REGISTRY, replay
from conftest import calib_batches

MODELS = {
    "resnet20": (ModelSpec("resnet20", 10, 1), (1, 28, 28)),
    "vgg11_bn": (ModelSpec("vgg11_bn", 10, 3), (3, 32, 32)),
    "mobilenet_v2": (ModelSpec("torchvision:mobilenet_v2", 10, 3), (3, 32, 32)),
    "branchy": (ModelSpec("toy_models:branchy", 10, 3), (3, 16, 16)),
}


@pytest.fixture(scope="module", params=["resnet20", "vgg11_bn", "mobilenet_v2"])
def zoo_model(request):
    spec, shape = MODELS[request.param]
    torch.manual_seed(0)
    model = build_model(spec).eval()
    return model, shape, discover(model, torch.zeros(1, *shape))


def non_uniform(groups, criterion, seed=0, round_to=1):
    rng = random.Random(seed)
    return Policy({g.name: rng.choice([0.0, 0.25, 0.5, 0.75]) for g in groups}, criterion, round_to)


def channels_after(model, shape):
    return {g.name: g.channels for g in discover(model, torch.zeros(1, *shape))}


@pytest.mark.parametrize("criterion", sorted(REGISTRY))
def test_every_criterion_prunes_to_requested_channel_counts(zoo_model, criterion):
    model, shape, groups = zoo_model
    policy = non_uniform(groups, criterion)
    pruned = prune(model, policy, torch.zeros(1, *shape), calib_batches(shape))
    after = channels_after(pruned, shape)
    for g in groups:
        assert after[g.name] == policy.keep(g.name, g.channels), g.name
    assert pruned(torch.randn(2, *shape)).shape == (2, 10)
    assert count_params(pruned) < count_params(model)
    # the base model is left untouched
    assert channels_after(model, shape) == {g.name: g.channels for g in groups}


def test_params_and_macs_fall_monotonically_with_ratio(zoo_model):
    model, shape, groups = zoo_model
    params, macs = [], []
    for ratio in (0.0, 0.2, 0.4, 0.6, 0.8):
        pruned = prune(model, Policy.uniform(groups, ratio), torch.zeros(1, *shape))
        params.append(count_params(pruned))
        macs.append(count_macs(pruned, shape))
    assert params == sorted(params, reverse=True) and len(set(params)) == len(params)
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == len(macs)


def test_round_to_gives_multiples(zoo_model):
    model, shape, groups = zoo_model
    pruned = prune(model, Policy.uniform(groups, 0.3, round_to=8), torch.zeros(1, *shape))
    assert all(c % 8 == 0 or c == g.channels for g, c in zip(groups, channels_after(pruned, shape).values()))


@pytest.mark.parametrize("criterion", sorted(REGISTRY))
def test_residual_concat_and_depthwise_prune_consistently(criterion):
    spec, shape = MODELS["branchy"]
    model = build_model(spec).eval()
    groups = {g.name: g for g in discover(model, torch.zeros(1, *shape))}
    # the residual add couples stem and res; the concat of left and right feeds the depthwise conv,
    # whose channels are its inputs': one group of 8 + 12 channels
    assert sorted(groups) == ["left.0", "project.0", "stem.0"]
    assert {"stem.0", "res.0"} <= set(groups["stem.0"].producers)
    assert {"left.0", "right.0", "depthwise.0"} <= set(groups["left.0"].producers)
    assert groups["left.0"].channels == 20
    policy = Policy({"stem.0": 0.5, "left.0": 0.35, "project.0": 0.5}, criterion)
    pruned = prune(model, policy, torch.zeros(1, *shape), calib_batches(shape))
    assert pruned.stem[0].out_channels == pruned.res[0].out_channels == 8
    assert pruned.res[0].in_channels == pruned.left[0].in_channels == pruned.right[0].in_channels == 8
    assert pruned.left[0].out_channels + pruned.right[0].out_channels == 13
    dw = pruned.depthwise[0]
    assert dw.in_channels == dw.out_channels == dw.groups == 13
    assert pruned.project[0].in_channels == 13 and pruned.project[0].out_channels == 12
    assert pruned(torch.randn(3, *shape)).shape == (3, 10)


def test_zero_ratio_keeps_outputs_identical():
    spec, shape = MODELS["resnet20"]
    model = build_model(spec).eval()
    groups = discover(model, torch.zeros(1, *shape))
    pruned = prune(model, Policy.uniform(groups, 0.0), torch.zeros(1, *shape)).eval()
    x = torch.randn(4, *shape)
    torch.testing.assert_close(pruned(x), model(x))


def test_data_driven_criterion_without_calibration_is_an_error():
    spec, shape = MODELS["resnet20"]
    model = build_model(spec)
    with pytest.raises(AutopruneError, match="criterion 'taylor' is data-driven"):
        prune(model, Policy({"conv1": 0.5}, "taylor"), torch.zeros(1, *shape))


def test_policy_naming_a_missing_layer_is_an_error():
    spec, shape = MODELS["resnet20"]
    with pytest.raises(AutopruneError, match="no layer 'layer7.conv1'"):
        prune(build_model(spec), Policy({"layer7.conv1": 0.5}), torch.zeros(1, *shape))


def test_untraceable_model_is_a_clear_error():
    model = build_model(ModelSpec("toy_models:Untraceable"))
    with pytest.raises(AutopruneError, match="cannot trace model Untraceable"):
        discover(model, -torch.ones(1, 3, 8, 8))


def test_iterative_reaches_the_policy_in_k_steps():
    spec, shape = MODELS["resnet20"]
    model = build_model(spec).eval()
    groups = discover(model, torch.zeros(1, *shape))
    policy = non_uniform(groups, "taylor", seed=3)
    seen = []

    def between(m, step):
        seen.append((step, channels_after(m, shape)))

    pruned = prune(model, policy, torch.zeros(1, *shape), calib_batches(shape), steps=3, between_steps=between)
    assert [s for s, _ in seen] == [1, 2]
    final = channels_after(pruned, shape)
    for g in groups:
        goal = policy.keep(g.name, g.channels)
        assert final[g.name] == goal
        # channel counts shrink step by step towards the goal
        trail = [c[g.name] for _, c in seen] + [goal]
        assert trail == sorted(trail, reverse=True)
    assert len(pruned.autoprune_record.history) > len(groups)


def test_record_replays_to_the_same_structure_and_kept_indices():
    spec, shape = MODELS["mobilenet_v2"]
    model = build_model(spec).eval()
    groups = discover(model, torch.zeros(1, *shape))
    pruned = prune(model, non_uniform(groups, "l2", seed=1), torch.zeros(1, *shape))
    record = pruned.autoprune_record
    rebuilt = replay(build_model(spec), record.history, torch.zeros(1, *shape))
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in pruned.parameters()]
    after = channels_after(pruned, shape)
    for g in groups:
        kept = record.kept[g.name]
        assert len(kept) == after[g.name] and record.channels[g.name] == g.channels
        assert kept == sorted(set(kept)) and kept[-1] < g.channels


def test_kept_indices_select_the_surviving_weights():
    spec, shape = MODELS["resnet20"]
    model = build_model(spec).eval()
    pruned = prune(model, Policy({"conv1": 0.5, "layer3.1.conv1": 0.25}), torch.zeros(1, *shape))
    kept = pruned.autoprune_record.kept
    torch.testing.assert_close(pruned.conv1.weight, model.conv1.weight[kept["conv1"]])
    torch.testing.assert_close(pruned.layer1[0].conv1.weight,
                               model.layer1[0].conv1.weight[:, kept["conv1"]])
    torch.testing.assert_close(pruned.layer3[1].conv1.weight, model.layer3[1].conv1.weight[kept["layer3.1.conv1"]])
