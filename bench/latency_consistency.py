"""Latency consistency: the same policies timed in searches under different load must get the same figures.

    python bench/latency_consistency.py [--out runs/bench-latency] [--grid 3]

Three searches over the same uniform policies (``searcher: uniform``, same base, same seed):
  1. concurrency 1 (one trial at a time),
  2. concurrency 2 (the other trial fine-tunes while a candidate is timed),
  3. concurrency 2 beside a busy neighbour process (a matrix-multiply loop on one core, started before the
     search and running throughout).
Each search times its candidates through its latency actor (autoprune/measure/latency.py): base reference timed
alone before the trials, candidates timed interleaved with the base, reported as ratio x reference.

Printed: per policy, its latency_ms in each search and the spread (max / min - 1); the reference base of
each search and their spread; within each search, the spread of the raw base timings taken beside each
candidate (what a trial timing itself would have compared). Goal: every policy within 5 % across the
searches, the base within 3 %.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from autoprune.config import load_config
from autoprune.searching.controller import run_search
from autoprune.searching.results import read_trials

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "search_spaces" / "resnet20_fashionmnist.yaml"


def busy_neighbour(stop: "mp.synchronize.Event") -> None:  # type: ignore[name-defined]
    """A process that keeps one core busy with matrix multiplies until told to stop."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while not stop.is_set():
        for _ in range(20):
            a = torch.tanh(a @ a)


def policy_key(row: dict) -> tuple:
    """A trial's policy: its criterion and every group's ratio."""
    return (row["criterion"], *sorted((k, round(v, 6)) for k, v in row.items() if k.startswith("ratio:")))


def mean_ratio(key: tuple) -> float:
    return statistics.mean(v for _, v in key[1:])


def spread(values: list[float]) -> float:
    return max(values) / min(values) - 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-latency")
    parser.add_argument("--grid", type=int, default=3, help="uniform policies per search")
    parser.add_argument("--finetune-epochs", type=float, default=0.5)
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    base = out / "base.pt"
    os.environ["AUTOPRUNE_CACHE_DIR"] = str(out / "cache")  # a fresh reference store: the first search sets it
    common = ["searcher.name=uniform", f"searcher.grid={args.grid}", f"trials={args.grid}", "searcher.warm_start=0",
              "space.criteria=[l1]", "data.max_train_samples=2000", "base.epochs=1", f"base.checkpoint={base}",
              f"finetune.epochs={args.finetune_epochs}", "latency.threads=1", "resources.cpu=1", "constraints=[]"]
    setups = [("concurrency 1", ["concurrency=1"], False), ("concurrency 2", ["concurrency=2"], False),
              ("concurrency 2 + busy neighbour", ["concurrency=2"], True)]
    by_run: dict[str, dict[float, dict]] = {}
    measured_reference: dict[str, float] = {}
    start = time.perf_counter()
    for label, sets, busy in setups:
        run_dir = out / label.replace(" ", "_").replace("+", "and")
        stop = mp.Event()
        neighbour = mp.Process(target=busy_neighbour, args=(stop,), daemon=True) if busy else None
        if neighbour:
            neighbour.start()
        try:
            run_search(load_config(CONFIG, [*common, *sets]), run_dir,
                       echo=lambda m, label=label: print(f"[{label}] {m}", flush=True))
        finally:
            if neighbour:
                stop.set()
                neighbour.join(10)
        rows = [r for r in read_trials(run_dir).to_pylist() if r["status"] == "ok"]
        measured_reference[label] = json.loads((run_dir / "latency.json").read_text())["measured_reference_ms"]
        by_run[label] = {policy_key(r): r for r in rows}
        import ray

        ray.shutdown()  # each search gets its own Ray and its own latency actor

    labels = [s[0] for s in setups]
    policies = sorted(set.intersection(*(set(v) for v in by_run.values())), key=mean_ratio)
    spec = load_config(CONFIG, common)
    print(f"\nlatency consistency ({time.perf_counter() - start:.0f} s, {os.cpu_count()} cores, "
          f"batch {spec['latency.batch_size']}, {spec['latency.threads']} thread)")
    print(f"{'policy':>14s} " + " ".join(f"{lab:>32s}" for lab in labels) + f" {'spread':>8s}")
    worst = 0.0
    for ratio in policies:
        values = [by_run[lab][ratio]["latency_ms"] for lab in labels]
        worst = max(worst, spread(values))
        cells = " ".join(f"{v:>29.3f} ms" for v in values)
        print(f"{f'mean ratio {mean_ratio(ratio):.3g}':>14s} {cells} {spread(values):>7.1%}")
    refs = [next(iter(by_run[lab].values()))["base_latency_ms"] for lab in labels]
    print(f"{'base (ref.)':>14s} " + " ".join(f"{v:>29.3f} ms" for v in refs) + f" {spread(refs):>7.1%}")
    own = [measured_reference[lab] for lab in labels]
    print(f"{'base timed':>14s} " + " ".join(f"{v:>29.3f} ms" for v in own) + f" {spread(own):>7.1%}"
          "   (each search's own timing of the base, before its trials; the reference is the lowest so far)")
    for lab in labels:
        raw = [r["latency_raw_base_ms"] for r in by_run[lab].values()]
        print(f"  within '{lab}': raw base timed beside each candidate {min(raw):.3f}-{max(raw):.3f} ms "
              f"(spread {spread(raw):.1%}); the ratio cancels it")
    ok = worst <= 0.05 and spread(refs) <= 0.03
    print(f"\nworst policy spread {worst:.1%} (goal <= 5 %), base spread {spread(refs):.1%} (goal <= 3 %): "
          f"{'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
