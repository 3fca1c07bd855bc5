"""Structural pruning of a whole model to a policy: one-shot or iterative, recorded for replay."""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.pruning.criteria import Batch, Criterion, LossFn, Unscorable, make_criterion
from autoprune.pruning.graph import (
    GroupLayout,
    build_graph,
    check_forward,
    frozen_layers,
    group_layout,
    named_groups,
)
from autoprune.pruning.policy import Policy, describe_groups

RECORD_ATTR = "autoprune_record"
FALLBACK = "l1"  # ranks a group whose criterion has nothing to rank it by; recorded in ``criterion_used``
_FELL_BACK = re.compile(r"(?P<used>\w+) \((?P<criterion>\w+): (?P<reason>.+)\)")


@dataclass
class PruneRecord:
    """How a model was pruned: enough to rebuild its structure from the unpruned architecture.

    ``history`` is torch-pruning's pruning history, ``[root_module_name, is_out_channels, removed_indices]``
    in the order applied (what ``replay`` needs); ``kept`` maps each group to the indices, in the
    unpruned model, of the channels it kept; ``channels`` to its channel count before pruning;
    ``criterion_used`` each group whose channels were ranked to what ranked them: the policy's
    criterion, or ``"l1 (<criterion>: <why it could not>)"`` where that criterion had nothing to rank
    the group by (iterative steps that differ are joined by ``" then "``).
    """

    policy: dict[str, Any]
    history: list[list[Any]]
    kept: dict[str, list[int]]
    channels: dict[str, int]
    criterion_used: dict[str, str] = field(default_factory=dict)

    def channels_after(self) -> dict[str, int]:
        """Channels each group has after pruning."""
        return {name: len(k) for name, k in self.kept.items()}

    def criterion_summary(self) -> str:
        """What ranked the channels, in one short string for a results table.

        The policy's criterion when it ranked every group (``"bn_scale"``); otherwise it, followed by
        the groups ranked by something else and why (``"bn_scale; l1 for fc1, fc2 (no batch norm in
        group)"``); ``"none"`` when no group was pruned.
        """
        if not self.criterion_used:
            return "none"
        criterion = str(self.policy.get("criterion", ""))
        others: dict[str, list[str]] = {}
        for group, used in self.criterion_used.items():
            if used == criterion:
                continue
            match = _FELL_BACK.fullmatch(used)
            label = (f"{match['used']} for {{}} ({match['reason']})" if match and match["criterion"] == criterion
                     else f"{used} for {{}}")
            others.setdefault(label, []).append(group)
        parts = [criterion] if sum(map(len, others.values())) < len(self.criterion_used) else []
        parts += [label.format(_some(groups)) for label, groups in others.items()]
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, dicts and strings: what a checkpoint stores."""
        return {"policy": self.policy, "history": self.history, "kept": self.kept, "channels": self.channels,
                "criterion_used": self.criterion_used}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneRecord:
        """Read ``to_dict``'s output; records saved before ``criterion_used`` existed load with it empty."""
        return cls(d["policy"], d["history"], d["kept"], d["channels"], dict(d.get("criterion_used", {})))


def _some(names: list[str], shown: int = 3) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown - 1])} and {len(names) - shown + 1} more groups"


