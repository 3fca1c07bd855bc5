"""``sensitivity``: per-group stage-0 sensitivity curves, then ratios allocated to latency (or MACs) budgets.

What NVIDIA ModelOpt FastNAS and AIMET's greedy ratio selection do, on measured latency.

Phase A evaluates at stage 0 (prune, recalibrate batch norm, the task's metric on its proxy split; seconds each)
the all-low point (the reference) and, for every group and every ratio of its grid above its low, that group pruned
alone at that ratio (every other group at its low), with the first criterion of the space. Each outcome gives the
structure's proxy metric and its measured latency, size and MACs (the objectives; latency from ``predict_latency`` when it
is not one). The curves go to ``sensitivity.json`` in the run directory and, given a ``cache_key`` setting (the
identity of the base checkpoint and of the proxy evaluation), to ``$AUTOPRUNE_CACHE_DIR/sensitivity/``: a search
that finds curves with its key in either skips phase A. ``sensitivity.png`` plots them.

Phase B allocates one ratio per group for each budget: the predicted metric is the reference's proxy value worsened
by the sum of each group's drop, the predicted cost the reference's cost minus the sum of each group's saving
(both additive), the metric made best subject to predicted cost <= budget. That is a multiple-choice knapsack, solved by
dynamic programming over savings discretised into ``BINS`` bins, rounded down so that an allocation never exceeds
its budget in prediction. The cost is latency, or MACs when a ``macs <=`` constraint exists and no ``latency_ms <=``
one. Savings do not add up: two groups that shrink the inputs and the outputs of one layer save less together than
apart, and summed measurement noise grows with the number of groups (on ResNet-20 the sum of the single-group
savings exceeds the base's latency). So, given the latency model (``predict_latency``, or ``predict_macs``), the
additive budget is bisected until the model predicts the allocated structure within the real budget, as FastNAS
searches its threshold against the FLOPs of the whole subnet. Budgets: the constraint's bound first, then the rest
of the trial budget (``trials``) spread between the lowest cost an allocation reaches and 0.95 x the base's cost,
in an order whose every prefix spreads (the middle, the quarters, ..., both ends last), then midpoints until that many
distinct allocations exist. Each distinct allocation is one full trial.

The searcher does not warm-start with uniform policies: every full trial it spends is an allocation.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autoprune.config import DEFAULTS, Constraint
from autoprune.errors import AutopruneError
from autoprune.searching.searchers.base import WAIT, Outcome, Searcher
from autoprune.searching.searchers.points import (
    Key,
    Predict,
    StageBook,
    channels,
    full_structure,
    low_point,
    policy_key,
    score_index,
)
from autoprune.searching.space import CRITERION_KEY, SearchSpace
from autoprune.searching.storage import RunDir

SENSITIVITY_FILE = "sensitivity.json"
PLOT_FILE = "sensitivity.png"
BINS = 400       # resolution of the knapsack over the total range of savings
HEADROOM = 0.95  # the loosest budget, as a fraction of the base model's cost


@dataclass(frozen=True)
class Curves:
    """Stage-0 sensitivity: the metrics of the all-low point (the reference) and of each group pruned alone at each
    ratio of its grid; an evaluation that failed is left out. Metrics: each objective's value (the task's metric,
    ``score``, is its proxy value), plus ``latency_ms`` and ``macs`` predicted where they are not objectives."""

    criterion: str
    low: dict[str, float]                              # group -> its low ratio (the reference's)
    reference: dict[str, float]
    points: dict[str, dict[float, dict[str, float]]]   # group -> ratio -> metrics
    score: str = "accuracy"                            # the task's metric
    maximize: bool = True                              # its direction

    def drop(self, metrics: dict[str, float]) -> float:
        """How much worse than the reference ``metrics`` score (negative: better)."""
        change = self.reference[self.score] - metrics[self.score]
        return change if self.maximize else -change

    def to_json(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "score": self.score, "maximize": self.maximize, "low": self.low,
                "reference": self.reference,
                "curves": [{"group": g, "ratio": r, **m} for g, by_ratio in self.points.items()
                           for r, m in by_ratio.items()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Curves":
        points: dict[str, dict[float, dict[str, float]]] = {g: {} for g in data["low"]}
        for row in data["curves"]:
            metrics = {k: float(v) for k, v in row.items() if k not in ("group", "ratio")}
            points[row["group"]][float(row["ratio"])] = metrics
        return cls(data["criterion"], {g: float(r) for g, r in data["low"].items()},
                   {k: float(v) for k, v in data["reference"].items()}, points, data.get("score", "accuracy"),
                   bool(data.get("maximize", True)))


@dataclass(frozen=True)
class Allocation:
    """One ratio per group for a budget, with its predictions."""

    budget: float
    ratios: dict[str, float]
    additive: float  # the knapsack's cost: the reference's minus the sum of the savings (latency in ms, or MACs)
    score: float     # the task's metric on its proxy split, predicted (additive)
    cost: float      # the whole structure's cost as the latency (MACs) model predicts it; additive without one

    def point(self, criterion: str) -> dict[str, Any]:
        return {**self.ratios, CRITERION_KEY: criterion}


class Knapsack:
    """The multiple-choice knapsack over the curves: per group, its low (no saving, no drop) or one measured ratio.

    One dynamic programme serves every budget: ``best[s]`` is the least total drop whose discretised total saving is
    exactly ``s`` bins; a budget needs at least ``ceil(required saving / unit)`` bins.
    """

    def __init__(self, curves: Curves, metric: str, bins: int = BINS) -> None:
        self.curves, self.metric = curves, metric
        self.ref_cost, self.ref_score = curves.reference[metric], curves.reference[curves.score]
        # per group: (ratio, saving, drop), the low first
        self.options = [[(low, 0.0, 0.0)] + [(r, self.ref_cost - m[metric], curves.drop(m))
                                              for r, m in sorted(curves.points[g].items()) if r != low]
                        for g, low in curves.low.items()]
        # savings shifted so that each group's smallest is 0 (a measured "saving" may be negative)
        self.offset = sum(min(s for _, s, _ in opts) for opts in self.options)
        shifted = [[s - min(s for _, s, _ in opts) for _, s, _ in opts] for opts in self.options]
        span = sum(max(row) for row in shifted)
        self.unit = span / bins if span > 0 else 1.0
        quanta = [[math.floor(s / self.unit + 1e-9) for s in row] for row in shifted]
        size = sum(max(q) for q in quanta) + 1
        best = [0.0] + [math.inf] * (size - 1)
        self._parents: list[list[tuple[int, int]]] = []
        for opts, q in zip(self.options, quanta):
            new, parent = [math.inf] * size, [(-1, -1)] * size
            for s, drop in enumerate(best):
                if drop == math.inf:
                    continue
                for i, (_, _, d) in enumerate(opts):
                    if drop + d < new[s + q[i]]:
                        new[s + q[i]], parent[s + q[i]] = drop + d, (s, i)
            best = new
            self._parents.append(parent)
        self._best = best
        # the tightest budget an allocation is guaranteed to meet
        self.lowest = self.ref_cost - self.offset - max(s for s, d in enumerate(best) if d < math.inf) * self.unit

    def solve(self, budget: float) -> Allocation | None:
        """The allocation with the highest predicted score whose predicted cost is <= ``budget`` (None: none is)."""
        need = max(0, math.ceil((self.ref_cost - budget - self.offset) / self.unit - 1e-9))
        reachable = [s for s in range(need, len(self._best)) if self._best[s] < math.inf]
        if not reachable:
            return None
        s = min(reachable, key=lambda s: (round(self._best[s], 12), -s))  # ties: the larger saving
        chosen: list[int] = []
        for parent in reversed(self._parents):
            s, i = parent[s]
            chosen.append(i)
        picks = [opts[i] for opts, i in zip(self.options, reversed(chosen))]
        additive = self.ref_cost - sum(s for _, s, _ in picks)
        drop = sum(d for _, _, d in picks)
        return Allocation(budget, {g: r for g, (r, _, _) in zip(self.curves.low, picks)}, additive,
                          self.ref_score - drop if self.curves.maximize else self.ref_score + drop, additive)


def fit(knapsack: Knapsack, budget: float, model: Predict | None, space: SearchSpace) -> Allocation | None:
    """The allocation for ``budget`` with the best predicted metric whose whole structure ``model`` predicts
    within it (``model``: channels per group -> cost): the largest additive budget that passes, by bisection. Without
    a model, the knapsack's own allocation. None when nothing reaches the budget."""
    if model is None:
        return knapsack.solve(budget)

    def modelled(additive_budget: float) -> Allocation | None:
        a = knapsack.solve(additive_budget)
        return None if a is None else replace(a, budget=budget,
                                              cost=float(model(channels(space, a.point(knapsack.curves.criterion)))))

    lo, hi = knapsack.lowest, max(knapsack.ref_cost, budget)
    best = modelled(hi)
    if best is not None and best.cost <= budget:
        return best
    best = modelled(lo)
    if best is None or best.cost > budget:
        return None
    while hi - lo > knapsack.unit:
        mid = (lo + hi) / 2
        a = modelled(mid)
        if a is not None and a.cost <= budget:
            lo, best = mid, a
        else:
            hi = mid
    return best


