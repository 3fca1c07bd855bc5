"""The sensitivity (FastNAS-style allocation) and greedy (NetAdapt) searchers, driven with fake outcomes."""
import itertools
import json

import pytest

from autoprune.config import Constraint
from autoprune.objectives import OBJECTIVES, metric_objective
from autoprune.searching.searchers import make_searcher
from autoprune.searching.searchers.base import EPOCHS_KEY, STAGE_KEY, WAIT, Outcome, stage_of
from autoprune.searching.searchers.sensitivity import (
    PLOT_FILE,
    SENSITIVITY_FILE,
    Knapsack,
    read_curves,
    spread_order,
)
from autoprune.searching.space import RatioParam, SearchSpace
from autoprune.searching.storage import RunDir

SPACE = SearchSpace((RatioParam("a", 100, 0.0, 0.6, 0.2), RatioParam("b", 100, 0.0, 0.6, 0.2),
                     RatioParam("c", 100, 0.0, 0.6, 0.2)), ("l1", "l2"))
BASE_MS = 12.0
# per group and ratio: (accuracy drop, latency saved in ms); savings are whole ms, so budgets at half-ms sit between
# achievable sums and the discretised knapsack is exact there
DROP = {"a": {0.2: 0.01, 0.4: 0.03, 0.6: 0.10}, "b": {0.2: 0.002, 0.4: 0.02, 0.6: 0.04},
        "c": {0.2: 0.02, 0.4: 0.025, 0.6: 0.03}}
SAVE = {"a": {0.2: 1.0, 0.4: 2.0, 0.6: 3.0}, "b": {0.2: 1.0, 0.4: 1.0, 0.6: 2.0}, "c": {0.2: 0.0, 0.4: 2.0, 0.6: 4.0}}
OBJ = (OBJECTIVES["accuracy"], OBJECTIVES["size_bytes"], OBJECTIVES["latency_ms"])


def accuracy(point, fine_tuned=False):
    drop = sum(DROP[g].get(round(point[g], 9), 0.0) for g in "abc")
    return 0.9 - drop * (0.5 if fine_tuned else 1.0)


def latency(point):
    return BASE_MS - sum(SAVE[g].get(round(point[g], 9), 0.0) for g in "abc")


def predict_latency(channels):
    """The latency model, here exact: ``latency`` of the structure."""
    return latency({g: round(1 - c / 100, 9) for g, c in channels.items()})


def interacting(channels):
    """A latency model where savings do not add up: each layer costs its kept inputs x kept outputs."""
    a, b, c = (channels[g] / 100 for g in "abc")
    return BASE_MS * (a * b + b * c + c * a) / 3


def evaluate(point):
    stage = stage_of(point)
    return Outcome("ok", (accuracy(point, fine_tuned=stage != "proxy"), 1000.0 - latency(point), latency(point)), {})


def make(name, **settings):
    return make_searcher(name, SPACE, **{"seed": 0, "objectives": OBJ, "predict_latency": predict_latency,
                                         "base_latency_ms": BASE_MS, **settings})


def drain(searcher):
    """Ask until WAIT or None; returns the (id, point) suggestions and what stopped it."""
    asked = []
    while True:
        suggestion = searcher.ask()
        if suggestion is None or suggestion == WAIT:
            return asked, suggestion
        asked.append(suggestion)


def groups_of(point):
    return {g: round(point[g], 9) for g in "abc"}


def brute_force(budget):
    """The best additive prediction under ``budget`` over every combination of the grids."""
    best = None
    for combo in itertools.product(*(p.grid() for p in SPACE.params)):
        point = dict(zip("abc", combo))
        if latency(point) <= budget + 1e-9 and (best is None or accuracy(point) > best + 1e-12):
            best = accuracy(point)
    return best


# ---- sensitivity ---------------------------------------------------------------------------------------------------

def run_phase_a(s):
    asked, stop = drain(s)
    assert stop == WAIT and all(stage_of(p) == "proxy" for _, p in asked)
    for sid, point in asked:
        s.tell(sid, evaluate(point))
    return asked


