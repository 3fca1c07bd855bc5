import random

import pytest
import torch
from conftest import calib_batches

from autoprune import AutopruneError, Policy, discover, prune
from autoprune.measure.metrics import count_macs, count_params
from autoprune.models import ModelSpec, build_model
from autoprune.pruning import REGISTRY, PruneRecord, replay

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


def test_counts_below_round_to_are_multiples_of_the_small_step():
    model = build_model(ModelSpec("resnet20", 10, 1)).eval()
    x = torch.zeros(1, 1, 28, 28)
    groups = discover(model, x)
    policy = Policy({g.name: 0.8 if g.channels == 64 else 0.7 for g in groups}, round_to=16, small_step=4)
    after = channels_after(prune(model, policy, x), (1, 28, 28))
    by_width = {w: {after[g.name] for g in groups if g.channels == w} for w in (16, 32, 64)}
    assert by_width == {16: {4}, 32: {8}, 64: {12}}  # 4.8, 9.6 and 12.8 kept: below 16, multiples of 4


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


@pytest.mark.parametrize("name, op", [
    ("shufflenet_v2_x0_5", r"reshape \(1, 48, 4, 4\) -> \(1, 2, 24, 4, 4\) in 'stage2.0'"),  # a channel shuffle
    ("swin_t", r"reshape \(1, 14, 14, 96\) -> \(1, 2, 7, 2, 7, 96\) in 'features.1.0.attn'"),  # a window partition
])
def test_a_model_torch_pruning_cannot_follow_is_refused_naming_the_op(name, op):
    model = build_model(ModelSpec(f"torchvision:{name}", 10, 3)).eval()
    with pytest.raises(AutopruneError, match=rf"^cannot prune model \w+: unsupported op {op} \(a channel shuffle"):
        discover(model, torch.zeros(1, 3, 32, 32))


def test_a_pruned_model_that_breaks_is_an_error_naming_where():
    model = build_model(ModelSpec("toy_models:HardCodedWidth", 10, 3)).eval()
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(AutopruneError, match=r"pruned model HardCodedWidth fails in HardCodedWidth.forward: shape"):
        prune(model, Policy({"conv": 0.5}), x)


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
    final, shrinking = channels_after(pruned, shape), 0
    for g in groups:
        goal = policy.keep(g.name, g.channels)
        assert final[g.name] == goal
        # channel counts shrink at every one of the 3 steps towards the goal (a group with channels to lose at each)
        trail = [g.channels] + [c[g.name] for _, c in seen] + [goal]
        if g.channels - goal >= 3:
            assert all(a > b for a, b in zip(trail, trail[1:])), (g.name, trail)
            shrinking += 1
        else:
            assert trail == sorted(trail, reverse=True), (g.name, trail)
    assert shrinking >= len(groups) // 2  # most groups, not a vacuous few
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


# --- no layer is ever emptied: concatenated branches keep their share -----------------------------------------------

UNEQUAL = ModelSpec("toy_models:unequal_concat", 10, 3)
SMALL = (3, 16, 16)


@pytest.mark.parametrize("criterion", sorted(REGISTRY))
@pytest.mark.parametrize("ratio, round_to, narrow, wide", [
    (0.75, 1, 6, 10),   # 16 kept: 24/64 and 40/64 of them
    (0.9, 1, 2, 4),     # 6 kept: 2.25 and 3.75 of them, rounded to sum to 6
    (0.99, 1, 1, 1),    # 1 asked for: every branch keeps one anyway
    (0.75, 8, 8, 8),    # 16 kept: at least round_to per branch
])
def test_unequal_concat_branches_keep_their_share(criterion, ratio, round_to, narrow, wide):
    torch.manual_seed(0)
    model = build_model(UNEQUAL).eval()
    groups = {g.name: g for g in discover(model, torch.zeros(1, *SMALL))}
    assert groups["narrow.0"].channels == 64 and groups["narrow.0"].segments == (24, 40)
    policy = Policy({"narrow.0": ratio, "stem.0": 0.5}, criterion, round_to)
    pruned = prune(model, policy, torch.zeros(1, *SMALL), calib_batches(SMALL))
    assert (pruned.narrow[0].out_channels, pruned.wide[0].out_channels) == (narrow, wide)
    assert pruned.narrow[1].num_features == narrow and pruned.wide[1].num_features == wide
    assert pruned.depthwise[0].groups == pruned.head.in_features == narrow + wide
    assert policy.kept_channels(groups["narrow.0"]) == narrow + wide
    assert pruned(torch.randn(3, *SMALL)).shape == (3, 10)


