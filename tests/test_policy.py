import json

import pytest
import torch

from autoprune import AutopruneError, Policy, PrunableGroup, discover
from autoprune.models import ModelSpec, build_model
from autoprune.pruning import REGISTRY
from autoprune.pruning.policy import allocate

X = torch.zeros(1, 1, 28, 28)


@pytest.fixture(scope="module")
def resnet20():
    return build_model(ModelSpec("resnet20", 10, 1))


def test_discover_resnet20_couples_each_stage_into_one_group(resnet20):
    groups = {g.name: g for g in discover(resnet20, X)}
    # 9 blocks each own their inner channels; the three residual stages are one group each.
    assert len(groups) == 12
    assert groups["conv1"].channels == 16
    assert groups["layer2.0.conv2"].channels == 32
    assert groups["layer3.0.conv2"].channels == 64
    stage1 = set(groups["conv1"].members)
    assert {"conv1", "layer1.0.conv2", "layer1.2.conv2", "layer2.0.conv1"} <= stage1
    assert "fc" not in groups  # the output layer is never a group
    assert all(0 < g.macs_share <= 1 for g in groups.values())


def test_ignore_removes_a_group(resnet20):
    names = {g.name for g in discover(resnet20, X, ignore=["layer1.0.conv1"])}
    assert "layer1.0.conv1" not in names and "layer1.1.conv1" in names


def test_policy_json_round_trip():
    p = Policy({"a.b": 0.25, "c": 0.0}, criterion="taylor", round_to=8, ignore=["d"])
    q = Policy.from_json(p.to_json())
    assert q == p
    assert json.loads(p.to_json())["schema_version"] == 1


def test_policy_file_round_trip(tmp_path):
    p = Policy({"conv1": 0.5}, criterion="apoz")
    p.save(tmp_path / "p.json")
    assert Policy.load(tmp_path / "p.json") == p


def test_keep_rounds_to_multiple_and_never_empties():
    p = Policy({"g": 0.5, "h": 0.99}, round_to=8)
    assert p.keep("g", 64) == 32
    assert p.keep("g", 20) == 8   # 10 -> nearest multiple of 8
    assert p.keep("h", 64) == 8   # at least round_to
    assert Policy({"h": 0.99}).keep("h", 16) == 1
    assert p.keep("unlisted", 16) == 16


@pytest.mark.parametrize("ratios, needle", [
    ({"layer1.0.conv1": 1.0}, "'layer1.0.conv1'"),
    ({"layer1.0.conv1": -0.1}, "'layer1.0.conv1'"),
    ({"layer1.0.conv1": float("nan")}, "'layer1.0.conv1'"),
    ({"layer1.0.conv1": "half"}, "'layer1.0.conv1'"),
])
def test_bad_ratio_names_the_key(ratios, needle):
    with pytest.raises(AutopruneError, match=needle):
        Policy(ratios)


def test_unknown_criterion_names_it():
    with pytest.raises(AutopruneError, match="unknown criterion 'l3'"):
        Policy({}, criterion="l3")


def test_every_registered_criterion_is_accepted():
    for name in REGISTRY:
        assert Policy({}, criterion=name).criterion == name


@pytest.mark.parametrize("policy, needle", [
    (Policy({"layer9.conv": 0.5}), "no layer 'layer9.conv'"),
    (Policy({"layer1.0.conv2": 0.5}), "'layer1.0.conv2' is coupled into group 'conv1'"),
    (Policy({"fc": 0.5}), "'fc' is not a prunable group"),
    (Policy({}, ignore=["nope"]), "no layer 'nope'"),
])
def test_check_names_the_offending_key(resnet20, policy, needle):
    with pytest.raises(AutopruneError, match=needle):
        policy.check(resnet20, discover(resnet20, X))


@pytest.mark.parametrize("doc, needle", [
    ('{"schema_version": 1, "ratios": {}, "colour": 1}', "unknown policy key 'colour'"),
    ('{"schema_version": 7, "ratios": {}}', "schema_version must be 1"),
    ('{"schema_version": 1}', "'ratios'"),
    ('{"schema_version": 1, "ratios": {}, "round_to": 0}', "round_to"),
    ("{not json", "not valid JSON"),
])
def test_bad_policy_documents(doc, needle):
    with pytest.raises(AutopruneError, match=needle):
        Policy.from_json(doc)


def test_missing_policy_file_names_the_path(tmp_path):
    with pytest.raises(AutopruneError, match="nothere.json"):
        Policy.load(tmp_path / "nothere.json")


