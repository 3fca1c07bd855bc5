"""Latency against channel count, per runtime: the curve and its steps.

    .venv/bin/python bench/channel_steps.py [--runtimes torch,onnxruntime,int8] [--stages 16@28,32@14,64@7]
        [--threads 1] [--rounds 200] [--out runs/bench-steps]

A pruned network's latency is not its MACs: a runtime's kernels work on blocks of channels, so a count that is not a
multiple of the block is padded, or falls to a slower kernel. This bench times, in each runtime, the layer pattern
that channel pruning changes: ResNet's basic block without its skip, ``conv3x3(C -> c) -> BN -> ReLU ->
conv3x3(c -> C) -> BN``, at each stage's width ``C`` and resolution (``--stages C@pixels``), for every inner count
``c`` from 1 to ``C``. Each model runs in its runtime (``autoprune.measure.runtimes.in_runtime``: eager torch, the
ONNX export in onnxruntime fp32, its static int8 quantization), batch 1, ``--threads`` threads; the ``C`` counts of a
stage are timed interleaved, round by round, after a warm-up, and each count's figure is its median over
``--rounds`` rounds.

Printed per runtime and stage: the curve (latency of each count relative to the full block), and for each multiple
``m`` in 2, 4, 8, 16 the median ratio ``latency(next multiple of m at or above c) / latency(c)`` over the counts
that are not multiples: a ratio at or below 1.00 means a count that is not a multiple of ``m`` buys nothing (the
next multiple up, with more channels, runs as fast or faster). The measured step is the largest ``m`` whose ratio
is <= 1.02. Written to ``OUT/channel_steps.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from autoprune.measure.runtimes import in_runtime

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtimes", default="torch,onnxruntime,int8")
    parser.add_argument("--stages", default="16@28,32@14,64@7", help="width@pixels per stage")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-steps"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, dict[str, object]] = {}
    for runtime in args.runtimes.split(","):
        for stage in args.stages.split(","):
            width, pixels = (int(v) for v in stage.split("@"))
            shape = (width, pixels, pixels)
            models = {c: in_runtime(block(width, c), runtime, shape, args.threads) for c in range(1, width + 1)}
            latency = time_interleaved(models, shape, args.rounds)
            ratios = step_ratios(latency)
            step = measured_step(ratios)
            full = latency[width]
            curve = " ".join(f"{c}:{latency[c] / full:.2f}" for c in range(1, width + 1))
            print(f"{runtime:>11s} C={width:<3d} {pixels:>2d}px  full block {full:.3f} ms  step {step}  "
                  + "  ".join(f"x{m}: {r:.2f}" for m, r in ratios.items()))
            print(f"{'':>11s} latency / full block by inner count: {curve}")
            report[f"{runtime} {stage}"] = {"runtime": runtime, "width": width, "pixels": pixels, "full_ms": full,
                                            "latency_ms": latency, "ratios": ratios, "step": step}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "channel_steps.json").write_text(json.dumps(report, indent=1))
    print(f"written: {args.out / 'channel_steps.json'}")


if __name__ == "__main__":
    main()
