"""The channel step a runtime runs fast, measured (``space.round_to: auto``).

A pruned network's latency is not its MACs: a runtime's kernels work on blocks of channels, so a count that is not a
multiple of the block is padded or falls to a slower kernel (onnxruntime's NCHWc convolutions block channels by 8
with AVX2, 16 with AVX-512; bench/README.md, "Latency against channel count"). ``probe_step`` times, in the runtime,
the layer pattern channel pruning changes (ResNet's basic block without its skip: ``conv3x3(C -> c) -> BN -> ReLU ->
conv3x3(c -> C) -> BN``), and picks the finest multiple that pays: starting from 16, a finer multiple ``m`` is taken
while every count it adds (the multiples of ``m`` that are not multiples of the coarser one) runs more than 1 %
faster than the coarser multiple next up. Counts below the step are tried the same way, from the step down (the small
step; none when half the step already runs no faster than the step: int8 here). Counts are built and timed level by
level, interleaved, so a runtime whose step is 16 with nothing below costs four structures (8, 16, 24, 32). Counts
between multiples of the step buy nothing in that runtime (or run slower than the next multiple up), so pruning
rounds to it. ``bench/channel_steps.py`` draws the curves for other widths and resolutions.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

MULTIPLES = (16, 8, 4, 2, 1)  # coarsest first
PAYS = 1.01  # each count a finer multiple adds must run more than this much faster than the coarser multiple next up


def block(width: int, inner: int) -> nn.Module:
    """ResNet's basic block without the skip: the convolutions whose shared count a pruning ratio sets."""
    return nn.Sequential(nn.Conv2d(width, inner, 3, padding=1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(),
                         nn.Conv2d(inner, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)).eval()


def time_interleaved(models: dict[int, nn.Module], shape: tuple[int, ...], rounds: int,
                     batch: int = 1) -> dict[int, float]:
    """Median milliseconds per call of each model on a ``batch``, every model timed once per round, in turn."""
    x = torch.randn(batch, *shape)
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


def gains(latency: dict[int, float], finer: int, coarser: int) -> list[float]:
    """``latency(next multiple of coarser up) / latency(c)`` for the counts ``c`` that are multiples of ``finer``
    but not of ``coarser`` (above 1: ``c`` runs faster than rounding it up would)."""
    top = max(latency)
    return [latency[min(top, math.ceil(c / coarser) * coarser)] / latency[c] for c in sorted(latency)
            if c % finer == 0 and c % coarser and c < top and min(top, math.ceil(c / coarser) * coarser) in latency]


def finest_paying_step(latency: dict[int, float], coarsest: int = MULTIPLES[0]) -> tuple[int, dict[int, float]]:
    """The step (see module) from a curve ``{count: ms}`` holding at least the multiples of each level tried, starting
    from ``coarsest``; and the least gain of each finer multiple tried."""
    step, tried = coarsest, dict[int, float]()
    for finer in (m for m in MULTIPLES if m < coarsest):
        found = gains(latency, finer, step)
        if not found:
            break
        tried[finer] = min(found)
        if tried[finer] <= PAYS:
            break
        step = finer
    return step, tried


@dataclass(frozen=True)
class StepReport:
    """A measured step: ``runtime``, the ``step`` and the least gain of each finer multiple tried (``tried``); the
    ``small_step`` of counts below the step (None: no count below it pays) and its ``tried_below``; the block's
    ``width`` and ``pixels``."""

    runtime: str
    step: int
    tried: dict[int, float]
    width: int
    pixels: int
    small_step: int | None = None
    tried_below: dict[int, float] = field(default_factory=dict)

    def line(self) -> str:
        tried = ", ".join(f"x{m} {g:.2f}" for m, g in self.tried.items()) or "none"
        below = ", ".join(f"{m} {g:.2f}" for m, g in self.tried_below.items()) or "none"
        small = f"multiples of {self.small_step}" if self.small_step else "none"
        return (f"channel step in {self.runtime}: {self.step}, below it {small} (a {self.width}-channel block at "
                f"{self.pixels} px; the least each finer multiple gains: {tried}; below {self.step}: {below}; "
                f"above {PAYS:.2f} pays)")


def probe_step(runtime: str, threads: int, batch: int = 1, width: int = 32, pixels: int = 14,
               rounds: int = 100) -> StepReport:
    """Measure the channel step of ``runtime`` (torch, onnxruntime, int8) on this CPU with ``threads`` threads, and
    which counts below it pay (see module).

    Args:
        runtime: the runtime the candidates are timed in.
        threads: intra-op threads, as the latency is timed.
        batch: the batch size the latency is timed at.
        width, pixels: the block's outer width and resolution.
        rounds: interleaved timing rounds per count.

    Returns:
        The steps and what the finer multiples gained."""
    from autoprune.measure.runtimes import in_runtime

    shape = (width, pixels, pixels)
    models: dict[int, nn.Module] = {}

    def descend(top: int, coarsest: int) -> tuple[int, dict[int, float]]:
        """Time counts up to ``top`` level by level from ``coarsest`` down until a level does not pay."""
        step, tried = coarsest, dict[int, float]()
        for level in (m for m in MULTIPLES if m < coarsest):
            for c in range(level, top + 1, level):
                if c not in models:
                    models[c] = in_runtime(block(width, c), runtime, shape, threads)
            curve = time_interleaved({c: m for c, m in sorted(models.items()) if c <= top}, shape, rounds, batch)
            step, tried = finest_paying_step(curve, coarsest)
            if step > level:
                break
        return step, tried

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        step, tried = descend(width, MULTIPLES[0])
        below, tried_below = descend(step, step) if step > 1 else (step, {})
    finally:
        torch.set_num_threads(previous)
    return StepReport(runtime, step, tried, width, pixels, below if below < step else None, tried_below)


def probe_on_target(runtime: str, threads: int, batch: int, target: str | None) -> StepReport:
    """``probe_step`` run by Ray where the search's latency actor times (``latency.target``, else the head node)."""
    import ray

    from autoprune.measure.latency import target_placement

    task: Any = ray.remote(probe_step).options(num_cpus=0, **target_placement(target))
    report: StepReport = ray.get(task.remote(runtime, threads, batch))
    return report