def test_sensitivity_evaluates_each_group_alone_then_allocates_within_budget(tmp_path):
    s = make("sensitivity", run_dir=RunDir(tmp_path), trials=5,
             constraints=[Constraint.parse("latency_ms <= base * 0.6", "constraints")])
    asked = run_phase_a(s)
    points = [groups_of(p) for _, p in asked]
    assert len(points) == 1 + 3 * 3 and points[0] == {"a": 0.0, "b": 0.0, "c": 0.0}  # the reference first
    alone = [[(g, r) for g, r in p.items() if r] for p in points[1:]]  # each group alone, the others at their low
    assert all(len(a) == 1 for a in alone)
    assert sorted(a[0] for a in alone) == [(g, r) for g in "abc" for r in (0.2, 0.4, 0.6)]
    assert all(p["criterion"] == "l1" for _, p in asked)

    full, stop = drain(s)
    assert stop is None and 1 <= len(full) <= 5
    assert all(stage_of(p) == "full" for _, p in full)
    assert len({tuple(groups_of(p).items()) for _, p in full}) == len(full)  # distinct allocations
    first = groups_of(full[0][1])  # the constraint's bound: 7.2 ms
    assert latency(first) <= 0.6 * BASE_MS and accuracy(first) == pytest.approx(brute_force(0.6 * BASE_MS))
    record = json.loads((tmp_path / SENSITIVITY_FILE).read_text())
    for allocation, (_, point) in zip(record["allocations"], full):
        assert allocation["ratios"] == groups_of(point)
        assert allocation["predicted_latency_ms"] == pytest.approx(latency(point))
        assert allocation["predicted_latency_ms"] <= allocation["budget"] + 1e-9
        assert allocation["predicted_accuracy"] == pytest.approx(accuracy(point))
    assert (tmp_path / PLOT_FILE).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("budget", [3.5, 5.5, 6.5, 7.5, 8.5, 9.5, 10.5, 11.5])
def test_the_knapsack_is_optimal_for_the_additive_model(tmp_path, budget):
    s = make("sensitivity", run_dir=RunDir(tmp_path))
    run_phase_a(s)
    drain(s)
    curves = read_curves(RunDir(tmp_path))
    allocation = Knapsack(curves, "latency_ms").solve(budget)
    assert allocation.cost == pytest.approx(latency(allocation.ratios)) and allocation.cost <= budget
    assert allocation.score == pytest.approx(brute_force(budget))
    assert Knapsack(curves, "latency_ms").solve(2.5) is None  # below the 3 ms every group at its high reaches


def test_budgets_spread_between_the_fastest_allocation_and_the_base():
    s = make("sensitivity", trials=4)
    run_phase_a(s)
    full, _ = drain(s)
    assert len(full) == 4
    lat = [latency(p) for _, p in full]
    assert 3.0 < lat[0] < max(lat) and min(lat) == pytest.approx(3.0)  # the middle first, the fastest among them
    assert max(lat) <= 0.95 * BASE_MS
    assert all(stage_of(p) == "full" for _, p in full)
    assert spread_order(5) == [2, 1, 3, 0, 4] and spread_order(1) == [0] and spread_order(2) == [0, 1]
    for n in range(1, 40):
        assert sorted(spread_order(n)) == list(range(n))


def test_allocations_meet_the_budget_as_the_latency_model_predicts_the_whole_structure(tmp_path):
    s = make("sensitivity", run_dir=RunDir(tmp_path), trials=6, predict_latency=interacting,
             constraints=[Constraint.parse("latency_ms <= 6", "constraints")])
    run_phase_a(s)
    full, _ = drain(s)
    record = json.loads((tmp_path / SENSITIVITY_FILE).read_text())
    assert len(full) == len(record["allocations"]) >= 4
    for allocation, (_, point) in zip(record["allocations"], full):
        modelled = interacting({g: round(100 * (1 - point[g])) for g in "abc"})
        assert allocation["predicted_latency_ms"] == pytest.approx(modelled) and modelled <= allocation["budget"]
        assert allocation["additive_latency_ms"] == pytest.approx(latency(point))  # the measured savings, summed
    assert record["allocations"][0]["budget"] == 6


