"""The contract every searcher meets."""
import importlib
import warnings

import optuna
import pytest

from autoprune import AutopruneError
from autoprune.objectives import OBJECTIVES
from autoprune.pruning.policy import Policy, PrunableGroup
from autoprune.searching.searchers import SEARCHERS, Outcome, Searcher, make_searcher
from autoprune.searching.searchers.journal import JOURNAL_FILE, StudyJournal
from autoprune.searching.searchers.optuna_base import DUPLICATE_ATTR, RERUN_ATTR, OptunaSearcher
from autoprune.searching.space import RatioParam, SearchSpace
from autoprune.searching.storage import RunDir

PARAMS = (RatioParam("a", 16, 0.0, 0.5, 0.1), RatioParam("b", 32, 0.2, 0.6, 0.2), RatioParam("c", 64, 0.0, 0.7, 0.1))
SPACE = SearchSpace(PARAMS, ("l1", "taylor"))
ONE_CRITERION = SearchSpace(PARAMS, ("l1",))
OPTUNA_SEARCHERS = ["nsga2", "tpe", "random", "gp"]
NO_WARM_START = {"sensitivity", "greedy"}  # their method picks every point they spend a full trial on
# what the controller passes every searcher: the base's reference latency and the latency model (here: kept channels)
LATENCY = {"base_latency_ms": 10.0, "predict_latency": lambda channels: 10.0 * sum(channels.values()) / 112}


def fake_values(point):
    mean = sum(point[g] for g in SPACE.groups) / 3
    return (0.9 - 0.3 * mean ** 2, 1000 * (1 - mean), 10 * (1 - mean))


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_points_lie_on_the_grid_and_outcomes_are_accepted(name):
    s = make_searcher(name, SPACE, seed=0, warm_start=2, startup_trials=3, population=4, grid=4, **LATENCY)
    assert isinstance(s, Searcher) and s.name == name
    states = ["ok", "failed", "stopped", "ok"]
    for i in range(12):
        suggestion = s.ask()
        if suggestion is None:
            # uniform: 4 distinct uniform points x 2 criteria; greedy's walk ends when no proposal of an iteration
            # finishes (here: one failed, one stopped)
            assert (name, i) in {("uniform", 8), ("greedy", 11)}
            break
        sid, point = suggestion
        for p in SPACE.params:
            assert any(abs(point[p.group] - r) < 1e-9 for r in p.grid()), (p.group, point[p.group])
        assert point["criterion"] in SPACE.criteria
        assert isinstance(SPACE.policy(point), Policy)
        state = states[i % 4]
        s.tell(sid, Outcome(state, fake_values(point) if state == "ok" else None, {"c0": -1.0}))


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_tune_can_pickle_the_search_algorithm_around_it(name):
    """``tune.Tuner`` pickles its search algorithm when it starts (Optuna 5.1's NSGA-II sampler holds a lock)."""
    from ray import cloudpickle

    from autoprune.searching.tune_searcher import AskTellSearch

    s = make_searcher(name, SPACE, seed=0, warm_start=2, startup_trials=3, population=4, grid=4, **LATENCY)
    search = AskTellSearch(s, lambda result: {}, max_trials=3)
    search.suggest("t0")
    copy = cloudpickle.loads(cloudpickle.dumps(search))
    assert copy.get_state() == search.get_state()
    assert search.policy_searcher is s  # the live search keeps its searcher


@pytest.mark.parametrize("name", sorted(set(SEARCHERS) - NO_WARM_START))
def test_warm_start_begins_with_uniform_policies(name):
    s = make_searcher(name, SPACE, seed=0, warm_start=3, startup_trials=3, population=4, grid=3)
    for expected in SPACE.uniform_ratios(3):
        _, point = s.ask()
        values = {point[p.group] for p in SPACE.params}
        assert values == {p.snap(expected) for p in SPACE.params}


@pytest.mark.parametrize("space", [SPACE, ONE_CRITERION], ids=["two-criteria", "one-criterion"])
@pytest.mark.parametrize("name", ["nsga2", "tpe", "random", "uniform"])
def test_replayed_points_are_not_suggested_again_as_warm_start(name, space):
    s = make_searcher(name, space, seed=0, warm_start=2, startup_trials=3, population=4, grid=2)
    warm = [space.uniform_point(r) for r in space.uniform_ratios(2)]
    for point in warm:
        s.replay(point, Outcome("ok", fake_values(point), {}))
    suggestion = s.ask()  # uniform over one criterion and a grid of 2 has nothing left
    assert suggestion is None if (name, space) == ("uniform", ONE_CRITERION) else suggestion[1] not in warm


def test_optuna_receives_constraints():
    s = make_searcher("nsga2", SPACE, seed=0, population=4)
    sid, point = s.ask()
    s.tell(sid, Outcome("ok", fake_values(point), {"latency_ms <= 2": 3.0}))
    trial = s.study.trials[0]
    assert trial.constraints == {"latency_ms <= 2": 3.0}
    assert s.study.best_trials == []  # infeasible trials never reach Optuna's front


def test_stopped_trials_do_not_reach_optunas_front():
    s = make_searcher("tpe", SPACE, seed=0)
    sid, _ = s.ask()
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


def key(point):
    return tuple(sorted(point.items()))


def run_trials(searcher, n, evaluated):
    for _ in range(n):
        sid, point = searcher.ask()
        searcher.tell(sid, Outcome("ok", fake_values(point), {}))
        evaluated.append(point)