def test_each_branch_loses_its_lowest_ranked_channels():
    torch.manual_seed(0)
    model = build_model(UNEQUAL).eval()
    with torch.no_grad():  # the weakest channel of each branch: narrow's channel 5, wide's channel 7 (group index 31)
        for branch, c in ((model.narrow, 5), (model.wide, 7)):
            branch[0].weight[c] *= 1e-3
    x = torch.zeros(1, *SMALL)
    pruned = prune(model, Policy({"narrow.0": 1 / 64 * 2}), x)  # 62 kept: one channel from each branch
    assert (pruned.narrow[0].out_channels, pruned.wide[0].out_channels) == (23, 39)
    assert sorted(set(range(64)) - set(pruned.autoprune_record.kept["narrow.0"])) == [5, 24 + 7]


@pytest.mark.parametrize("name, size", [
    ("densenet121", 32),
    ("googlenet", 32),
    ("inception_v3", 75),  # its smallest input
])
def test_torchvision_concat_models_prune_every_group(name, size):
    kwargs = {"aux_logits": False, "init_weights": True} if name != "densenet121" else {}
    spec = ModelSpec(f"torchvision:{name}", 10, 3, kwargs)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.zeros(1, 3, size, size)
    groups = discover(model, x)
    policy = Policy.uniform(groups, 0.3)
    pruned = prune(model, policy, x)
    after = pruned.autoprune_record.channels_after()
    assert all(after[g.name] == policy.kept_channels(g) < g.channels for g in groups if g.channels > 1)
    assert all(m.out_channels > 0 for m in pruned.modules() if isinstance(m, torch.nn.Conv2d))
    assert pruned(torch.randn(2, 3, size, size)).shape == (2, 10)


# --- grouped convolutions, group norms and attention heads -----------------------------------------------------------

GROUPED = ModelSpec("toy_models:grouped", 10, 3)


