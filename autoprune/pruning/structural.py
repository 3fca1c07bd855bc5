"""Structural pruning of a whole model to a policy: one-shot or iterative, recorded for replay."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterable

import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.graph import build_graph, frozen_layers, group_channels, named_groups
from autoprune.policy import Policy, describe_groups
from autoprune.pruning.criteria import Batch, make_criterion

RECORD_ATTR = "autoprune_record"


@dataclass
class PruneRecord:
    """How a model was pruned: enough to rebuild its structure from the unpruned architecture.

    ``history`` is torch-pruning's pruning history, ``[root_module_name, is_out_channels, removed_indices]``
    in the order applied (what ``replay`` needs); ``kept`` maps each group to the indices, in the
    unpruned model, of the channels it kept; ``channels`` to its channel count before pruning.
    """

    policy: dict[str, Any]
    history: list[list[Any]]
    kept: dict[str, list[int]]
    channels: dict[str, int]

    def channels_after(self) -> dict[str, int]:
        return {name: len(k) for name, k in self.kept.items()}


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
) -> nn.Module:
    """Return a pruned copy of ``model`` with channels physically removed as ``policy`` asks.

    Coupled layers (residual adds, concatenations, depthwise convolutions) are pruned together
    through torch-pruning's dependency graph; the output layer is kept, so the output shape is
    unchanged. ``steps > 1`` reaches the policy iteratively: each step removes an equal share of
    the channels, re-scoring on the current model, and calls ``between_steps(model, step)`` (e.g. a
    short fine-tune) between steps. The record needed to rebuild the structure is attached as
    ``model.autoprune_record``.
    """
    if steps < 1:
        raise AutopruneError(f"steps must be >= 1, got {steps}")
    criterion = make_criterion(policy.criterion, seed)
    pruned = copy.deepcopy(model)
    device = next(pruned.parameters()).device
    example_input = example_input.to(device)
    batches: list[Batch] = []
    if criterion.needs_data:
        if calib_loader is None:
            raise AutopruneError(
                f"criterion '{policy.criterion}' is data-driven: pass calib_loader with (inputs, targets) batches"
            )
        batches = [(x.to(device), y.to(device)) for x, y in islice(iter(calib_loader), calib_batches)]
        if not batches:
            raise AutopruneError(f"criterion '{policy.criterion}' is data-driven but calib_loader gave no batches")

    graph = build_graph(pruned, example_input)
    frozen = frozen_layers(pruned, example_input, policy.ignore)
    groups = describe_groups(graph, frozen)
    policy.check(pruned, groups)
    before = {g.name: g.channels for g in groups}
    target = {name: policy.keep(name, n) for name, n in before.items()}
    kept = {name: list(range(n)) for name, n in before.items()}

    was_training = pruned.training
    for step in range(1, steps + 1):
        criterion.prepare(pruned, batches)
        for name, group in named_groups(graph, frozen):
            goal = before[name] - round((before[name] - target[name]) * step / steps)
            remove = group_channels(group) - goal
            if remove <= 0:
                continue
            order = torch.argsort(criterion.scores(group).cpu(), stable=True)
            idxs = sorted(order[:remove].tolist())
            graph.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, idxs).prune()
            drop = set(idxs)
            kept[name] = [c for i, c in enumerate(kept[name]) if i not in drop]
        pruned.zero_grad(set_to_none=True)
        if between_steps is not None and step < steps:
            between_steps(pruned, step)
    pruned.train(was_training)

    record = PruneRecord(policy.to_dict(), copy.deepcopy(graph.pruning_history()), kept, before)
    setattr(pruned, RECORD_ATTR, record)
    return pruned


def replay(model: nn.Module, history: list[list[Any]], example_input: torch.Tensor) -> nn.Module:
    """Apply a recorded pruning history to a fresh unpruned ``model`` (in place) and return it."""
    graph = build_graph(model, example_input.to(next(model.parameters()).device))
    try:
        graph.load_pruning_history([[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in history])
    except (AttributeError, IndexError, RuntimeError, ValueError) as e:
        raise AutopruneError(f"pruning history does not fit model {type(model).__name__}: {e}") from None
    return model