def test_with_the_search_budget_the_first_allocation_meets_its_tightened_bound_in_its_model(tmp_path):
    """Under the stage-0 engine the budget's latency model (not ``predict_latency``) prices allocations, and the
    constraint's bound is tightened by the model's error."""
    from types import SimpleNamespace

    s = make("sensitivity", run_dir=RunDir(tmp_path), trials=1, predict_latency=predict_latency,
             constraints=[Constraint.parse("latency_ms <= 6", "constraints")])
    s.use_budget(SimpleNamespace(model=SimpleNamespace(predict=interacting), margin=0.1))
    run_phase_a(s)
    full, _ = drain(s)
    (_, point), = full
    modelled = interacting({g: round(100 * (1 - point[g])) for g in "abc"})
    record = json.loads((tmp_path / SENSITIVITY_FILE).read_text())["allocations"][0]
    assert record["budget"] == pytest.approx(6 * 0.9) and record["predicted_latency_ms"] == pytest.approx(modelled)
    assert modelled <= 6 * 0.9


def test_cached_curves_skip_phase_a(tmp_path):
    first = make("sensitivity", run_dir=RunDir(tmp_path / "run"), trials=3)
    run_phase_a(first)
    planned = [groups_of(p) for _, p in drain(first)[0]]

    again = make("sensitivity", run_dir=RunDir(tmp_path / "run"), trials=3)  # same run directory (e.g. resumed)
    full, _ = drain(again)
    assert [groups_of(p) for _, p in full] == planned and all(stage_of(p) == "full" for _, p in full)

    elsewhere = make("sensitivity", run_dir=RunDir(tmp_path / "other"), trials=3)  # no cache key: measured again
    assert stage_of(elsewhere.ask()[1]) == "proxy"


