"""Which stage-0 candidates the staged search fine-tunes, in which order."""
from test_searchers_contract import SPACE

from autoprune.searching.searchers import Outcome, make_searcher
from autoprune.searching.searchers.base import STAGE_KEY
from autoprune.searching.searchers.staged import StagedSearcher

LATENCY = "latency_ms <= base * 0.6"
# (proxy accuracy, size, latency) and the latency bound's violation of each stage-0 candidate
CANDIDATES = [((0.30, 100.0, 2.0), -0.4),   # the smallest: least accurate, on every front's boundary
              ((0.55, 300.0, 5.5), -0.05),  # the most accurate within the bound
              ((0.50, 250.0, 5.0), -0.1),
              ((0.80, 900.0, 9.0), 0.3),    # more accurate, outside the bound
              ((0.45, 200.0, 4.0), -0.2)]


def staged(structural):
    s = StagedSearcher(make_searcher("random", SPACE, seed=0, warm_start=0), len(CANDIDATES), structural)
    for values, violation in CANDIDATES:
        sid, point = s.ask()
        s.tell(sid, Outcome("ok", values, {LATENCY: violation}))
    return s


def proxy_of(s, point):
    return next(o.values[0] for p, o in s._proxies.values() if {**point, STAGE_KEY: "proxy"} == p)


def test_under_a_structural_budget_the_most_accurate_candidates_within_it_are_fine_tuned_first():
    s = staged(frozenset({LATENCY}))
    order = [proxy_of(s, p) for p in s.selection()]
    assert order == [0.55, 0.50, 0.45, 0.30, 0.80]  # within the bound by proxy accuracy; the one outside last
    sid, point = s.ask()
    assert point[STAGE_KEY] == "full" and proxy_of(s, {k: v for k, v in point.items() if k != STAGE_KEY}) == 0.55


def test_without_a_structural_budget_the_fine_tunes_spread_over_the_stage0_front():
    s = staged(frozenset())
    order = [proxy_of(s, p) for p in s.selection()]
    # one front (no candidate dominates another): its boundary points first (the smallest and the most accurate)
    assert set(order[:2]) == {0.30, 0.80} and sorted(order) == [0.30, 0.45, 0.50, 0.55, 0.80]
