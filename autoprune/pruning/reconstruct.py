"""Least-squares reconstruction of the layers that consume pruned channels (ThiNet; He et al. 2017; AMC).

After pruning, each Conv2d or Linear layer whose input channels were pruned is re-fitted so that its
output (before the bias) on calibration data matches the same layer's output in the unpruned model:
``min_W ||X W^T - Y||^2 + ridge * s * ||W - W0||^2``, where ``X`` holds the pruned model's inputs to
the layer (unfolded patches for a convolution, a random subset of positions), ``Y`` the base model's
outputs at the channels the layer kept, ``W0`` its pruned weights and ``s`` the mean diagonal of
``X^T X``. Pulling towards ``W0`` keeps an under-determined fit sane and never makes the calibration
error worse. Layers are fitted in forward order, each on inputs that already pass through the
re-fitted layers before it, so errors do not accumulate.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.pruning.graph import build_graph, forward_with_hooks, frozen_layers, named_groups
from autoprune.pruning.structural import RECORD_ATTR, PruneRecord

Batch = tuple[torch.Tensor, torch.Tensor]
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class LayerFit:
    """One re-fitted layer: the calibration rows it was fitted on and its relative output error
    ``||output - base output|| / ||base output||`` on them, before and after."""

    name: str
    rows: int
    error_before: float
    error_after: float


@dataclass
class ReconstructionReport:
    """What ``reconstruct`` did: the layers re-fitted (in forward order), those skipped and why, the seconds."""

    layers: list[LayerFit] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for a log."""
        if not self.layers:
            text = "reconstruction: no layer re-fitted"
        else:
            before = sum(f.error_before for f in self.layers) / len(self.layers)
            after = sum(f.error_after for f in self.layers) / len(self.layers)
            text = (f"reconstruction: {len(self.layers)} layers re-fitted in {self.seconds:.1f} s, mean relative "
                    f"output error {before:.3f} -> {after:.3f}")
        return text + (f"; skipped {', '.join(f'{n} ({why})' for n, why in self.skipped.items())}"
                       if self.skipped else "")


class _Stop(Exception):
    """Ends a forward pass once the layer being fitted has seen its input."""


@dataclass
class _Layer:
    """A layer to re-fit: its base output rows to keep, and the per-batch targets and row positions."""

    name: str
    module: nn.Conv2d | nn.Linear
    out_kept: list[int]
    targets: dict[int, torch.Tensor] = field(default_factory=dict)
    positions: dict[int, torch.Tensor] = field(default_factory=dict)


