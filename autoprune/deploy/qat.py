"""A short quantization-aware fine-tune for when int8 post-training quantization loses too much.

During the fine-tune every convolution and linear layer sees its weights and its input through fake quantization
on onnxruntime's grid (``runtimes.quantize_int8``): weights int8, symmetric, one scale per output channel
(``torch.fake_quantize_per_channel_affine``), inputs uint8, one scale and zero point per tensor from the smallest
and largest value seen (as onnxruntime's MinMax calibration takes them; ``torch.fake_quantize_per_tensor_affine``);
gradients pass straight through. Batch norm stays: onnxruntime folds it into the convolution before quantizing,
which scales each output channel by a constant, and per-channel symmetric quantization rounds a channel scaled by
a constant to the same grid points (checked against onnxruntime's stored weights in the tests). onnxruntime also
quantizes tensors between other operators (additions, pooling); those are not simulated. Afterwards the fake
quantization is removed and the trained float weights are quantized by onnxruntime as before.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from autoprune.measure.runtimes import QuantizationError
from autoprune.tasks.base import Task

QUANTIZED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _WeightFakeQuant(nn.Module):
    """int8 symmetric per-output-channel fake quantization of a weight."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.detach().reshape(weight.shape[0], -1)
        scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-12).float()
        zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)


class _InputFakeQuant:
    """uint8 per-tensor fake quantization of a layer's input over the range seen so far (always including 0)."""

    def __init__(self) -> None:
        self.low, self.high = 0.0, 0.0

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = inputs[0]
        if module.training or self.low == self.high:
            self.low = min(self.low, float(x.detach().min()))
            self.high = max(self.high, float(x.detach().max()))
        scale = max((self.high - self.low) / 255.0, 1e-12)
        zero = int(min(255, max(0, round(-self.low / scale))))
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255), *inputs[1:])


@contextmanager
def fake_quantized(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with fake quantization on every convolution's and linear layer's weight and input, removed on
    exit (the trained float weights stay)."""
    layers = [m for m in model.modules() if isinstance(m, QUANTIZED)]
    hooks = [m.register_forward_pre_hook(_InputFakeQuant()) for m in layers]
    for m in layers:
        parametrize.register_parametrization(m, "weight", _WeightFakeQuant())
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()
        for m in layers:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)


def quantization_aware_finetune(model: nn.Module, task: Task, epochs: float,
                                example: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` fine-tuned ``epochs`` by the task under int8 fake quantization, distilling from
    ``model``; hand it to ``runtimes.to_onnx`` and ``runtimes.quantize_int8``. ``example``: an input batch whose
    outputs must stay finite (a fine-tune that diverged is an error, not a model)."""
    tuned = copy.deepcopy(model).cpu()
    with fake_quantized(tuned):
        task.finetune(tuned, epochs, teacher=copy.deepcopy(model).cpu().eval())
    tuned = tuned.cpu().eval()
    if example is not None:
        with torch.no_grad():
            if not torch.isfinite(tuned(example)).all():
                raise QuantizationError("quantization-aware fine-tuning diverged: the model's outputs are not finite")
    return tuned