@pytest.mark.parametrize("sizes, total, step, kept", [
    ([24, 40], 16, 1, [6, 10]),      # in proportion
    ([24, 40], 6, 1, [2, 4]),        # 2.25 and 3.75, rounded to sum to 6
    ([24, 40], 1, 1, [1, 1]),        # never empty, even beyond the total
    ([24, 40], 16, 8, [8, 8]),       # at least one step each
    ([24, 40], 40, 8, [16, 24]),     # in steps of 8
    ([3, 40], 16, 8, [3, 13]),       # a segment smaller than a step keeps all it has
    ([8, 12], 13, 1, [5, 8]),
    ([10], 7, 1, [7]),
])
def test_allocate_shares_in_proportion_and_empties_nothing(sizes, total, step, kept):
    assert allocate(sizes, total, step) == kept


def test_kept_channels_counts_whole_channel_groups_and_segments():
    def group(channels, channel_groups=1, segments=()):
        return PrunableGroup("g", channels, 0, 0.0, ("g",), ("g",), channel_groups, segments)

    assert Policy({"g": 0.3}).kept_channels(group(64)) == Policy({"g": 0.3}).keep("g", 64) == 45
    # 25 groups of 16: 11 of 16 positions kept in each group
    assert Policy({"g": 0.3}).kept_channels(group(400, 25)) == 25 * 11
    # round_to 8 with 25 groups: a multiple of 8 positions, so that 25 * positions is a multiple of 8
    assert Policy({"g": 0.3}, round_to=8).kept_channels(group(400, 25)) == 25 * 8
    # round_to 8 with 4 groups: positions in steps of 2
    assert Policy({"g": 0.3}, round_to=8).kept_channels(group(64, 4)) == 48
    assert Policy({"g": 0.75}).kept_channels(group(64, 1, (24, 40))) == 16
    assert Policy({"g": 0.9}, round_to=8).kept_channels(group(64, 1, (24, 40))) == 16  # 8 per branch at least
    # halfway through removing 5 of 10: 8 kept (round(2.5) == 2), shared 3.2 : 4.8
    assert Policy({"g": 0.5}).kept_units("g", [4, 6], 1, fraction=0.5) == [3, 5]


def test_discover_reports_channel_groups_and_segments():
    groups = {g.name: g for g in discover(build_model(ModelSpec("toy_models:unequal_concat")), torch.zeros(1, 3, 8, 8))}
    assert (groups["narrow.0"].channels, groups["narrow.0"].segments, groups["narrow.0"].channel_groups) == \
        (64, (24, 40), 1)
    grouped = {g.name: g for g in discover(build_model(ModelSpec("toy_models:grouped")), torch.zeros(1, 3, 8, 8))}
    assert grouped["grouped.0"].channel_groups == 4 and grouped["stem.0"].channel_groups == 1


def test_counts_below_round_to_round_to_the_small_step():
    p = Policy({"g": 0.7, "h": 0.9, "k": 0.3, "m": 0.99}, round_to=16, small_step=4)
    assert p.keep("g", 64) == 16      # 19.2 kept: the nearest multiple of 16
    assert p.keep("h", 64) == 8       # 6.4 kept: below 16, the nearest multiple of 4
    assert p.keep("k", 64) == 48      # 44.8 kept
    assert p.keep("m", 64) == 4       # at least the small step
    assert Policy({"h": 0.9}, round_to=16).keep("h", 64) == 16  # without one: never below round_to
    # a concatenated group: the small step in units, shared among the segments
    concat = PrunableGroup("g", 64, 0, 0.0, ("g",), ("g",), 1, (32, 32))
    assert Policy({"g": 0.9}, round_to=16, small_step=4).kept_units("g", [32, 32]) == [4, 4]
    assert Policy({"g": 0.9}, round_to=16, small_step=4).kept_channels(concat) == 8
    again = Policy.from_json(p.to_json())
    assert again == p and json.loads(p.to_json())["small_step"] == 4
    assert "small_step" not in json.loads(Policy({"g": 0.5}).to_json())  # documents without it read as before
    for bad in (0, 16, 6, 32, True):
        with pytest.raises(AutopruneError, match="policy small_step must be null or a divisor of round_to"):
            Policy({"g": 0.5}, round_to=16, small_step=bad)


def test_a_ratio_of_zero_keeps_every_channel_whatever_the_rounding():
    assert Policy({"g": 0.0}, round_to=16, small_step=4).keep("g", 10) == 10
    assert Policy({"g": 0.0}, round_to=16).keep("g", 40) == 40
