"""The contract every importance criterion meets, and, per criterion, the planted channel it must prune first."""
import re

import pytest
import torch
from conftest import calib_batches

from autoprune import Policy, discover, prune
from autoprune.errors import AutopruneError
from autoprune.models import ModelSpec, build_model
from autoprune.pruning import REGISTRY, Criterion, Unscorable, make_criterion
from autoprune.pruning.graph import build_graph, frozen_layers, named_groups

SHAPE = (3, 16, 16)
PLANTED = 13  # a channel of branchy's 24-channel 'project.0' group: not first, so index order cannot find it


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    model = build_model(ModelSpec("toy_models:branchy")).eval()
    x = torch.zeros(1, *SHAPE)
    return model, build_graph(model, x), frozen_layers(model, x)


def prepared(name, model, seed=0):
    criterion = make_criterion(name, seed=seed)
    criterion.prepare(model, calib_batches(SHAPE) if criterion.needs_data else [])
    return criterion


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_one_finite_score_per_channel_of_every_group(traced, name):
    model, graph, frozen = traced
    criterion = prepared(name, model)
    assert isinstance(criterion, Criterion) and criterion.name == name
    for _, group in named_groups(graph, frozen):
        s = criterion.scores(group)
        assert s.ndim == 1 and len(s) == len(group[0].idxs)
        assert torch.isfinite(s).all()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_scores_are_deterministic(traced, name):
    model, graph, frozen = traced
    results = []
    for _ in range(2):
        criterion = prepared(name, model, seed=5)
        results.append([criterion.scores(g) for _, g in named_groups(graph, frozen)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_scoring_leaves_the_weights_alone(traced, name):
    model, graph, frozen = traced
    before = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = prepared(name, model)
    for _, group in named_groups(graph, frozen):
        criterion.scores(group)
    model.zero_grad(set_to_none=True)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)


def test_random_scores_follow_the_seed(traced):
    model, graph, frozen = traced
    group = next(g for _, g in named_groups(graph, frozen))
    a, b, c = (prepared("random", model, seed).scores(group) for seed in (1, 1, 2))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("arch", ["branchy", "unequal_concat", "grouped", "no_norm_head"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_pruning_by_every_criterion_keeps_the_model_working_and_says_what_ranked(arch, name):
    torch.manual_seed(0)
    model = build_model(ModelSpec(f"toy_models:{arch}")).eval()
    x = torch.zeros(1, *SHAPE)
    groups = discover(model, x)
    policy = Policy.uniform(groups, 0.6, criterion=name)
    pruned = prune(model, policy, x, calib_batches(SHAPE))
    out = pruned(torch.randn(4, *SHAPE))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    record = pruned.autoprune_record
    assert record.channels_after() == {g.name: policy.kept_channels(g) for g in groups}
    assert set(record.criterion_used) == {g.name for g in groups}  # every group was ranked, by something named
    for used in record.criterion_used.values():
        assert used == name or re.fullmatch(rf"l1 \({name}: .+\)", used), used


def test_a_criterion_without_statistics_says_so(traced):
    _, graph, frozen = traced
    group = next(g for _, g in named_groups(graph, frozen))
    with pytest.raises(Unscorable, match="no activation statistics"):
        make_criterion("activation_mean").scores(group)  # prepare() never ran


def test_activation_criteria_rank_a_dead_channel_of_a_concatenated_branch_last():
    torch.manual_seed(0)
    model = build_model(ModelSpec("toy_models:branchy")).eval()
    with torch.no_grad():  # every channel of both branches fires, except channel 2 of 'left': always negative
        model.left[1].bias.fill_(1.0)
        model.right[1].bias.fill_(1.0)
        model.left[1].bias[2] = -1e3
    x = torch.zeros(1, *SHAPE)
    group = dict(named_groups(build_graph(model, x), frozen_layers(model, x)))["left.0"]
    for name in ("apoz", "activation_mean", "entropy"):
        assert prepared(name, model).scores(group).argmin().item() == 2, name


def zero_weights(m, c):
    with torch.no_grad():
        m.project[0].weight[c] = 0
        m.project[0].bias[c] = 0
        m.project[1].weight[c] = 0
        m.project[1].bias[c] = 0
        m.head.weight[:, c] = 0


def tiny_gamma(m, c):
    with torch.no_grad():
        m.project[1].weight[c] = 1e-3


def no_gradient(m, c):  # the head ignores the channel: no gradient reaches its weights, which stay as they are
    with torch.no_grad():
        m.head.weight[:, c] = 0


def dead(m, c):  # always negative before the ReLU: always zero after it
    with torch.no_grad():
        m.project[1].bias[c] = -1e3


def constant(m, c):  # always 1 after the ReLU, whatever the input: non-zero, but carries nothing
    with torch.no_grad():
        m.project[1].weight[c] = 0
        m.project[1].bias[c] = 1


def live_branchy():
    """branchy as if trained: batch-norm scales that differ (a fresh model's are all 1), no dead 'project' channel."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("toy_models:branchy")).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
        model.project[1].bias.fill_(1.0)
    return model


PLANTS = {"l1": zero_weights, "l2": zero_weights, "bn_scale": tiny_gamma, "taylor": no_gradient,
          "hessian": no_gradient, "activation_mean": dead, "apoz": dead, "entropy": constant}


def test_every_criterion_but_random_has_a_planted_channel():
    assert set(PLANTS) == set(REGISTRY) - {"random"}


@pytest.mark.parametrize("name", sorted(PLANTS))
def test_planted_unimportant_channel_ranks_last_and_is_the_one_pruned(name):
    model = live_branchy()
    PLANTS[name](model, PLANTED)
    x = torch.zeros(1, *SHAPE)
    graph = build_graph(model, x)
    group = dict(named_groups(graph, frozen_layers(model, x)))["project.0"]
    scores = prepared(name, model).scores(group)
    others = torch.cat([scores[:PLANTED], scores[PLANTED + 1:]])
    assert scores[PLANTED] < others.min(), scores
    pruned = prune(model, Policy({"project.0": 1 / 24}, name), x, calib_batches(SHAPE))
    record = pruned.autoprune_record
    assert record.criterion_used == {"project.0": name}
    assert sorted(set(range(24)) - set(record.kept["project.0"])) == [PLANTED]


@pytest.mark.parametrize("name", ["taylor", "hessian"])
def test_the_gradient_criteria_differentiate_the_loss_they_are_given(name):
    """Only logit 0 reads the planted channel's absence: under the cross-entropy (all logits) it still gets
    gradients, under a loss of logit 0 alone it gets none and ranks last."""
    model = live_branchy()
    with torch.no_grad():
        model.head.weight[0, PLANTED] = 0
    x = torch.zeros(1, *SHAPE)
    group = dict(named_groups(build_graph(model, x), frozen_layers(model, x)))["project.0"]

    def logit0(m, batch):
        return m(batch[0])[:, 0] ** 2

    scores = {}
    for label, loss in (("ce", None), ("logit0", logit0)):
        criterion = make_criterion(name, loss=loss)
        criterion.prepare(model, calib_batches(SHAPE))
        scores[label] = criterion.scores(group)
        model.zero_grad(set_to_none=True)
    assert scores["logit0"].argmin() == PLANTED and scores["ce"].argmin() != PLANTED
    pruned = prune(model, Policy({"project.0": 1 / 24}, name), x, calib_batches(SHAPE), loss=logit0)
    assert sorted(set(range(24)) - set(pruned.autoprune_record.kept["project.0"])) == [PLANTED]


def test_a_loss_that_is_not_per_sample_is_named():
    criterion = make_criterion("taylor", loss=lambda m, batch: m(batch[0]).sum())
    with pytest.raises(AutopruneError, match="one value per sample"):
        criterion.prepare(live_branchy(), calib_batches(SHAPE))


def test_entropy_and_activation_mean_disagree_on_a_constant_channel():
    # the constant channel is always on: activation_mean keeps it, entropy prunes it
    model = live_branchy()
    constant(model, PLANTED)
    x = torch.zeros(1, *SHAPE)
    group = dict(named_groups(build_graph(model, x), frozen_layers(model, x)))["project.0"]
    assert prepared("entropy", model).scores(group).argmin() == PLANTED
    assert prepared("activation_mean", model).scores(group).argmin() != PLANTED


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_entropy_histogram_lives_on_the_activations_device():
    from autoprune.pruning.criteria import Entropy

    pooled = torch.rand(16, 8, device="cuda")
    assert Entropy()._channel_stat(pooled, torch.zeros_like(pooled)).device.type == "cuda"