def prune(
    model: nn.Module,
    policy: Policy,
    example_input: torch.Tensor,
    calib_loader: Iterable[Batch] | None = None,
    *,
    steps: int = 1,
    between_steps: Callable[[nn.Module, int], None] | None = None,
    calib_batches: int = 8,
    seed: int = 0,
    loss: LossFn | None = None,
    rankings: Rankings | None = None,
) -> nn.Module:
    """Return a pruned copy of ``model`` with channels physically removed as ``policy`` asks.

    Coupled layers (residual adds, concatenations, depthwise convolutions) are pruned together
    through torch-pruning's dependency graph; the output layer is kept, so the output shape is
    unchanged. No layer loses all its channels: each branch of a concatenation keeps its share of
    the group; grouped convolutions, group norms and attention heads lose the same positions in
    every block (heads keep their number and lose dims). ``steps > 1`` reaches the policy
    iteratively: each step removes an equal share of the channels, re-scoring on the current
    model, and calls ``between_steps(model, step)`` (e.g. a short fine-tune) between steps. The
    record needed to rebuild the structure, and what ranked each group, is attached as
    ``model.autoprune_record``. ``loss``: what the gradient criteria (taylor, hessian) differentiate, one value per
    sample of a calibration batch (default: the cross-entropy of a classifier's outputs against integer labels).
    ``rankings``: ``rank_groups``' scores of ``model`` for the policy's criterion, computed once and reused across
    candidates (one-shot only: an iterative step re-scores the partly pruned model); the result is the same.
    """
    if steps < 1:
        raise AutopruneError(f"steps must be >= 1, got {steps}")
    if rankings is not None and (steps != 1 or rankings.criterion != policy.criterion):
        raise AutopruneError(f"precomputed rankings by '{rankings.criterion}' serve one-shot pruning by that "
                             f"criterion, not {steps} step(s) by '{policy.criterion}'")
    criterion = make_criterion(policy.criterion, seed, loss)
    fallback = make_criterion(FALLBACK)
    pruned = copy.deepcopy(model)
    device = next(pruned.parameters()).device
    example_input = example_input.to(device)
    batches = _calibration(criterion, calib_loader, calib_batches, device) if rankings is None else []

    graph = build_graph(pruned, example_input)
    frozen = frozen_layers(pruned, example_input, policy.ignore)
    named = list(named_groups(graph, frozen))
    groups = describe_groups(graph, frozen, named=named)
    policy.check(pruned, groups)
    before = {g.name: g.channels for g in groups}
    segment_units = {g.name: [c // g.channel_groups for c in g.segments] for g in groups}
    kept = {name: list(range(n)) for name, n in before.items()}
    used: dict[str, list[str]] = {}

    was_training = pruned.training
    for step in range(1, steps + 1):
        if step > 1:
            named = list(named_groups(graph, frozen))
        # every group is scored on the same model before any is pruned
        ranked = rankings if rankings is not None else _score_groups(criterion, fallback, pruned, batches, named)
        removals = []
        for name, group in named:
            layout = group_layout(name, group)
            goal = policy.kept_units(name, segment_units[name], layout.unit_size, step / steps)
            drop = [len(seg) - k for seg, k in zip(layout.segments, goal, strict=True)]
            if not any(d > 0 for d in drop):
                continue
            scores, ranked_by = ranked.choose(name, layout, drop, criterion.name)
            if ranked_by not in used.setdefault(name, []):
                used[name].append(ranked_by)
            idxs = sorted(c for seg, d in zip(layout.segments, drop) if d > 0
                          for u in _lowest(scores, seg, d) for c in layout.units[u])
            removals.append((name, group[0].dep, idxs))
        for name, dep, idxs in removals:
            graph.get_pruning_group(dep.target.module, dep.handler, idxs).prune()
            drop_set = set(idxs)
            kept[name] = [c for i, c in enumerate(kept[name]) if i not in drop_set]
        pruned.zero_grad(set_to_none=True)
        if between_steps is not None and step < steps:
            between_steps(pruned, step)
    pruned.train(was_training)
    _sync_attributes(pruned)
    check_forward(pruned, example_input)

    record = PruneRecord(policy.to_dict(), copy.deepcopy(graph.pruning_history()), kept, before,
                         {name: " then ".join(used[name]) for name in before if name in used})
    setattr(pruned, RECORD_ATTR, record)
    return pruned


def _calibration(criterion: Criterion, calib_loader: Iterable[Batch] | None, count: int,
                 device: torch.device) -> list[Batch]:
    """The calibration batches a data-driven criterion scores on, on ``device`` (none for a weight-only one)."""
    if not criterion.needs_data:
        return []
    if calib_loader is None:
        raise AutopruneError(f"criterion '{criterion.name}' is data-driven: pass calib_loader with (inputs, targets) "
                             f"batches")
    batches = [(x.to(device), y.to(device) if isinstance(y, torch.Tensor) else y)
               for x, y in islice(iter(calib_loader), count)]
    if not batches:
        raise AutopruneError(f"criterion '{criterion.name}' is data-driven but calib_loader gave no batches")
    return batches


def _unit_scores(channel_scores: torch.Tensor, layout: GroupLayout) -> torch.Tensor:
    """One score per unit: the mean over its channels (every block of a grouped layer)."""
    return channel_scores.detach().float().cpu()[torch.tensor(layout.units)].mean(1)


@dataclass
class GroupScores:
    """One group's unit scores by a criterion (None, with the reason, where it had nothing to rank by) and by the
    fallback."""

    primary: torch.Tensor | None
    reason: str | None
    fallback: torch.Tensor


@dataclass
class Rankings:
    """Every group's unit scores on one model by one criterion: what ``prune`` ranks channels by. A magnitude or
    gradient ranking does not change with the ratio, so one ``Rankings`` serves every candidate pruned from that
    model (a candidate is then a slicing of precomputed orders)."""

    criterion: str
    groups: dict[str, GroupScores]

    def choose(self, name: str, layout: GroupLayout, drop: list[int], criterion: str) -> tuple[torch.Tensor, str]:
        """The scores that rank group ``name`` when ``drop`` units leave each segment, and what ranked them: the
        criterion, or the fallback and why (the criterion could not score it, or tied within a pruned segment)."""
        scores = self.groups[name]
        if scores.primary is not None:
            tied = [len(seg) > 1 and bool(scores.primary[seg].max() == scores.primary[seg].min())
                    for seg, d in zip(layout.segments, drop) if d > 0]
            if criterion == FALLBACK or not any(tied):
                return scores.primary, criterion
            reason = ("every channel scored the same" if len(layout.segments) == 1
                      else "every channel of a concatenated branch scored the same")
        else:
            reason = scores.reason or ""
        return scores.fallback, f"{FALLBACK} ({criterion}: {reason})"


def _score_groups(criterion: Criterion, fallback: Criterion, model: nn.Module, batches: list[Batch],
                  named: list[tuple[str, tp.Group]]) -> Rankings:
    criterion.prepare(model, batches)
    groups = {}
    for name, group in named:
        layout = group_layout(name, group)
        try:
            primary, reason = _unit_scores(criterion.scores(group), layout), None
        except Unscorable as e:
            primary, reason = None, str(e)
        groups[name] = GroupScores(primary, reason, _unit_scores(fallback.scores(group), layout))
    return Rankings(criterion.name, groups)


def rank_groups(model: nn.Module, criterion_name: str, example_input: torch.Tensor,
                calib_loader: Iterable[Batch] | None = None, *, ignore: list[str] | None = None,
                calib_batches: int = 8, seed: int = 0, loss: LossFn | None = None) -> Rankings:
    """The channel ranking ``prune`` would compute for ``criterion_name`` on ``model`` (one-shot), computed once.

    Args:
        model: the unpruned model (left unchanged: a copy is scored).
        criterion_name: a criterion of ``autoprune.pruning.criteria.REGISTRY``.
        example_input: an input batch for tracing.
        calib_loader: calibration batches for data-driven criteria.
        ignore: layers left alone (the policy's ``ignore``).
        calib_batches, seed, loss: as for ``prune``.

    Returns:
        The unit scores of every prunable group, for ``prune(..., rankings=...)``.
    """
    criterion = make_criterion(criterion_name, seed, loss)
    scored = copy.deepcopy(model)
    device = next(scored.parameters()).device
    example_input = example_input.to(device)
    batches = _calibration(criterion, calib_loader, calib_batches, device)
    graph = build_graph(scored, example_input)
    named = list(named_groups(graph, frozen_layers(scored, example_input, ignore or [])))
    return _score_groups(criterion, make_criterion(FALLBACK), scored, batches, named)


def _lowest(scores: torch.Tensor, segment: list[int], count: int) -> list[int]:
    """The ``count`` units of ``segment`` with the lowest scores (ties: the first in order)."""
    order = torch.argsort(scores[segment], stable=True)[:count]
    return [segment[i] for i in order.tolist()]


def _sync_attributes(model: nn.Module) -> None:
    """Update widths that models keep as plain ints beside their layers (torchvision ViT's ``hidden_dim``)."""
    from torchvision.models.vision_transformer import VisionTransformer

    for module in model.modules():
        if isinstance(module, VisionTransformer):
            module.hidden_dim = module.conv_proj.out_channels


def replay(model: nn.Module, history: list[list[Any]], example_input: torch.Tensor) -> nn.Module:
    """Apply a recorded pruning history to a fresh unpruned ``model`` (in place) and return it."""
    graph = build_graph(model, example_input.to(next(model.parameters()).device))
    try:
        graph.load_pruning_history([[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in history])
    except (AttributeError, IndexError, RuntimeError, ValueError) as e:
        raise AutopruneError(f"pruning history does not fit model {type(model).__name__}: {e}") from None
    _sync_attributes(model)
    return model
