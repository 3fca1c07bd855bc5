"""The Ray Tune searcher around a policy searcher: what it hands Tune, what it skips, what counts as a trial."""
from autoprune.searching.screening import Verdict
from autoprune.searching.searchers import make_searcher
from autoprune.searching.space import RatioParam, SearchSpace
from autoprune.searching.tune_searcher import AskTellSearch

SPACE = SearchSpace((RatioParam("a", 16, 0.0, 0.7, 0.1), RatioParam("b", 32, 0.0, 0.7, 0.1)), ("l1",))


def screen(point):
    """A latency prediction that rules out every point pruning less than 0.4 of group a."""
    return Verdict(10.0 * (1 - point["a"]), None if point["a"] >= 0.4 else f"a at {point['a']} is too slow")


def test_skipped_candidates_do_not_count_against_the_trial_budget():
    searcher = make_searcher("uniform", SPACE, seed=0, warm_start=0, grid=7)  # uniform 0.1, 0.2, ..., 0.7
    skipped = []
    search = AskTellSearch(searcher, lambda result: {}, max_trials=3, screen=screen,
                           on_skip=lambda point, verdict, name: skipped.append(point["a"]))
    handed = [search.suggest(f"t{i}") for i in range(5)]
    points = [h["point"]["a"] for h in handed if isinstance(h, dict)]
    assert points == [0.4, 0.5, 0.6]  # three trials, each within the screen, though 0.1-0.3 came first
    assert sorted(skipped) == [0.1, 0.2, 0.3]  # skipped, told as failed, and not counted
    assert handed[3:] == ["FINISHED", "FINISHED"]
