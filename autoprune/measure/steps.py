"""The channel step a runtime runs fast, measured.

A pruned network's latency is not its MACs: a runtime's kernels work on blocks of channels, so a count that is not a
multiple of the block is padded or falls to a slower kernel (onnxruntime's NCHWc convolutions block channels by 8
with AVX2, 16 with AVX-512). ``probe_step`` times, in the runtime, the layer pattern channel pruning changes
(ResNet's basic block without its skip: ``conv3x3(C -> c) -> BN -> ReLU -> conv3x3(c -> C) -> BN``) for inner counts
``c`` from ``C / 2 + 1`` to ``C``, interleaved, and returns the largest multiple ``m`` (of 2, 4, 8, 16) for which
keeping the next multiple of ``m`` instead of ``c`` costs at most 2 % of latency: counts between multiples buy
nothing there, so pruning rounds to ``m`` (``space.round_to: auto``). ``bench/channel_steps.py`` draws the whole curve.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

MULTIPLES = (2, 4, 8, 16)
STEP_TOLERANCE = 1.02  # rounding up to the step may cost this much latency at most


def block(width: int, inner: int) -> nn.Module:
    """ResNet's basic block without the skip: the convolutions whose shared count a pruning ratio sets."""
    return nn.Sequential(nn.Conv2d(width, inner, 3, padding=1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(),
                         nn.Conv2d(inner, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)).eval()


def time_interleaved(models: dict[int, nn.Module], shape: tuple[int, ...], rounds: int) -> dict[int, float]:
    """Median milliseconds per batch-1 call of each model, every model timed once per round, in turn."""
    x = torch.randn(1, *shape)
    samples: dict[int, list[float]] = {c: [] for c in models}
    with torch.inference_mode():
        for _ in range(10):  # warm-up
            for m in models.values():
                m(x)
        for _ in range(rounds):
            for c, m in models.items():
                start = time.perf_counter()
                m(x)
                samples[c].append((time.perf_counter() - start) * 1e3)
    return {c: statistics.median(s) for c, s in samples.items()}


def step_ratios(latency: dict[int, float]) -> dict[int, float]:
    """For each multiple ``m``: the median over counts ``c`` that are not multiples of ``m`` of
    ``latency(next multiple of m) / latency(c)`` (at most 1: the next multiple up runs as fast or faster)."""
    top = max(latency)
    ratios = {}
    for m in MULTIPLES:
        pairs = [latency[min(top, math.ceil(c / m) * m)] / latency[c] for c in latency
                 if c % m and c < top and min(top, math.ceil(c / m) * m) in latency]
        ratios[m] = statistics.median(pairs) if pairs else 1.0
    return ratios


def measured_step(ratios: dict[int, float]) -> int:
    """The largest multiple whose ratio is within ``STEP_TOLERANCE`` (1 when none is)."""
    return max([1, *(m for m, r in ratios.items() if r <= STEP_TOLERANCE)])


@dataclass(frozen=True)
class StepReport:
    runtime: str
    step: int
    ratios: dict[int, float]
    width: int
    pixels: int

    def line(self) -> str:
        ratios = ", ".join(f"x{m} {r:.2f}" for m, r in self.ratios.items())
        return (f"channel step in {self.runtime}: {self.step} (next multiple up / count, median over "
                f"{self.width // 2}..{self.width} channels at {self.pixels} px: {ratios})")


def probe_step(runtime: str, threads: int, width: int = 32, pixels: int = 14, rounds: int = 60) -> StepReport:
    """Measure the channel step of ``runtime`` (see module) with ``threads`` threads."""
    from autoprune.measure.runtimes import in_runtime

    shape = (width, pixels, pixels)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        models = {c: in_runtime(block(width, c), runtime, shape, threads) for c in range(width // 2, width + 1)}
        ratios = step_ratios(time_interleaved(models, shape, rounds))
    finally:
        torch.set_num_threads(previous)
    return StepReport(runtime, measured_step(ratios), ratios, width, pixels)