@pytest.mark.parametrize("criterion", sorted(REGISTRY))
def test_grouped_convolution_loses_the_same_positions_in_every_group(criterion):
    torch.manual_seed(0)
    model = build_model(GROUPED).eval()
    x = torch.zeros(1, *SMALL)
    groups = {g.name: g for g in discover(model, x)}
    assert groups["reduce.0"].channel_groups == groups["grouped.0"].channel_groups == 4
    policy = Policy({"reduce.0": 0.5, "grouped.0": 0.25}, criterion)
    pruned = prune(model, policy, x, calib_batches(SMALL))
    kept = pruned.autoprune_record.kept
    for name, per_group in (("reduce.0", 4), ("grouped.0", 6)):
        positions = [[c - 8 * g for c in kept[name] if c // 8 == g] for g in range(4)]
        assert all(p == positions[0] for p in positions) and len(positions[0]) == per_group, name
    conv = pruned.grouped[0]
    assert (conv.groups, conv.in_channels, conv.out_channels) == (4, 16, 24)
    assert pruned.grouped[1].num_groups == 4 and pruned.grouped[1].num_channels == 24
    # the surviving weights are the original ones: output channels by index, inputs by position in their group
    position = [c for c in kept["reduce.0"] if c < 8]
    torch.testing.assert_close(conv.weight, model.grouped[0].weight[kept["grouped.0"]][:, position])
    assert pruned(torch.randn(3, *SMALL)).shape == (3, 10)


@pytest.mark.parametrize("name", ["regnet_x_400mf", "regnet_y_400mf", "resnext50_32x4d"])
def test_torchvision_grouped_models_prune_every_group(name):
    torch.manual_seed(0)
    model = build_model(ModelSpec(f"torchvision:{name}", 10, 3)).eval()
    x = torch.zeros(1, 3, 32, 32)
    groups = discover(model, x)
    assert any(g.channel_groups > 1 for g in groups)
    policy = Policy.uniform(groups, 0.3)
    pruned = prune(model, policy, x)
    after = pruned.autoprune_record.channels_after()
    assert all(after[g.name] == policy.kept_channels(g) for g in groups)
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


VIT = ModelSpec("toy_models:tiny_vit", 10, 3)


def test_vit_keeps_its_heads_and_prunes_the_same_dims_in_each():
    torch.manual_seed(0)
    model = build_model(VIT).eval()
    x = torch.zeros(1, 3, 32, 32)
    groups = {g.name: g for g in discover(model, x)}
    assert groups["conv_proj"].channels == 32 and groups["conv_proj"].channel_groups == 4  # 4 heads of 8 dims
    pruned = prune(model, Policy.uniform(list(groups.values()), 0.3), x)
    kept = pruned.autoprune_record.kept["conv_proj"]
    dims = [[c - 8 * h for c in kept if c // 8 == h] for h in range(4)]
    assert all(d == dims[0] for d in dims) and len(dims[0]) == 6
    assert pruned.hidden_dim == pruned.conv_proj.out_channels == 24
    assert pruned.class_token.shape[-1] == pruned.encoder.pos_embedding.shape[-1] == 24
    for block in pruned.encoder.layers:
        attention = block.self_attention
        assert (attention.embed_dim, attention.num_heads, attention.head_dim) == (24, 4, 6)
        assert block.mlp[0].out_features == 45
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("spec, shape", [(VIT, (3, 32, 32)), (GROUPED, SMALL), (UNEQUAL, SMALL)])
def test_checkpoint_rebuilds_grouped_attention_and_concat_models(tmp_path, spec, shape):
    from autoprune.data import DataSpec
    from autoprune.pruning import checkpoint

    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.zeros(1, *shape)
    pruned = prune(model, Policy.uniform(discover(model, x), 0.4, criterion="l2"), x).eval()
    checkpoint.save(checkpoint.from_model(pruned, spec, DataSpec(), shape, {"mean": [0.0], "std": [1.0]}),
                    tmp_path / "p.pt")
    rebuilt = checkpoint.load(tmp_path / "p.pt").build()
    inputs = torch.randn(2, *shape)
    torch.testing.assert_close(rebuilt(inputs), pruned(inputs))


# --- what ranked each group is recorded, never a silent fallback -----------------------------------------------------

NO_NORM = ModelSpec("toy_models:no_norm_head", 10, 3)


def prune_no_norm_head(criterion, ratio=0.5):
    torch.manual_seed(0)
    model = build_model(NO_NORM).eval()
    with torch.no_grad():  # as if trained: batch-norm scales that differ (a fresh model's are all 1)
        for bn in (model.features[1], model.features[4]):
            bn.weight.uniform_(0.5, 1.5)
    x = torch.zeros(1, *SMALL)
    return model, prune(model, Policy.uniform(discover(model, x), ratio, criterion=criterion), x,
                        calib_batches(SMALL, n=4))


def test_bn_scale_records_the_groups_it_could_not_rank():
    _, pruned = prune_no_norm_head("bn_scale")
    record = pruned.autoprune_record
    assert record.criterion_used == {"features.0": "bn_scale", "features.3": "bn_scale",
                                     "fc1": "l1 (bn_scale: no batch norm in group)",
                                     "fc2": "l1 (bn_scale: no batch norm in group)"}
    assert record.criterion_summary() == "bn_scale; l1 for fc1, fc2 (no batch norm in group)"


def test_apoz_without_zeros_falls_back_to_l1_not_to_index_order():
    _, pruned = prune_no_norm_head("apoz")
    record = pruned.autoprune_record
    reason = "l1 (apoz: no zero activations where the group is consumed (no ReLU before its consumers))"
    assert record.criterion_used == {"features.0": "apoz", "features.3": reason, "fc1": "apoz", "fc2": reason}
    assert record.criterion_summary() == ("apoz; l1 for features.3, fc2 "
                                          "(no zero activations where the group is consumed "
                                          "(no ReLU before its consumers))")
    _, by_l1 = prune_no_norm_head("l1")
    for name in ("features.3", "fc2"):
        assert record.kept[name] == by_l1.autoprune_record.kept[name] != list(range(len(record.kept[name])))


def test_tied_scores_fall_back_to_l1_and_say_so():
    # a fresh model's batch norms all have gamma 1: bn_scale cannot tell its channels apart
    model = build_model(MODELS["resnet20"][0]).eval()
    x = torch.zeros(1, 1, 28, 28)
    pruned = prune(model, Policy({"conv1": 0.5}, "bn_scale"), x)
    assert pruned.autoprune_record.criterion_used == {"conv1": "l1 (bn_scale: every channel scored the same)"}
    by_l1 = prune(model, Policy({"conv1": 0.5}, "l1"), x)
    assert pruned.autoprune_record.kept == by_l1.autoprune_record.kept


def test_criterion_summary():
    def record(used, criterion="taylor"):
        return PruneRecord({"criterion": criterion}, [], {}, {}, used)

    assert record({}).criterion_summary() == "none"
    assert record({"a": "taylor", "b": "taylor"}).criterion_summary() == "taylor"
    reason = "l1 (taylor: no gradients in group)"
    assert record({"a": reason, "b": "taylor"}).criterion_summary() == "taylor; l1 for a (no gradients in group)"
    assert record({"a": reason, "b": reason}).criterion_summary() == "l1 for a, b (no gradients in group)"
    many = {name: reason for name in "abcde"}
    assert record(many).criterion_summary() == "l1 for a, b and 3 more groups (no gradients in group)"
    assert record({"a": f"taylor then {reason}"}).criterion_summary() == f"taylor then {reason} for a"


def test_record_round_trips_and_reads_records_without_criterion_used():
    _, pruned = prune_no_norm_head("bn_scale")
    record = pruned.autoprune_record
    assert PruneRecord.from_dict(record.to_dict()) == record
    old = {k: v for k, v in record.to_dict().items() if k != "criterion_used"}
    assert PruneRecord.from_dict(old).criterion_used == {}
