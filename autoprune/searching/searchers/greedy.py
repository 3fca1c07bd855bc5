"""``greedy``: NetAdapt (Yang et al. 2018), one latency step per iteration.

From the all-low point P0 (the base model when every low is 0), iteration k aims at
``T = latency(P_k) - greedy_step x base latency``. For every group it proposes P_k with that group raised to the
smallest ratio of its grid whose predicted latency (``predict_latency``) is <= T (a group that cannot reach T is
left out), and evaluates each proposal at stage 0 (seconds: prune, recalibrate batch norm, the proxy metric); the
``greedy_shortlist`` best of them by that proxy (all, when it is 0 or there are no more proposals than that) get a
short fine-tune of ``short_epochs``, as NetAdapt's every proposal does, and the best after it becomes P_{k+1}, fine-tuned
as a full trial: the models along the way form the front. Screening by the proxy (EagleEye's adaptive-BN
evaluation) makes an iteration cost a few short fine-tunes instead of one per group. The
walk ends when no group can reach the next target (every group at its high, or the steps too coarse), when no
proposal of an iteration finishes, or when the trial budget is spent. ``latency(P_k)`` is the latency measured
in the kept proposal's short trial when ``latency_ms`` is an objective, else predicted.

Only the first criterion of the space is used, and the searcher does not warm-start with uniform policies.
"""
from __future__ import annotations

from typing import Any

from autoprune.config import DEFAULTS
from autoprune.errors import AutopruneError
from autoprune.searching.searchers.base import WAIT, Outcome, Searcher
from autoprune.searching.searchers.points import (
    Predict,
    StageBook,
    channels,
    full_structure,
    low_point,
    policy_key,
    score_index,
)
from autoprune.searching.space import SearchSpace


class GreedySearcher(Searcher):
    """NetAdapt's walk (see the module). Settings: ``predict_latency`` (required), ``base_latency_ms``,
    ``greedy_step``, ``short_epochs``, ``greedy_shortlist``. ``path`` holds (P_k, its latency) for every point kept
    so far."""

    name = "greedy"

    def __init__(self, space: SearchSpace, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        predict: Predict | None = self.settings.get("predict_latency")
        if predict is None:
            raise AutopruneError("searcher 'greedy' needs a latency model (the setting 'predict_latency')")
        self.predict = predict
        self.score = score_index(self.objectives, self.name)
        names = [o.name for o in self.objectives]
        self.measured = names.index("latency_ms") if "latency_ms" in names else None
        base = self.settings.get("base_latency_ms") or predict(full_structure(space))
        self.step = float(self.settings.get("greedy_step", DEFAULTS["searcher"]["greedy_step"])) * float(base)
        self.epochs = float(self.settings.get("short_epochs", DEFAULTS["searcher"]["short_epochs"]))
        self.shortlist = int(self.settings.get("greedy_shortlist", DEFAULTS["searcher"]["greedy_shortlist"]))
        start = low_point(space, space.criteria[0])
        self.path: list[tuple[dict[str, Any], float]] = [(start, self.latency(start))]
        self._proposals: list[dict[str, Any]] | None = None
        self._pending: dict[str, Any] | None = None  # the latest P_k, not yet handed out as a full trial
        self._done = False
        self.book = StageBook("short", self.epochs)

    def latency(self, point: dict[str, Any], outcome: Outcome | None = None) -> float:
        """Measured in ``outcome`` when latency is an objective, else predicted."""
        if outcome is not None and outcome.values is not None and self.measured is not None:
            return float(outcome.values[self.measured])
        return float(self.predict(channels(self.space, point)))

    def ask(self) -> tuple[int, dict[str, Any]] | str | None:
        while True:
            if self._pending is not None:
                point, self._pending = self._pending, None
                full = self.book.suggest_full(point)
                if full is not None:
                    return full
            if self._done:
                return None
            if self._proposals is None:
                self._proposals = self.proposals()
                if not self._proposals:
                    self._done = True
                    return None
            finalists = self._proposals
            if 0 < self.shortlist < len(self._proposals):
                screened = self._proposals_to_screen()
                if screened:  # every proposal at stage 0 first
                    return next_or_wait(self.book, screened, "proxy")
                finalists = self.finalists(self._proposals)
            waiting = [p for p in finalists if policy_key(p) not in self.book.outcomes]
            if waiting:
                return next_or_wait(self.book, waiting, "short")  # the iteration keeps the best of its finalists
            self._advance(finalists)

    def _proposals_to_screen(self) -> list[dict[str, Any]]:
        """Proposals still without a stage-0 outcome (a proposal already short fine-tuned needs none)."""
        assert self._proposals is not None
        proxied = self.book.of("proxy")
        return [p for p in self._proposals if policy_key(p) not in proxied and policy_key(p) not in self.book.outcomes]

    def finalists(self, proposals: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The ``shortlist`` proposals with the best stage-0 metric (ties: the faster); those short fine-tuned before
        (a resumed search) stay among them."""
        proxied, metric = self.book.of("proxy"), self.objectives[self.score]
        ranked = sorted((metric.loss(o.values[self.score]), self.latency(p, o), i) for i, p in enumerate(proposals)
                        if (o := proxied.get(policy_key(p))) is not None and o.state == "ok" and o.values is not None)
        kept = [p for p in proposals if policy_key(p) in self.book.outcomes]
        for _, _, i in ranked:
            if len(kept) >= self.shortlist:
                break
            if proposals[i] not in kept:
                kept.append(proposals[i])
        return kept

    def proposals(self) -> list[dict[str, Any]]:
        """This iteration's proposals: per group, P_k with the group raised to the smallest ratio predicted to meet
        the target. A proposal evaluated before (a resumed search) stands for its group, whatever the prediction."""
        current, latency = self.path[-1]
        target = latency - self.step
        proposals = []
        for p in self.space.params:
            higher = [{**current, p.group: r} for r in p.grid() if r > current[p.group] + 1e-9]
            known = [q for q in higher if policy_key(q) in self.book.outcomes or policy_key(q) in self.book.of("proxy")]
            proposals += known[:1] or next(([q] for q in higher if self.latency(q) <= target), [])
        return proposals

    def _advance(self, proposals: list[dict[str, Any]]) -> None:
        """Keep the proposal with the best metric that finished (ties: the faster) as P_{k+1}, to be fine-tuned in
        full."""
        finished = [(p, self.book.outcomes[policy_key(p)]) for p in proposals]
        metric = self.objectives[self.score]
        ranked = [(metric.loss(o.values[self.score]), self.latency(p, o), i) for i, (p, o) in enumerate(finished)
                  if o.state == "ok" and o.values is not None]
        self._proposals = None
        if not ranked:
            self._done = True
            return
        _, latency, i = min(ranked)
        self.path.append((finished[i][0], latency))
        self._pending = finished[i][0]

    def tell(self, suggestion_id: int, outcome: Outcome) -> None:
        self.book.tell(suggestion_id, outcome)

    def replay(self, point: dict[str, Any], outcome: Outcome) -> None:
        """A stage-0 or short row is a proposal already evaluated, a full row a kept point already fine-tuned."""
        self.book.replay(point, outcome)


def next_or_wait(book: StageBook, points: list[dict[str, Any]], stage: str) -> tuple[int, dict[str, Any]] | str:
    """The first of ``points`` not yet running at ``stage``, as a suggestion; WAIT while all of them run."""
    for point in points:
        if book.pending(point, stage):
            return book.suggest(point, stage)
    return WAIT