def reconstruct(base: nn.Module, pruned: nn.Module, batches: Sequence[Batch], *, ridge: float = 1e-4,
                max_rows: int = 8192, seed: int = 0) -> ReconstructionReport:
    """Re-fit, in place, the weights of ``pruned``'s layers that consume pruned channels; return a report.

    ``pruned`` is ``prune(base, ...)``'s output (it carries ``autoprune_record``); ``batches`` are
    calibration ``(inputs, targets)`` batches (targets unused). Each layer is fitted on at most
    ``max_rows`` rows (positions drawn with ``seed``, spread evenly over the batches); its bias is kept.
    Conv2d layers (any kernel, stride, dilation, grouped and depthwise) and Linear layers are re-fitted;
    other layers whose inputs were pruned are skipped and named in the report with the reason.
    """
    start = time.perf_counter()
    record = getattr(pruned, RECORD_ATTR, None)
    if not isinstance(record, PruneRecord):
        raise AutopruneError("reconstruct: the pruned model has no pruning record (prune it with autoprune.prune)")
    if not batches:
        raise AutopruneError("reconstruct: no calibration batches")
    if ridge < 0 or max_rows < 1:
        raise AutopruneError(f"reconstruct: need ridge >= 0 and max_rows >= 1, got {ridge} and {max_rows}")
    device = next(pruned.parameters()).device
    base_device = next(base.parameters()).device
    inputs = [x for x, _ in batches]
    report = ReconstructionReport()
    layers = _consumers(base, pruned, record, inputs[0][:1].to(base_device), report.skipped)
    rows_per_batch = max(1, max_rows // len(inputs))
    was_training = (base.training, pruned.training)
    base.eval()
    pruned.eval()
    try:
        with torch.no_grad():
            _collect_targets(base, layers, inputs, rows_per_batch, seed, base_device, device)
            for layer in layers:
                fit = _refit(pruned, layer, inputs, ridge, device)
                if isinstance(fit, str):
                    report.skipped[layer.name] = fit
                else:
                    report.layers.append(fit)
                layer.targets.clear()
    finally:
        base.train(was_training[0])
        pruned.train(was_training[1])
    report.seconds = time.perf_counter() - start
    return report


def _forward_order(model: nn.Module, example: torch.Tensor) -> list[tuple[str, int]]:
    """Conv and Linear layers in the order they run, with how many times each ran on ``example``."""
    names = {m: n for n, m in model.named_modules()}
    calls: dict[str, int] = {}

    def count(module: nn.Module, args: Any, output: Any) -> None:  # leaf layers: they finish in the order they start
        calls[names[module]] = calls.get(names[module], 0) + 1

    forward_with_hooks(model, example, count, _LAYERS)
    return list(calls.items())


def _widths(module: nn.modules.conv._ConvNd | nn.Linear) -> tuple[int, int]:
    """(input, output) channels or features."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels, module.out_channels


def _consumers(base: nn.Module, pruned: nn.Module, record: PruneRecord, example: torch.Tensor,
               skipped: dict[str, str]) -> list[_Layer]:
    """The layers of ``pruned`` whose inputs were pruned, in forward order, with the base output channels
    each kept; those that cannot be re-fitted go into ``skipped`` with the reason."""
    base_modules = dict(base.named_modules())
    pruned_modules = dict(pruned.named_modules())
    kept_out: dict[str, list[int]] | None = None
    layers = []
    for name, calls in _forward_order(pruned, example.to(next(pruned.parameters()).device)):
        module, original = pruned_modules[name], base_modules.get(name)
        assert isinstance(module, _LAYERS)
        if not isinstance(original, type(module)) or _widths(module)[0] == _widths(original)[0]:
            continue  # its inputs were not pruned
        why = _unsupported(module, calls)
        out = list(range(_widths(module)[1]))
        if why is None and _widths(module)[1] != _widths(original)[1]:
            kept_out = kept_out if kept_out is not None else _kept_outputs(base, record, example)
            out = kept_out.get(name, [])
            if len(out) != _widths(module)[1]:
                why = "its kept output channels are not in the pruning record"
        if why is not None or not isinstance(module, (nn.Conv2d, nn.Linear)):
            skipped[name] = why or "not a Conv2d or Linear layer"
            continue
        layers.append(_Layer(name, module, out))
    return layers


def _unsupported(module: nn.modules.conv._ConvNd | nn.Linear, calls: int) -> str | None:
    """Why ``module`` cannot be re-fitted, or None."""
    if calls != 1:
        return f"runs {calls} times per forward pass"
    if isinstance(module, nn.Linear):
        return None
    if not isinstance(module, nn.Conv2d):
        return f"{type(module).__name__} is not re-fitted (Conv2d and Linear are)"
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        return f"padding {module.padding!r} ({module.padding_mode}) is not re-fitted"
    return None


def _kept_outputs(base: nn.Module, record: PruneRecord, example: torch.Tensor) -> dict[str, list[int]]:
    """For every layer whose output channels a recorded group pruned: the indices, in the base layer, of the
    output channels it kept (the record's ``kept`` maps group root channels; each layer has its own indices)."""
    graph = build_graph(base, example)
    frozen = frozen_layers(base, example, record.policy.get("ignore", []))
    kept: dict[str, list[int]] = {}
    for group_name, group in named_groups(graph, frozen):
        if group_name not in record.kept:
            continue
        keep = set(record.kept[group_name])
        for item in group:
            module = item.dep.target.module
            name = graph._module2name.get(module)
            if name is None or not isinstance(module, _LAYERS) or not graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            kept[name] = sorted(int(i) for i, r in zip(item.idxs, item.root_idxs) if r is not None and r in keep)
    return kept


def _positions(count: int, rows: int, generator: torch.Generator) -> torch.Tensor:
    """``rows`` of ``count`` row indices (all of them when fewer), drawn without replacement, sorted."""
    if count <= rows:
        return torch.arange(count)
    return torch.randperm(count, generator=generator)[:rows].sort().values


def _output_rows(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """A layer's output as (positions, channels) rows, without its bias."""
    bias = getattr(module, "bias", None)
    if isinstance(module, nn.Linear):
        rows = out.reshape(-1, out.shape[-1])
        return rows - bias if bias is not None else rows
    if bias is not None:
        out = out - bias.view(1, -1, 1, 1)
    return out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])


def _input_rows(module: nn.Conv2d | nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as (positions, features) rows, aligned with ``_output_rows``: patches for a conv."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    patches = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,  # type: ignore[arg-type]
                       stride=module.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def _collect_targets(base: nn.Module, layers: list[_Layer], inputs: list[torch.Tensor], rows_per_batch: int,
                     seed: int, base_device: torch.device, device: torch.device) -> None:
    """One pass of the base model: each layer's output rows (kept channels, no bias) at sampled positions."""
    modules = dict(base.named_modules())
    current = {"batch": 0}

    def hook(layer: _Layer, index: int, module: nn.Module, args: Any, out: torch.Tensor) -> None:
        rows = _output_rows(module, out)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index * 7_919 + current["batch"])
        pos = _positions(rows.shape[0], rows_per_batch, generator)
        layer.positions[current["batch"]] = pos
        layer.targets[current["batch"]] = rows[pos.to(rows.device)][:, layer.out_kept].to(device)

    hooks = [modules[layer.name].register_forward_hook(
        lambda m, a, o, layer=layer, i=i: hook(layer, i, m, a, o)) for i, layer in enumerate(layers)]
    try:
        for b, x in enumerate(inputs):
            current["batch"] = b
            base(x.to(base_device))
    finally:
        for h in hooks:
            h.remove()


def _refit(model: nn.Module, layer: _Layer, inputs: list[torch.Tensor], ridge: float,
           device: torch.device) -> LayerFit | str:
    """Solve for and write ``layer``'s new weight; the fit, or why it was left as it was."""
    module = layer.module
    blocks = module.groups if isinstance(module, nn.Conv2d) else 1
    weight = module.weight.detach().double().reshape(blocks, module.weight.shape[0] // blocks, -1)  # (g, out, in)
    width, outs = weight.shape[2], weight.shape[1]
    xx = torch.zeros(blocks, width, width, dtype=torch.float64, device=device)
    xy = torch.zeros(blocks, width, outs, dtype=torch.float64, device=device)
    yy = torch.zeros((), dtype=torch.float64, device=device)
    rows = 0
    for b, x in enumerate(inputs):
        if b not in layer.targets:
            continue
        captured = _capture_input(model, module, x.to(device))
        if captured is None:
            continue
        features = _input_rows(module, captured)[layer.positions[b].to(device)].double()
        target = layer.targets[b].double()
        if features.shape[0] != target.shape[0]:
            return "its input and output positions do not line up"
        features = features.reshape(-1, blocks, width)
        target = target.reshape(-1, blocks, outs)
        xx += torch.einsum("rgi,rgj->gij", features, features)
        xy += torch.einsum("rgi,rgo->gio", features, target)
        yy += target.square().sum()
        rows += features.shape[0]
    if rows == 0 or yy <= 0:
        return "no calibration output to match"
    scale = ridge * torch.diagonal(xx, dim1=1, dim2=2).mean(1).clamp_min(1e-12).view(-1, 1, 1)
    eye = torch.eye(width, dtype=torch.float64, device=device)
    try:
        solved = torch.linalg.solve(xx + scale * eye, xy + scale * weight.transpose(1, 2))  # (g, in, out)
    except RuntimeError as e:
        return f"the least-squares system is singular ({str(e).splitlines()[0]})"
    before, after = _error(xx, xy, yy, weight.transpose(1, 2)), _error(xx, xy, yy, solved)
    if not torch.isfinite(solved).all() or not after <= before:
        return "the fit did not lower the output error"
    module.weight.data.copy_(solved.transpose(1, 2).reshape(module.weight.shape).to(module.weight.dtype))
    return LayerFit(layer.name, rows, before, after)


def _capture_input(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``module``'s input when ``model`` runs on ``x``; the forward pass stops there."""
    seen: list[torch.Tensor] = []

    def hook(mod: nn.Module, args: Any) -> None:
        seen.append(args[0])
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0] if seen else None


def _error(xx: torch.Tensor, xy: torch.Tensor, yy: torch.Tensor, w: torch.Tensor) -> float:
    """Relative error ``||X W - Y|| / ||Y||`` from the normal equations' terms (``w``: (g, in, out))."""
    squared = (torch.einsum("gio,gij,gjo->", w, xx, w) - 2 * torch.einsum("gio,gio->", w, xy) + yy).clamp_min(0)
    return float((squared / yy).sqrt())
