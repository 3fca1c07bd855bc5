"""The contract every searcher meets."""
import pytest

from autoprune.policy import Policy, PrunableGroup
from autoprune.searchers import SEARCHERS, Outcome, Searcher, make_searcher
from autoprune.space import RatioParam, SearchSpace

SPACE = SearchSpace((RatioParam("a", 16, 0.0, 0.5, 0.1), RatioParam("b", 32, 0.2, 0.6, 0.2),
                     RatioParam("c", 64, 0.0, 0.7, 0.1)), ("l1", "taylor"))


def fake_values(point):
    mean = sum(point[g] for g in SPACE.groups) / 3
    return (0.9 - 0.3 * mean ** 2, 1000 * (1 - mean), 10 * (1 - mean))


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_points_lie_on_the_grid_and_outcomes_are_accepted(name):
    s = make_searcher(name, SPACE, seed=0, warm_start=2, startup_trials=3, population=4, grid=4)
    assert isinstance(s, Searcher) and s.name == name
    states = ["ok", "failed", "stopped", "ok"]
    for i in range(12):
        suggestion = s.ask()
        if suggestion is None:
            assert name == "uniform" and i == 8  # 4 distinct uniform points x 2 criteria
            break
        sid, point = suggestion
        for p in SPACE.params:
            assert any(abs(point[p.group] - r) < 1e-9 for r in p.grid()), (p.group, point[p.group])
        assert point["criterion"] in SPACE.criteria
        assert isinstance(SPACE.policy(point), Policy)
        state = states[i % 4]
        s.tell(sid, Outcome(state, fake_values(point) if state == "ok" else None, {"c0": -1.0}))


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_warm_start_begins_with_uniform_policies(name):
    s = make_searcher(name, SPACE, seed=0, warm_start=3, startup_trials=3, population=4, grid=3)
    for expected in SPACE.uniform_ratios(3):
        _, point = s.ask()
        values = {point[p.group] for p in SPACE.params}
        assert values == {p.snap(expected) for p in SPACE.params}


@pytest.mark.parametrize("name", ["nsga2", "tpe", "random", "uniform"])
def test_replayed_points_are_not_suggested_again_as_warm_start(name):
    s = make_searcher(name, SPACE, seed=0, warm_start=2, startup_trials=3, population=4, grid=2)
    first = SPACE.uniform_point(SPACE.uniform_ratios(2)[0])
    s.replay(first, Outcome("ok", fake_values(first), {}))
    _, point = s.ask()
    assert point != first


def test_optuna_receives_constraints():
    s = make_searcher("nsga2", SPACE, seed=0, population=4)
    sid, point = s.ask()
    s.tell(sid, Outcome("ok", fake_values(point), {"latency_ms <= 2": 3.0}))
    trial = s.study.trials[0]
    assert trial.constraints == {"latency_ms <= 2": 3.0}
    assert s.study.best_trials == []  # infeasible trials never reach Optuna's front


def test_stopped_trials_do_not_reach_optunas_front():
    s = make_searcher("tpe", SPACE, seed=0)
    sid, point = s.ask()
    s.tell(sid, Outcome("stopped"))
    assert s.study.best_trials == [] and s.study.trials[0].state.name == "PRUNED"


def test_space_from_groups_applies_overrides():
    from autoprune.config import load_config

    groups = [PrunableGroup("conv1", 16, 1, 0.5, ("conv1",), ("conv1",)),
              PrunableGroup("l2", 32, 1, 0.5, ("l2",), ("l2",))]
    space = SearchSpace.from_config(load_config(None, ["space.groups.conv1.high=0.3"]), groups)
    assert space.params[0].grid() == [0.0, 0.1, 0.2, 0.3] and space.params[1].high == 0.7


def test_replayed_outcomes_keep_their_state():
    s = make_searcher("tpe", SPACE, seed=0)
    points = [SPACE.uniform_point(r) for r in (0.1, 0.3, 0.5)]
    s.replay(points[0], Outcome("ok", fake_values(points[0]), {"c": -1.0}))
    s.replay(points[1], Outcome("stopped"))
    s.replay(points[2], Outcome("failed"))
    states = [t.state.name for t in s.study.trials]
    assert states == ["COMPLETE", "PRUNED", "FAIL"]
    assert s.study.trials[0].constraints == {"c": -1.0}