def _memoized(model: Predict | None) -> Predict | None:
    """``model`` asked once per structure: the bisections of neighbouring budgets revisit the same allocations."""
    if model is None:
        return None
    seen: dict[tuple[tuple[str, int], ...], float] = {}

    def predict(channels: dict[str, int]) -> float:
        key = tuple(sorted(channels.items()))
        if key not in seen:
            seen[key] = float(model(channels))
        return seen[key]
    return predict


def spread_order(n: int) -> list[int]:
    """``0 .. n-1`` middle first, then the quarters, the eighths, ..., the two ends last: every prefix spreads over
    the range, and the extremes (everything pruned at its high; barely pruned) come when all else has."""
    if n <= 2:
        return list(range(n))
    order: list[int] = []
    parts = 2
    while parts <= 2 * n:
        for i in (round(j * (n - 1) / parts) for j in range(1, parts, 2)):
            if 0 < i < n - 1 and i not in order:
                order.append(i)
        parts *= 2
    return order + [i for i in range(1, n - 1) if i not in order] + [0, n - 1]


def read_curves(run_dir: RunDir) -> Curves | None:
    """The curves a run directory holds, if any."""
    if not run_dir.exists(SENSITIVITY_FILE):
        return None
    return Curves.from_json(json.loads(run_dir.read_text(SENSITIVITY_FILE)))


