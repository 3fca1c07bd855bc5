"""The channel step a runtime runs fast, measured (``space.round_to: auto``).

A pruned network's latency is not its MACs: a runtime's kernels work on blocks of channels, so a count that is not a
multiple of the block is padded or falls to a slower kernel (onnxruntime's NCHWc convolutions block channels by 8
with AVX2, 16 with AVX-512; bench/README.md, "Latency against channel count"). ``probe_step`` times, in the runtime,
the layer pattern channel pruning changes (ResNet's basic block without its skip: ``conv3x3(C -> c) -> BN -> ReLU ->
conv3x3(c -> C) -> BN``), and picks the finest multiple that pays: starting from 16, a finer multiple ``m`` is
taken while every count it adds (the multiples of ``m`` that are not multiples of the coarser one) runs more than 1 %
faster than the coarser multiple next up. Counts are built and timed level by level, interleaved, so a runtime whose
step is 16 costs four structures. Counts between multiples of the step buy nothing in that runtime (or run slower
than the next multiple up), so pruning rounds to it. ``bench/channel_steps.py`` draws the curves for other widths and
resolutions.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

MULTIPLES = (16, 8, 4, 2, 1)  # coarsest first
PAYS = 1.01  # each count a finer multiple adds must run more than this much faster than the coarser multiple next up


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


def gains(latency: dict[int, float], finer: int, coarser: int) -> list[float]:
    """``latency(next multiple of coarser up) / latency(c)`` for the counts ``c`` that are multiples of ``finer``
    but not of ``coarser`` (above 1: ``c`` runs faster than rounding it up would)."""
    top = max(latency)
    return [latency[min(top, math.ceil(c / coarser) * coarser)] / latency[c] for c in sorted(latency)
            if c % finer == 0 and c % coarser and c < top and min(top, math.ceil(c / coarser) * coarser) in latency]


def finest_paying_step(latency: dict[int, float]) -> tuple[int, dict[int, float]]:
    """The step (see module) from a curve ``{count: ms}`` holding at least the multiples of each level tried, and the
    least gain of each finer multiple tried."""
    step, tried = MULTIPLES[0], dict[int, float]()
    for finer in MULTIPLES[1:]:
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
    """A measured step: ``runtime``, the ``step``, the median gain of each finer multiple tried, the block's
    ``width`` and ``pixels``."""

    runtime: str
    step: int
    tried: dict[int, float]
    width: int
    pixels: int

    def line(self) -> str:
        tried = ", ".join(f"x{m} {g:.2f}" for m, g in self.tried.items())
        return (f"channel step in {self.runtime}: {self.step} (a {self.width}-channel block at {self.pixels} px; "
                f"the least each finer multiple gains: {tried}; above {PAYS:.2f} pays)")


def probe_step(runtime: str, threads: int, width: int = 32, pixels: int = 14, rounds: int = 100) -> StepReport:
    """Measure the channel step of ``runtime`` (torch, onnxruntime, int8) on this CPU with ``threads`` threads.

    Args:
        runtime: the runtime the candidates are timed in.
        threads: intra-op threads, as the latency is timed.
        width, pixels: the block's outer width and resolution.
        rounds: interleaved timing rounds per count.

    Returns:
        The step and what the finer multiples gained."""
    from autoprune.measure.runtimes import in_runtime

    shape = (width, pixels, pixels)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        models: dict[int, nn.Module] = {}
        step, tried = MULTIPLES[0], dict[int, float]()
        for level in MULTIPLES[1:]:  # each finer level's counts, timed with those before, until one does not pay
            for c in range(level, width + 1, level):
                if c not in models:
                    models[c] = in_runtime(block(width, c), runtime, shape, threads)
            step, tried = finest_paying_step(time_interleaved(dict(sorted(models.items())), shape, rounds))
            if step > level:
                break
    finally:
        torch.set_num_threads(previous)
    return StepReport(runtime, step, tried, width, pixels)


def probe_on_target(runtime: str, threads: int, target: str | None) -> StepReport:
    """``probe_step`` run by Ray where the search's latency actor times (``latency.target``, else the head node)."""
    import ray

    from autoprune.measure.latency import target_placement

    task = ray.remote(probe_step).options(num_cpus=0, **target_placement(target))
    report: StepReport = ray.get(task.remote(runtime, threads))
    return report
