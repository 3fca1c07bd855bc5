"""What a latency target is: the input, batch, threads, device, repeats and the runtime that times models."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LatencySpec:
    """How a target times models: input shape, batch, threads, device, repeats, and the runtime (``torch``: eager
    PyTorch; ``onnxruntime`` or ``int8``: the model exported to ONNX, in fp32 or quantized, run by onnxruntime on
    the CPU)."""

    input_shape: tuple[int, ...]
    batch_size: int = 1            # batch 1: on CPU larger batches are memory-bound and their ratios drift with load
    threads: int = 1
    device: str = "cpu"
    repeats: int = 100
    warmup: int = 10
    reference_repeats: int = 300
    max_rounds: int = 600          # candidate timing goes on, in chunks of ``repeats``, until precise or this many
    runtime: str = "torch"