def curves_key(space: SearchSpace, criterion: str, objectives: Sequence[str], cache_key: str | None) -> str:
    """What the curves depend on besides the base: groups, grids, criterion, rounding, the metrics recorded."""
    what = {"groups": [[p.group, p.channels, p.grid()] for p in space.params], "criterion": criterion,
            "round_to": space.round_to, "ignore": list(space.ignore), "objectives": list(objectives),
            "cache_key": cache_key, **({"small_step": space.small_step} if space.small_step else {})}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def shared_cache(key: str) -> Path:
    """Where curves keyed by ``key`` are kept across searches (``$AUTOPRUNE_CACHE_DIR``, as latency references)."""
    root = Path(os.environ.get("AUTOPRUNE_CACHE_DIR", "~/.cache/autoprune")).expanduser()
    return root / "sensitivity" / f"{key}.json"


def plot_curves(curves: Curves, metric: str) -> bytes:
    """``sensitivity.png``: per group, the metric's proxy value and the cost saved against its ratio."""
    from autoprune.searching.plot import plt

    fig, (acc, saved) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    ref = curves.reference
    for g, low in curves.low.items():
        ratios = [low] + sorted(r for r in curves.points[g] if r != low)
        rows = [ref] + [curves.points[g][r] for r in ratios[1:]]
        acc.plot(ratios, [m[curves.score] for m in rows], marker="o", ms=3, label=g)
        saved.plot(ratios, [ref[metric] - m[metric] for m in rows], marker="o", ms=3, label=g)
    acc.set_ylabel(f"proxy {curves.score} (stage 0)")
    saved.set_ylabel(f"{'latency (ms)' if metric == 'latency_ms' else 'MACs'} saved")
    for ax in (acc, saved):
        ax.set_xlabel("pruning ratio of the group alone")
        ax.grid(alpha=0.3)
    saved.legend(loc="upper left", fontsize=6, ncol=2)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


