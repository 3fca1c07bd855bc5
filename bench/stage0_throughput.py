"""Stage-0 throughput inside a search against the in-process floor, with the breakdown of a candidate's seconds.

    .venv/bin/python bench/stage0_throughput.py [--candidates 1000] [--floor 30]

1. Inside a search: ``autoprune search`` on the default space (ResNet-20, embedded Fashion-MNIST) with
   ``searcher.proxy_trials=--candidates`` and one fine-tune, under the demo's latency budget; the stage-0 rate is what
   the engine reports over its batches (wall time from the first batch to the last, the latency model's calibration
   before it excluded).
2. In-process floor, after the search (nothing else running): the search's ``Stage0Evaluator`` scores ``--floor`` of
   the candidates the search scored, on one thread; its seconds per candidate divided by the slots (CPUs /
   resources.cpu) is the best a search on this machine can do with these candidates.

Printed: candidates per minute inside the search, the floor's, their ratio (goal <= 1.25), and per candidate the
median seconds of each step (prune, recalibrate, evaluate; latency is predicted, not timed: 0) with the overhead
(the wall seconds per candidate x slots, less the steps).
"""
from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import replace

from autoprune.config import load_config
from autoprune.pruning.policy import discover
from autoprune.searching import controller
from autoprune.searching.results import read_trials
from autoprune.searching.space import SearchSpace
from autoprune.searching.stage0 import Stage0Evaluator
from autoprune.searching.stage0.attach import stage0_settings

CONFIG = "search_spaces/resnet20_fashionmnist.yaml"
STEPS = ("prune", "recalibrate", "evaluate")
RATE = re.compile(r"stage 0: \d+ candidates scored \((\d+) this run, (\d+)/min on (\d+) evaluators\)")


def floor(config, points: list[dict]) -> dict[str, float]:
    """Seconds per candidate in-process, per step and in all."""
    data = controller.classification_data(config)
    task = controller.build_task(config, data)
    base, _ = controller.ensure_base(config, data, task, print)
    model = base.build()
    space = SearchSpace.from_config(config, discover(model, base.example_input, config["space.ignore"]))
    evaluator = Stage0Evaluator(model, task, space, replace(stage0_settings(config, 1), threads=1))
    steps: dict[str, list[float]] = {s: [] for s in STEPS}
    start = time.perf_counter()
    for point in points:
        scored = evaluator.score(point)
        for s in STEPS:
            steps[s].append(scored.seconds.get(s, 0.0))
    total = (time.perf_counter() - start) / len(points)
    return {"total": total, **{s: statistics.median(v) for s, v in steps.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--floor", type=int, default=30)
    args = p.parse_args()
    config = load_config(CONFIG)
    slots = int((os.cpu_count() or 1) // config["resources.cpu"])
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        search = load_config(CONFIG, [f"searcher.proxy_trials={args.candidates}", "trials=1",
                                      "constraints=[accuracy >= base - 0.12, latency_ms <= base * 0.64]"])
        started = time.perf_counter()
        controller.run_search(search, f"{tmp}/run", echo=lambda line: (lines.append(line), print(line, flush=True)))
        search_s = time.perf_counter() - started
        rows = [r for r in read_trials(f"{tmp}/run").to_pylist() if r.get("stage") == "proxy" and r["status"] == "ok"]
    groups = [k[len("ratio:"):] for k in rows[0] if k.startswith("ratio:")]
    sample = random.Random(1).sample(rows, min(args.floor, len(rows)))
    inproc = floor(config, [{**{g: r[f"ratio:{g}"] for g in groups}, "criterion": r["criterion"]} for r in sample])
    rates = [RATE.search(line) for line in lines]
    last = [m for m in rates if m][-1]
    count, per_minute, evaluators = int(last[1]), float(last[2]), int(last[3])
    floor_per_minute = 60 * slots / inproc["total"]
    wall_per_candidate = 60 / per_minute
    steps = {s: statistics.median(r[f"seconds_{s}"] for r in rows if r.get(f"seconds_{s}") is not None) for s in STEPS}
    overhead = wall_per_candidate * evaluators - sum(steps.values())
    print(f"\nstage 0 inside a search: {count} candidates, {per_minute:.0f} per minute on {evaluators} evaluators "
          f"(whole search {search_s:.0f} s)")
    print(f"in-process floor: {inproc['total']:.3f} s per candidate on one thread / {slots} slots = "
          f"{floor_per_minute:.0f} per minute")
    print(f"ratio floor / search: {floor_per_minute / per_minute:.2f}x (goal <= 1.25)")
    print("per candidate, median seconds (in the search | in-process): "
          + ", ".join(f"{s} {steps[s]:.3f} | {inproc[s]:.3f}" for s in STEPS)
          + f", latency 0 (predicted), overhead {overhead:.3f} (x{evaluators} evaluators)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