def test_a_cache_key_shares_curves_across_run_directories(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    first = make("sensitivity", run_dir=RunDir(tmp_path / "one"), trials=3, cache_key="base-sha")
    run_phase_a(first)
    drain(first)
    tighter = make("sensitivity", run_dir=RunDir(tmp_path / "two"), trials=2, cache_key="base-sha",
                   constraints=[Constraint.parse("latency_ms <= 6", "constraints")])
    full, _ = drain(tighter)
    assert len(full) == 2 and latency(full[0][1]) <= 6 and all(stage_of(p) == "full" for _, p in full)
    assert read_curves(RunDir(tmp_path / "two")) == read_curves(RunDir(tmp_path / "one"))
    other_base = make("sensitivity", run_dir=RunDir(tmp_path / "three"), cache_key="other-sha")
    assert stage_of(other_base.ask()[1]) == "proxy"


def test_failed_stage0_points_drop_out_of_the_curves(tmp_path):
    s = make("sensitivity", run_dir=RunDir(tmp_path), trials=3)
    asked, _ = drain(s)
    for sid, point in asked:
        s.tell(sid, Outcome("failed") if groups_of(point) == {"a": 0.0, "b": 0.0, "c": 0.6} else evaluate(point))
    full, _ = drain(s)
    assert full and all(groups_of(p)["c"] != 0.6 for _, p in full)
    assert 0.6 not in read_curves(RunDir(tmp_path)).points["c"]


def test_sensitivity_resumes_from_replayed_rows_without_repeating_them():
    first = make("sensitivity", trials=3)
    asked, _ = drain(first)
    done = asked[:6]  # the driver stopped with these told and the rest running
    resumed = make("sensitivity", trials=3)
    for _, point in done:
        resumed.replay(point, evaluate(point))
    rest, stop = drain(resumed)
    assert stop == WAIT and {tuple(groups_of(p).items()) for _, p in rest} == {
        tuple(groups_of(p).items()) for _, p in asked[6:]}
    for sid, point in rest:
        resumed.tell(sid, evaluate(point))
    full, _ = drain(resumed)

    again = make("sensitivity", trials=3)  # stopped once more, after the first full trial
    for _, point in asked:
        again.replay(point, evaluate(point))
    again.replay({k: v for k, v in full[0][1].items() if k != STAGE_KEY}, evaluate(full[0][1]))
    remaining, stop = drain(again)
    assert stop is None and [p for _, p in remaining] == [p for _, p in full[1:]]


def test_sensitivity_allocates_on_macs_under_a_macs_constraint():
    objectives = (OBJECTIVES["accuracy"], OBJECTIVES["macs"])
    s = make_searcher("sensitivity", SPACE, objectives=objectives, trials=2,
                      constraints=[Constraint.parse("macs <= base * 0.5", "constraints")])
    asked, _ = drain(s)
    for sid, point in asked:
        s.tell(sid, Outcome("ok", (accuracy(point), 1e6 * latency(point)), {}))
    full, _ = drain(s)
    assert s.metric == "macs" and 1e6 * latency(full[0][1]) <= 0.5 * 1e6 * BASE_MS


# ---- greedy --------------------------------------------------------------------------------------------------------

def test_greedy_proposes_per_group_keeps_the_best_and_walks_down():
    s = make("greedy", greedy_step=0.1, short_epochs=0.25)
    kept, best = [], None
    while True:
        proposals, stop = drain(s)
        fulls = [p for _, p in proposals if stage_of(p) == "full"]
        shorts = [(sid, p) for sid, p in proposals if stage_of(p) == "short"]
        if fulls:
            assert len(fulls) == 1 and groups_of(fulls[0]) == groups_of(best)  # the best proposal, fine-tuned in full
            kept.append(fulls[0])
        if stop is None:
            assert not shorts
            break
        assert stop == WAIT and shorts and all(p[EPOCHS_KEY] == 0.25 for _, p in shorts)
        current, current_ms = s.path[-1]
        for _, p in shorts:  # one proposal per group that can meet the step: that group raised, the others as they are
            changed = [g for g in "abc" if p[g] != current[g]]
            assert len(changed) == 1 and p[changed[0]] > current[changed[0]]
            channels = {g: round(100 * (1 - p[g])) for g in "abc"}
            assert predict_latency(channels) <= current_ms - 0.1 * BASE_MS + 1e-9
        assert len({next(g for g in "abc" if p[g] != current[g]) for _, p in shorts}) == len(shorts)
        for sid, p in shorts[:-1]:
            s.tell(sid, evaluate(p))
            assert s.ask() == WAIT  # the iteration waits for all its proposals
        s.tell(shorts[-1][0], evaluate(shorts[-1][1]))
        best = max((p for _, p in shorts), key=lambda p: accuracy(p, fine_tuned=True))
    assert len(kept) >= 3
    measured = [latency(p) for p in kept]  # latency_ms is an objective: the walk follows the measured latency
    assert all(a > b for a, b in zip(measured, measured[1:]))
    predicted = [predict_latency({g: round(100 * (1 - p[g])) for g in "abc"}) for p in kept]
    assert all(a > b for a, b in zip(predicted, predicted[1:]))


def test_greedy_screens_proposals_at_stage_0_and_short_tunes_only_its_shortlist():
    s = make("greedy", greedy_step=0.1, short_epochs=0.25, greedy_shortlist=2)
    proxies, stop = drain(s)
    assert stop == WAIT and len(proxies) == 3 and all(stage_of(p) == "proxy" and EPOCHS_KEY not in p
                                                      for _, p in proxies)
    for sid, p in proxies[:-1]:
        s.tell(sid, evaluate(p))
        assert s.ask() == WAIT  # the shortlist needs every proposal's stage-0 outcome
    s.tell(proxies[-1][0], evaluate(proxies[-1][1]))
    shorts, stop = drain(s)
    ranked = sorted((p for _, p in proxies), key=lambda p: (-accuracy(p), latency(p)))
    assert stop == WAIT and [groups_of(p) for _, p in shorts] == [groups_of(p) for p in ranked[:2]]
    assert all(stage_of(p) == "short" and p[EPOCHS_KEY] == 0.25 for _, p in shorts)
    for sid, p in shorts:
        s.tell(sid, evaluate(p))
    asked, _ = drain(s)
    full = asked[0][1]  # the best after its short fine-tune, in full; then the next iteration's screening
    assert stage_of(full) == "full" and groups_of(full) == groups_of(ranked[0])
    assert asked[1:] and all(stage_of(p) == "proxy" for _, p in asked[1:])
    # resumed from its rows: nothing evaluated again, the next iteration's screening comes next
    resumed = make("greedy", greedy_step=0.1, short_epochs=0.25, greedy_shortlist=2)
    for _, p in [*proxies, *shorts]:
        resumed.replay(p, evaluate(p))
    resumed.replay({k: v for k, v in full.items() if k != STAGE_KEY}, evaluate(full))
    nxt, _ = drain(resumed)
    assert nxt and all(stage_of(p) == "proxy" for _, p in nxt)
    assert [groups_of(p) for p, _ in resumed.path] == [groups_of(p) for p, _ in s.path]


def test_greedy_without_a_shortlist_short_tunes_every_proposal():
    s = make("greedy", greedy_shortlist=0)
    proposals, _ = drain(s)
    assert len(proposals) == 3 and all(stage_of(p) == "short" for _, p in proposals)


def test_greedy_stops_when_no_proposal_finishes():
    s = make("greedy")
    proposals, stop = drain(s)
    for sid, _ in proposals:
        s.tell(sid, Outcome("failed"))
    assert s.ask() is None


def test_greedy_uses_the_prediction_when_latency_is_not_an_objective():
    objectives = (OBJECTIVES["accuracy"], OBJECTIVES["macs"])
    s = make_searcher("greedy", SPACE, objectives=objectives, predict_latency=predict_latency, greedy_step=0.2)
    proposals, _ = drain(s)
    for sid, point in proposals:
        s.tell(sid, Outcome("ok", (accuracy(point), 1.0), {}))
    _, point = s.ask()
    assert stage_of(point) == "full"
    assert s.path[-1][1] == pytest.approx(predict_latency({g: round(100 * (1 - point[g])) for g in "abc"}))


def test_greedy_resumes_from_replayed_rows_without_repeating_them():
    first = make("greedy")
    rows = []  # (point, outcome) in the order trials.parquet would hold them
    for _ in range(3):
        proposals, _ = drain(first)
        for sid, point in proposals:
            outcome = evaluate(point)
            if stage_of(point) == "short":
                first.tell(sid, outcome)
            rows.append((point, outcome))
    fulls_so_far = [p for p, _ in rows if stage_of(p) == "full"]
    assert len(fulls_so_far) == 2
    # the third iteration's proposals are told; the driver stops before asking again
    resumed = make("greedy")
    for point, outcome in rows:
        replayed = {k: v for k, v in point.items() if k != STAGE_KEY or v != "full"}  # full rows carry no stage
        resumed.replay(replayed, outcome)
    nxt, _ = drain(resumed)
    seen = {(tuple(groups_of(p).items()), stage_of(p)) for p, _ in rows}
    assert nxt and all((tuple(groups_of(p).items()), stage_of(p)) not in seen for _, p in nxt)
    assert stage_of(nxt[0][1]) == "full"  # the best of the third iteration, fine-tuned in full
    assert [groups_of(p) for p, _ in resumed.path[1:]] == [groups_of(p) for p, _ in first.path[1:]] + [
        groups_of(nxt[0][1])]


def test_greedy_needs_a_latency_model():
    from autoprune import AutopruneError

    with pytest.raises(AutopruneError, match="predict_latency"):
        make_searcher("greedy", SPACE)


def seeded(population=5, warm_start=2, **settings):
    from autoprune.searching.searchers.seeded import SensitivitySeeded

    sensitivity = make("sensitivity", trials=population - warm_start, **settings)
    target = make("nsga2", population=population, warm_start=warm_start)
    return SensitivitySeeded(sensitivity, target, target), sensitivity


def test_seed_from_sensitivity_starts_nsga2_from_the_allocations_after_the_uniform_points():
    s, sensitivity = seeded()
    assert s.name == "nsga2"
    asked = run_phase_a(s)  # stage 0 first: the reference and each group alone at each ratio
    assert len(asked) == 1 + 3 * 3 and all(stage_of(p) == "proxy" for _, p in asked)
    first = []
    for _ in range(5):  # the first generation: 2 uniform policies, then the 3 allocations
        sid, point = s.ask()
        assert stage_of(point) == "full"
        first.append(groups_of(point))
        s.tell(sid, evaluate(point))
    assert all(len(set(p.values())) == 1 for p in first[:2])  # the uniform warm start
    planned = [groups_of(a.point("l1")) for a in sensitivity.plan]
    assert len(planned) == 3 and all(latency(p) < BASE_MS for p in planned)  # allocations prune something
    fresh = [p for p in planned if p not in first[:2]]  # an allocation that is a uniform policy runs once
    assert fresh and first[2:2 + len(fresh)] == fresh
    sid, point = s.ask()  # then evolution goes on with points no trial has taken
    assert groups_of(point) not in first


def test_seed_from_sensitivity_replays_stage0_rows_into_the_curves():
    s, _ = seeded()
    asked = run_phase_a(s)
    again, sensitivity = seeded()
    for _, point in asked:
        again.replay(point, evaluate(point))
    sid, point = again.ask()  # no stage-0 point repeated: the curves are complete
    assert stage_of(point) == "full" and sensitivity.curves is not None


def test_seed_from_sensitivity_is_refused_for_searchers_it_cannot_seed():
    from autoprune.config import load_config
    from autoprune.errors import AutopruneError

    assert load_config(None, ["searcher.seed_from=sensitivity"])["searcher.seed_from"] == "sensitivity"
    with pytest.raises(AutopruneError, match="searcher.seed_from.*'greedy'"):
        load_config(None, ["searcher.seed_from=sensitivity", "searcher.name=greedy"])
    with pytest.raises(AutopruneError, match="searcher.seed_from' must be uniform or sensitivity"):
        load_config(None, ["searcher.seed_from=fastnas"])


def test_seed_from_sensitivity_with_staged_evaluation_replays_each_row_to_its_owner():
    from autoprune.searching.searchers.seeded import SensitivitySeeded
    from autoprune.searching.searchers.staged import StagedSearcher

    def build():
        sensitivity = make("sensitivity", trials=3)
        target = make("nsga2", population=5, warm_start=2)
        return SensitivitySeeded(sensitivity, target, StagedSearcher(target, proxy_trials=4))

    first = build()
    curves = run_phase_a(first)
    staged, stop = drain(first)  # the staged searcher's stage 0: uniform and allocated points among them
    assert stop == WAIT and len(staged) == 4 and all(stage_of(p) == "proxy" for _, p in staged)
    for sid, point in staged:
        first.tell(sid, evaluate(point))
    full, _ = drain(first)
    assert full and all(stage_of(p) == "full" for _, p in full)

    again = build()  # resumed from the rows: phase A, then the staged stage-0 rows (one may repeat a phase-A point)
    for _, point in [*curves, *staged]:
        again.replay(point, evaluate(point))
    sid, point = again.ask()
    assert stage_of(point) == "full" and groups_of(point) == groups_of(full[0][1])


# ---- a task metric to minimise ----------------------------------------------------------------------------------------

ERROR = metric_objective("wer", "min")


def as_error(outcome):
    """The same outcome with a word error rate, 1 - accuracy, in place of accuracy."""
    return Outcome(outcome.state, (1.0 - outcome.values[0], *outcome.values[1:]), outcome.violations)


def drive(name, objectives, convert, **settings):
    """Drive a searcher to the end with exact evaluations; the points it fine-tuned in full, in order."""
    s = make(name, objectives=objectives, **settings)
    fulls = []
    while True:
        asked, stop = drain(s)
        for sid, point in asked:
            fulls += [groups_of(point)] if stage_of(point) == "full" else []
            s.tell(sid, convert(evaluate(point)))
        if stop is None:
            return fulls, s


@pytest.mark.parametrize("name, settings", [("sensitivity", {"trials": 4}), ("greedy", {"greedy_step": 0.1})])
def test_a_metric_to_minimise_is_searched_as_its_mirror_to_maximise(tmp_path, name, settings):
    maximised, _ = drive(name, OBJ, lambda o: o, **settings)
    minimised, s = drive(name, (ERROR, *OBJ[1:]), as_error, **settings)
    assert minimised == maximised and len(minimised) >= 3
    if name == "sensitivity":
        assert s.curves.score == "wer" and not s.curves.maximize
        allocation = Knapsack(s.curves, "latency_ms").solve(0.6 * BASE_MS)
        assert allocation.score == pytest.approx(1.0 - brute_force(0.6 * BASE_MS))


def test_with_the_search_budget_a_failed_allocation_is_allocated_again_with_the_refitted_model(tmp_path):
    """The stage-0 engine fails an allocation measured over the bound; the latency model, refitted on that
    measurement, then prices the next allocation for the same budget."""
    from types import SimpleNamespace

    model = SimpleNamespace(predict=predict_latency)
    s = make("sensitivity", run_dir=RunDir(tmp_path), trials=1,
             constraints=[Constraint.parse("latency_ms <= 7.5", "constraints")])
    s.use_budget(SimpleNamespace(model=model, margin=0.0))
    run_phase_a(s)
    (sid, first), = drain(s)[0]
    assert latency(first) <= 7.5
    model.predict = lambda channels: predict_latency(channels) + 1.0  # the refit: 1 ms more everywhere
    s.tell(sid, Outcome("failed"))
    (_, second), = drain(s)[0]
    assert groups_of(second) != groups_of(first) and latency(second) <= 6.5