class SensitivitySearcher(Searcher):
    """Stage-0 curves per group, then knapsack allocations to budgets as full trials (see the module).

    Settings: ``run_dir``, ``predict_latency`` (and ``predict_macs``) for metrics that are not objectives,
    ``base_latency_ms``, ``constraints``, ``trials`` (how many allocations to plan), ``cache_key``.
    """

    name = "sensitivity"

    def __init__(self, space: SearchSpace, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        self.score = self.objectives[score_index(self.objectives, self.name)]  # its proxy value must reach us
        names = [o.name for o in self.objectives]
        self.run_dir: RunDir | None = self.settings.get("run_dir")
        self.predictors: dict[str, Predict | None] = {"latency_ms": self.settings.get("predict_latency"),
                                                      "macs": self.settings.get("predict_macs")}
        self.constraints: list[Constraint] = [c for c in self.settings.get("constraints") or [] if c.op == "<="]
        constrained = {c.metric for c in self.constraints}
        self.metric = "macs" if "macs" in constrained and "latency_ms" not in constrained else "latency_ms"
        if self.metric not in names and self.predictors[self.metric] is None:
            raise AutopruneError(f"config key 'objectives': searcher 'sensitivity' allocates on {self.metric}: "
                                 f"add it to {names}")
        self.count = int(self.settings.get("trials", DEFAULTS["trials"]))
        self.criterion = space.criteria[0]
        cache_key = self.settings.get("cache_key")
        self.key = curves_key(space, self.criterion, names, cache_key)
        self.shared = shared_cache(self.key) if cache_key else None
        reference = low_point(space, self.criterion)
        self.phase_a = [reference] + [{**reference, p.group: r} for p in space.params for r in p.grid() if r > p.low]
        self.book = StageBook("proxy")
        self._asked: set[Key] = set()
        self.curves = self._cached()
        self.plan: list[Allocation] | None = None
        self.replans = 0

    def _cached(self) -> Curves | None:
        """Curves with this search's key from the run directory, else from the shared cache."""
        texts = []
        if self.run_dir is not None and self.run_dir.exists(SENSITIVITY_FILE):
            texts.append(self.run_dir.read_text(SENSITIVITY_FILE))
        if self.shared is not None and self.shared.is_file():
            texts.append(self.shared.read_text())
        for text in texts:
            try:
                data = json.loads(text)
                if data.get("key") == self.key:
                    return Curves.from_json(data)
            except (ValueError, KeyError, TypeError):
                continue  # unreadable: evaluate again
        return None

    def ask(self) -> tuple[int, dict[str, Any]] | str | None:
        if self.curves is None:
            for point in self.phase_a:
                key = policy_key(point)
                if key not in self.book.outcomes and key not in self._asked:
                    self._asked.add(key)
                    return self.book.suggest(point, "proxy")
            if any(policy_key(p) not in self.book.outcomes for p in self.phase_a):
                return WAIT  # the allocation needs every curve
            self.curves = self._build_curves()
            if self.curves is None:
                return None  # the reference failed: nothing to measure drops against
        if self.plan is None:
            self.plan = self._allocate(self.curves)
        for allocation in self.plan:
            full = self.book.suggest_full(allocation.point(self.criterion))
            if full is not None:
                return full
        return None

    def _metrics(self, point: dict[str, Any], values: tuple[float, ...]) -> dict[str, float]:
        metrics = {o.name: float(v) for o, v in zip(self.objectives, values)}
        for name, predict in self.predictors.items():
            if name not in metrics and predict is not None:
                metrics[name] = float(predict(channels(self.space, point)))
        return metrics

    def _build_curves(self) -> Curves | None:
        ok = {}
        for point in self.phase_a:
            outcome = self.book.outcomes[policy_key(point)]
            if outcome.state == "ok" and outcome.values is not None:
                ok[policy_key(point)] = self._metrics(point, outcome.values)
        reference = ok.get(policy_key(self.phase_a[0]))
        if reference is None:
            return None
        low = {p.group: p.low for p in self.space.params}
        points: dict[str, dict[float, dict[str, float]]] = {g: {} for g in low}
        for point in self.phase_a[1:]:
            group = next(g for g in low if point[g] != low[g])
            if policy_key(point) in ok:
                points[group][point[group]] = ok[policy_key(point)]
        curves = Curves(self.criterion, low, reference, points, self.score.name, self.score.maximize)
        if self.shared is not None:
            self.shared.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.shared.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": self.key, **curves.to_json()}))
            tmp.replace(self.shared)
        return curves

    def _base_cost(self, curves: Curves) -> float:
        """The base model's cost: its reference latency, else the all-low point when that is the base, else
        predicted."""
        if self.metric == "latency_ms" and self.settings.get("base_latency_ms"):
            return float(self.settings["base_latency_ms"])
        if all(p.low == 0 for p in self.space.params):
            return curves.reference[self.metric]
        predict = self.predictors[self.metric]
        if predict is None:
            raise AutopruneError(f"searcher 'sensitivity': the base model's {self.metric} is unknown")
        return float(predict(full_structure(self.space)))

    def _cost_model(self) -> tuple[Predict | None, float]:
        """The cost model and the fraction the constraint's bound is tightened by: with the search's budget
        (``use_budget``) and a latency cost, its latency model (refitted as structures are timed) and its margin
        (the model's error), so that an allocation predicted within is measured within; else ``predict_<cost>``."""
        if self.metric == "latency_ms" and self.budget is not None and self.budget.model is not None:
            return self.budget.model.predict, float(self.budget.margin)
        return self.predictors[self.metric], 0.0

    def budgets(self, lowest: float, base: float, margin: float = 0.0) -> tuple[list[float], list[float]]:
        """The first budgets (a constraint's bound, tightened by ``margin``, then an even spread in ``spread_order``)
        and the spread, ascending."""
        bounds = [c.bound({self.metric: base}) * (1.0 - margin) for c in self.constraints if c.metric == self.metric]
        first = [max(min(bounds), lowest)] if bounds else []
        n = self.count - len(first)
        hi = max(HEADROOM * base, lowest)
        spread = [lowest + (hi - lowest) * i / (n - 1) for i in range(n)] if n > 1 else [hi] * n
        return first + [spread[i] for i in spread_order(n)], sorted(set(spread))

    def _allocate(self, curves: Curves) -> list[Allocation]:
        """Distinct allocations for the budgets, refined by midpoints until ``trials`` of them; written out."""
        knapsack = Knapsack(curves, self.metric)
        cost_model, margin = self._cost_model()
        model = _memoized(cost_model)
        base = self._base_cost(curves)
        fastest = knapsack.solve(knapsack.lowest)
        assert fastest is not None  # the knapsack always reaches its own lowest budget
        lowest = fastest.cost if model is None else float(model(channels(self.space, fastest.point(self.criterion))))
        budgets, levels = self.budgets(lowest, base, margin)
        plan: dict[Key, Allocation] = {}

        def add(for_budgets: list[float]) -> None:
            for budget in for_budgets:
                allocation = fit(knapsack, budget, model, self.space)
                if allocation is None or all(r == 0 for r in allocation.ratios.values()):
                    continue  # out of reach, or the base model itself
                plan.setdefault(policy_key(allocation.point(self.criterion)), allocation)

        add(budgets)
        while len(plan) < self.count:
            mids = [(a + b) / 2 for a, b in zip(levels, levels[1:]) if b - a > knapsack.unit]
            if not mids:
                break
            add(mids)
            levels = sorted(levels + mids)
        allocated = list(plan.values())[: self.count]
        if self.run_dir is not None:
            self._write(curves, base, allocated)
        return allocated

    def _write(self, curves: Curves, base: float, plan: list[Allocation]) -> None:
        assert self.run_dir is not None
        record = {"key": self.key, **curves.to_json(), "cost": self.metric, "base_cost": base,
                  "allocations": [{"budget": a.budget, "ratios": a.ratios, f"predicted_{self.metric}": a.cost,
                                   f"additive_{self.metric}": a.additive, f"predicted_{curves.score}": a.score}
                                  for a in plan]}
        self.run_dir.write_text(SENSITIVITY_FILE, json.dumps(record, indent=1))
        self.run_dir.write_bytes(PLOT_FILE, plot_curves(curves, self.metric))

    def tell(self, suggestion_id: int, outcome: Outcome) -> None:
        stage = self.book.running[suggestion_id][0]
        self.book.tell(suggestion_id, outcome)
        if stage == "full" and outcome.state == "failed" and self.budget is not None and self.replans < self.count:
            # e.g. measured over the latency bound before its fine-tune (the stage-0 engine): allocate again, with the
            # latency model refitted on that measurement; allocations already handed out are not handed out again
            self.plan, self.replans = None, self.replans + 1

    def replay(self, point: dict[str, Any], outcome: Outcome) -> None:
        """A stage-0 row fills its curve point; a full row is an allocation already taken."""
        self.book.replay(point, outcome)