@pytest.mark.parametrize("name, location", [*((n, "local") for n in OPTUNA_SEARCHERS), ("random", "remote")])
def test_a_search_resumed_from_its_journal_continues_and_never_repeats_a_point(tmp_path, monkeypatch, name, location):
    seeds = []  # what each searcher's sampler is seeded with
    module, _, cls = SEARCHERS[name].partition(":")
    searcher = getattr(importlib.import_module(module), cls)
    make_sampler = searcher.make_sampler
    monkeypatch.setattr(searcher, "make_sampler", lambda self, seed: seeds.append(seed) or make_sampler(self, seed))
    run = RunDir(tmp_path / "run") if location == "local" else RunDir("mock:///run")  # remote: pyarrow's in-memory fs
    settings = {"seed": 0, "warm_start": 2, "startup_trials": 3, "population": 4}
    first = make_searcher(name, SPACE, study=StudyJournal(run, "search"), **settings)
    assert not first.resumed
    evaluated = []
    run_trials(first, 6, evaluated)
    _, interrupted = first.ask()  # the driver stops with this trial running
    assert run.exists(JOURNAL_FILE) and (tmp_path / "run").exists() == (location == "local")
    previous = len(first.study.trials)

    resumed = make_searcher(name, SPACE, study=StudyJournal(run, "search"), **settings)
    assert resumed.resumed
    # re-seeded with seed + the trials already in the study: its draws after the resume are not the first run's
    assert seeds == [0, previous]
    closed = resumed.study.trials[previous - 1]  # the interrupted trial: closed as failed, its point queued again
    assert closed.state == optuna.trial.TrialState.FAIL and resumed._point(closed.params) == interrupted
    assert resumed.study.trials[previous].user_attrs[RERUN_ATTR] == closed.number
    sid, point = resumed.ask()
    assert point == interrupted  # the interrupted point runs again, first
    resumed.tell(sid, Outcome("ok", fake_values(point), {}))
    evaluated.append(point)
    run_trials(resumed, 8, evaluated)
    assert len({key(p) for p in evaluated}) == len(evaluated) == 15

    journal = StudyJournal(run, "search")  # keeps its local copy of a remote journal while it lives
    study = optuna.load_study(study_name="search", storage=journal.storage())
    told = [t for t in study.trials if "autoprune:outcome" in t.user_attrs]
    assert [resumed.space.policy(resumed._point(t.params)) for t in told] == [SPACE.policy(p) for p in evaluated]
    assert study.metric_names == ["accuracy", "size_bytes", "latency_ms"]
    if name == "nsga2":  # generation 0 (4 trials) filled before the stop: the resumed run breeds generation 1 on
        generations = [t.system_attrs.get("NSGAIISampler:generation") for t in told]  # None: queued points
        assert generations[:6].count(0) == 4 and {g for g in generations[7:] if g is not None} == {1, 2}


class Repeating(OptunaSearcher):
    """A sampler that proposes one point over and over: every proposal after the first is a taken point."""
    name = "repeating"

    def make_sampler(self, seed):
        fixed = {"a": 0.1, "b": 0.4, "c": 0.2, "criterion": "l1"}
        with warnings.catch_warnings():  # experimental since Optuna 2.4
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.PartialFixedSampler(fixed, optuna.samplers.RandomSampler(seed=seed))


def test_a_proposal_of_a_taken_point_is_closed_with_its_twin_and_replaced_by_an_untaken_one():
    s = Repeating(SPACE, seed=0, warm_start=0)
    first, point = s.ask()
    assert point == {"a": 0.1, "b": 0.4, "c": 0.2, "criterion": "l1"}
    s.tell(first, Outcome("ok", fake_values(point), {}))
    handed = [point]
    for _ in range(3):
        sid, point = s.ask()
        s.tell(sid, Outcome("ok", fake_values(point), {}))
        handed.append(point)
    assert len({key(p) for p in handed}) == 4  # never the repeated point again
    duplicates = [t for t in s.study.trials if DUPLICATE_ATTR in t.user_attrs]
    assert len(duplicates) == 3 and all(t.state == optuna.trial.TrialState.FAIL for t in duplicates)
    assert {t.user_attrs[DUPLICATE_ATTR] for t in duplicates} == {first}  # each names the trial that took it
    assert all(s._point(t.params) == handed[0] for t in duplicates)


def test_a_resumed_study_keeps_its_objectives(tmp_path):
    run = RunDir(tmp_path)
    make_searcher("random", SPACE, study=StudyJournal(run, "s"))
    two = (OBJECTIVES["accuracy"], OBJECTIVES["macs"])
    with pytest.raises(AutopruneError, match="config key 'objectives'"):
        make_searcher("random", SPACE, study=StudyJournal(run, "s"), objectives=two)


@pytest.mark.parametrize("name", OPTUNA_SEARCHERS)
def test_optuna_gets_the_configured_objectives_and_directions(name):
    objectives = (OBJECTIVES["macs"], OBJECTIVES["accuracy"])
    s = make_searcher(name, SPACE, seed=0, objectives=objectives)
    sid, _ = s.ask()
    s.tell(sid, Outcome("ok", (1e6, 0.8), {}))
    assert [d.name for d in s.study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert s.study.trials[0].values == [1e6, 0.8]


def test_a_point_is_never_handed_out_twice_in_a_tiny_space():
    tiny = SearchSpace((RatioParam("a", 16, 0.0, 0.2, 0.1),), ("l1", "l2"))  # 6 points
    s = make_searcher("gp", tiny, seed=0, startup_trials=2)
    points = []
    for i in range(7):
        suggestion = s.ask()
        if suggestion is None:
            break
        sid, point = suggestion
        points.append(point)
        s.tell(sid, Outcome("failed") if i % 2 else Outcome("ok", (0.9 - point["a"], 1.0 - point["a"], 1.0), {}))
    assert len(points) == 6 and len({key(p) for p in points}) == 6
