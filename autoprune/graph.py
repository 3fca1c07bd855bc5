"""torch-pruning's dependency graph, with groups named after the module that produces their channels."""
from __future__ import annotations

from typing import Iterator

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import AutopruneError

ROOT_TYPES = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` once and return its dependency graph; an untraceable model is a clear error."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    except AutopruneError:
        raise
    except Exception as e:  # tracing errors come in every type
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AutopruneError(f"cannot trace model {type(model).__name__} for pruning: {first}") from None
    finally:
        model.train(was_training)


def output_layers(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """The last Conv/Linear layer to run: it produces the model's outputs, so it is never pruned."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod))
             for m in model.modules() if isinstance(m, ROOT_TYPES)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return order[-1:]


def frozen_layers(model: nn.Module, example_input: torch.Tensor, ignore: list[str] = ()) -> list[nn.Module]:
    """Layers whose output channels stay: the output layer and the user's ``ignore`` list."""
    return output_layers(model, example_input) + resolve(model, list(ignore), "ignore")


def named_groups(graph: tp.DependencyGraph, ignored: list[nn.Module]) -> Iterator[tuple[str, tp.Group]]:
    """Yield ``(name, group)`` for every prunable group.

    A group is named after the first module, in definition order, whose output channels it prunes:
    e.g. a ResNet stage is named after its stem or first block's convolution.
    """
    position = {name: i for i, name in enumerate(graph._module2name.values())}
    for group in graph.get_all_groups(ignored_layers=list(ignored), root_module_types=ROOT_TYPES):
        producers = [n for n in group_members(graph, group, producers_only=True) if n in position]
        yield min(producers, key=position.__getitem__), group


def group_channels(group: tp.Group) -> int:
    """Number of channels the group's root layer produces."""
    return len(group[0].idxs)


def group_members(graph: tp.DependencyGraph, group: tp.Group, producers_only: bool = False) -> list[str]:
    """Names of the modules whose weights the group shrinks; ``producers_only``: those whose outputs it shrinks."""
    names, seen = graph._module2name, []
    for dep, _ in group:
        module = dep.target.module
        if producers_only and not graph.is_out_channel_pruning_fn(dep.handler):
            continue
        if isinstance(module, nn.Module) and module in names and names[module] not in seen:
            seen.append(names[module])
    return seen


def resolve(model: nn.Module, names: list[str], what: str) -> list[nn.Module]:
    """Look up modules by their ``named_modules`` name; an unknown name is an error naming it."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise AutopruneError(f"{what}: model {type(model).__name__} has no layer '{missing[0]}'")
    return [modules[n] for n in names]
