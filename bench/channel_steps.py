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

Printed per runtime and stage: the curve (latency of each count relative to the full block), the step the search
uses for ``space.round_to: auto`` (``autoprune.measure.steps``: the finest multiple from 16 down whose added counts
each run more than 1 % faster than the coarser multiple next up) and, for each finer multiple tried, the least such
gain. Written to ``OUT/channel_steps.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from autoprune.measure.runtimes import in_runtime
from autoprune.measure.steps import block, finest_paying_step, time_interleaved


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
            step, tried = finest_paying_step(latency)
            full = latency[width]
            curve = " ".join(f"{c}:{latency[c] / full:.2f}" for c in range(1, width + 1))
            print(f"{runtime:>11s} C={width:<3d} {pixels:>2d}px  full block {full:.3f} ms  step {step}  "
                  + "  ".join(f"x{m}: {g:.2f}" for m, g in tried.items()))
            print(f"{'':>11s} latency / full block by inner count: {curve}")
            report[f"{runtime} {stage}"] = {"runtime": runtime, "width": width, "pixels": pixels, "full_ms": full,
                                            "latency_ms": latency, "least_gain": tried, "step": step}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "channel_steps.json").write_text(json.dumps(report, indent=1))
    print(f"written: {args.out / 'channel_steps.json'}")


if __name__ == "__main__":
    main()
