"""The contract every importance criterion meets, run against every registered criterion."""
import pytest
import torch

from autoprune.graph import build_graph, frozen_layers, named_groups
from autoprune.models import ModelSpec, build_model
from autoprune.pruning import REGISTRY, Criterion, make_criterion
from conftest import calib_batches

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    model = build_model(ModelSpec("toy_models:branchy")).eval()
    x = torch.zeros(1, *SHAPE)
    return model, build_graph(model, x), frozen_layers(model, x)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_one_finite_score_per_channel_of_every_group(traced, name):
    model, graph, frozen = traced
    criterion = make_criterion(name)
    assert isinstance(criterion, Criterion) and criterion.name == name
    criterion.prepare(model, calib_batches(SHAPE) if criterion.needs_data else [])
    for _, group in named_groups(graph, frozen):
        s = criterion.scores(group)
        assert s.ndim == 1 and len(s) == len(group[0].idxs)
        assert torch.isfinite(s).all()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_scores_are_deterministic(traced, name):
    model, graph, frozen = traced
    results = []
    for _ in range(2):
        criterion = make_criterion(name, seed=5)
        criterion.prepare(model, calib_batches(SHAPE) if criterion.needs_data else [])
        results.append([criterion.scores(g) for _, g in named_groups(graph, frozen)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_magnitude_ranks_a_zeroed_channel_last():
    model = build_model(ModelSpec("toy_models:branchy")).eval()
    with torch.no_grad():
        model.project[0].weight[3].zero_()
        model.project[0].bias[3] = 0
        model.project[1].weight[3] = 0
        model.head.weight[:, 3] = 0
    x = torch.zeros(1, *SHAPE)
    graph = build_graph(model, x)
    group = dict(named_groups(graph, frozen_layers(model, x)))["project.0"]
    for name in ("l1", "l2", "bn_scale"):
        assert make_criterion(name).scores(group).argmin().item() == 3


def test_apoz_ranks_a_dead_channel_last():
    model = build_model(ModelSpec("toy_models:branchy")).eval()
    with torch.no_grad():  # channel 2 of 'left' never fires: its BN output is always negative
        model.left[1].bias[2] = -1e3
    x = torch.zeros(1, *SHAPE)
    graph = build_graph(model, x)
    group = dict(named_groups(graph, frozen_layers(model, x)))["left.0"]
    for name in ("apoz", "activation_mean", "entropy"):
        c = make_criterion(name)
        c.prepare(model, calib_batches(SHAPE))
        assert c.scores(group).argmin().item() == 2, name
