"""torch-pruning's dependency graph, with groups named after the module that produces their channels."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

from autoprune.errors import AutopruneError

ROOT_TYPES = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)
# torch-pruning's stand-ins for tensor operations (cat, split, add, view, ...): they own no channels
_OP_TYPES = {tp.ops.OPTYPE.CONCAT, tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.RESHAPE,
             tp.ops.OPTYPE.UNBIND, tp.ops.OPTYPE.EXPAND, tp.ops.OPTYPE.SLICE, tp.ops.OPTYPE.OUTPUT,
             tp.ops.OPTYPE.CUSTOMIZED}


_RESHAPES = frozenset({torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.unflatten})


@contextmanager
def _module_stack(model: nn.Module) -> Iterator[list[str]]:
    """Yield the names of the modules whose forward is running, innermost last ('' is the model)."""
    stack: list[str] = []

    def leave(module: nn.Module, args: object, output: object) -> None:
        stack.pop()

    hooks = []
    for name, module in model.named_modules():
        hooks.append(module.register_forward_pre_hook(lambda m, a, n=name: stack.append(n)))
        hooks.append(module.register_forward_hook(leave))
    try:
        yield stack
    finally:
        for h in hooks:
            h.remove()


def _where(model: nn.Module, stack: list[str]) -> str:
    return f"'{stack[-1]}'" if stack and stack[-1] else f"{type(model).__name__}.forward"


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class _ReshapeWatch(TorchFunctionMode):
    """Notes the first reshape that torch-pruning cannot follow channels through.

    torch-pruning maps channels through flattening reshapes only: a tensor reshaped to 5 or more
    dimensions from fewer (a channel shuffle, a window partition) breaks its index mapping, and
    pruning such a model fails or never ends.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.found: str | None = None
        self.stack: list[str] = []  # the modules running, from ``_module_stack``
        self._model = model

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (self.found is None and func in _RESHAPES and isinstance(out, torch.Tensor)
                and out.ndim >= 5 > args[0].ndim):
            self.found = f"reshape {tuple(args[0].shape)} -> {tuple(out.shape)} in {_where(self._model, self.stack)}"
        return out

    def check(self) -> None:
        """Raise the error naming the unsupported reshape, if one ran."""
        if self.found is not None:
            raise AutopruneError(f"cannot prune model {type(self._model).__name__}: unsupported op {self.found} "
                                 f"(a channel shuffle or window partition; torch-pruning cannot follow channels "
                                 f"through it)")


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Trace ``model`` once and return its dependency graph; an untraceable model is a clear error."""
    was_training = model.training
    model.eval()
    watch = _ReshapeWatch(model)
    try:
        with torch.enable_grad(), _module_stack(model) as watch.stack, watch:
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    except AutopruneError:
        raise
    except Exception as e:  # tracing errors come in every type
        watch.check()
        raise AutopruneError(f"cannot trace model {type(model).__name__} for pruning: {_first_line(e)}") from None
    finally:
        model.train(was_training)
    watch.check()
    return graph


def check_forward(model: nn.Module, example_input: torch.Tensor) -> None:
    """Run ``model`` once on ``example_input``; a failure is an error naming the module it failed in."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _module_stack(model) as stack:
            model(example_input)
    except Exception as e:  # noqa: BLE001 (whatever a broken model raises)
        raise AutopruneError(
            f"pruned model {type(model).__name__} fails in {_where(model, stack)}: {_first_line(e)}") from None
    finally:
        model.train(was_training)


def forward_with_hooks(model: nn.Module, example_input: torch.Tensor, hook: Callable[..., None],
                       types: tuple[type, ...] = ROOT_TYPES) -> None:
    """One forward pass in eval mode, without gradients, with ``hook`` on every module of ``types``; the
    model's mode is restored and the hooks removed afterwards."""
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, types)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()


def output_layers(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """The last Conv/Linear layer to run: it produces the model's outputs, so it is never pruned."""
    order: list[nn.Module] = []
    forward_with_hooks(model, example_input, lambda mod, i, o: order.append(mod))
    return order[-1:]


def frozen_layers(model: nn.Module, example_input: torch.Tensor, ignore: Sequence[str] = ()) -> list[nn.Module]:
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


@dataclass(frozen=True)
class GroupLayout:
    """How a group's channels can be removed without breaking a layer.

    ``units`` are the smallest sets of root channels that go together: one channel, or the same
    position in every block of a grouped convolution / group norm, or in every head of a multi-head
    attention (its ``num_heads`` stays, each head loses the same dims). ``segments`` split the units
    by the layers that own them: the branches of a concatenation are separate segments, each of which
    must keep some units. Both are in root-channel order.
    """

    units: list[list[int]]
    segments: list[list[int]]  # indices into ``units``

    @property
    def unit_size(self) -> int:
        """Channels per unit: the number of blocks the group's channels form (1 without grouping)."""
        return len(self.units[0])

    def segment_units(self) -> list[int]:
        return [len(s) for s in self.segments]


def _blocks(dep: tp.Dependency) -> tuple[int, int]:
    """(number of blocks, channels) of the dimension ``dep`` prunes, for layers whose channels come in blocks."""
    module, kind = dep.target.module, dep.target.type
    if kind == tp.ops.OPTYPE.CONV and module.groups > 1:  # grouped, not depthwise (that one is coupled 1:1)
        out = dep.handler == tp.prune_conv_out_channels
        return module.groups, module.out_channels if out else module.in_channels
    if kind == tp.ops.OPTYPE.GN:
        return module.num_groups, module.num_channels
    if kind == tp.ops.OPTYPE.MHA:
        return module.num_heads, module.embed_dim
    return 1, 0


def group_layout(name: str, group: tp.Group) -> GroupLayout:
    """The units and segments of ``group`` (called ``name`` in errors); see ``GroupLayout``."""
    n = group_channels(group)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owners: list[set[int]] = [set() for _ in range(n)]
    for k, item in enumerate(group):
        if item.dep.target.type in _OP_TYPES:
            continue
        pairs = [(int(i), int(r)) for i, r in zip(item.idxs, item.root_idxs) if r is not None]
        for _, r in pairs:
            owners[r].add(k)
        blocks, channels = _blocks(item.dep)
        if blocks > 1:
            width = channels // blocks
            first: dict[int, int] = {}
            for i, r in pairs:  # the same position in every block is one unit
                a, b = find(first.setdefault(i % width, r)), find(r)
                parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for c in range(n):
        members.setdefault(find(c), []).append(c)
    units = list(members.values())
    if len({len(u) for u in units}) > 1:
        raise AutopruneError(f"group '{name}': its channel blocks (grouped convolution or attention heads) "
                             f"do not line up across the coupled layers")
    segments: dict[frozenset[int], list[int]] = {}
    for u, unit in enumerate(units):
        key = frozenset().union(*(owners[c] for c in unit))
        segments.setdefault(key, []).append(u)
    return GroupLayout(units, list(segments.values()))
