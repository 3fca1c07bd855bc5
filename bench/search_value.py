"""Search value: does a search beat the hand-made uniform baseline and ModelOpt FastNAS at equal compute?

    .venv/bin/python bench/search_value.py [--archs resnet20,vgg11_bn] [--seeds 0,1,2]
        [--methods uniform,sensitivity,fastnas,nsga2+sensitivity,greedy,nsga2,tpe,random] [--search-minutes 5]
        [--final-epochs 1] [--train-samples N] [--targets 0.5,0.33] [--space-high 0.9] [--fastnas-flops 0.25,0.5]
        [--out runs/bench-value]

Protocol, per architecture (its base trained once on Fashion-MNIST from ``$AUTOPRUNE_DATA``, minus a stratified,
seeded 10 % validation split, ``--train-samples`` of the rest when given) and per seed:

1. Search. Every searcher gets the same search space (search_spaces/resnet20_fashionmnist.yaml: ratios 0 to
   ``--space-high`` in steps of 0.1 for every group, criteria l1 and bn_scale), the same trial
   recipe (KD fine-tune of ``finetune.epochs``), no constraints, concurrency 2 and the same wall-clock budget
   (``--search-minutes``, Ray Tune's ``time_budget_s``) on this otherwise idle machine, so the same compute.
   ``uniform`` spends it on a grid of uniform policies per criterion (the hand-made baseline), ``sensitivity``
   and ``greedy`` partly on stage-0 evaluations; each search computes its own stage 0 (the sensitivity curves
   cache is emptied before each). Searchers select on validation accuracy.
2. Finalize. For each latency target t (a fraction of the base's measured latency), the trial with the best
   validation accuracy among those at <= t x base latency is finalized (``autoprune.finalize``: re-pruned,
   ``--final-epochs`` of KD fine-tuning, test split evaluated once, latency timed interleaved with the base; the
   PyTorch files only: ONNX and int8 would cost every method the same).
   A policy already finalized for this architecture and seed (several searchers ship their uniform warm start) is
   finalized once: the later methods reuse its figures and are charged its finalize compute.
3. FastNAS (``bench/peer_fastnas.py``) at ``--fastnas-flops`` (FLOPs fractions: at batch 1, 0.25 and 0.5 of
   the FLOPs time near 0.5x and 0.7x of the latency), and uniform L1 at FastNAS's MACs, fine-tuned the same way.

Compute is CPU-seconds used by the whole machine during each phase (``/proc/stat``: every process, Ray workers
included). Printed and written to ``OUT/search_value.json``: per row the test accuracy, the measured speedup and
the compute; the mean over seeds per searcher and target; the hypervolume of each search's front; and
``OUT/search_value.png`` (test accuracy against speedup).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from autoprune.config import load_config
from autoprune.data import load_data
from autoprune.deploy.artefacts import DeployOptions
from autoprune.deploy.finalize import finalize
from autoprune.searching.controller import build_task, data_spec, ensure_base, run_search
from autoprune.searching.results import read_trials

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "search_spaces" / "resnet20_fashionmnist.yaml"
# in this order: the JSON is written after each method, so a run stopped early keeps the first ones
METHODS = "uniform,sensitivity,fastnas,nsga2+sensitivity,greedy,nsga2,tpe,random"


def searcher_overrides(name: str) -> list[str]:
    """``X+sensitivity``: searcher X with its first population seeded from sensitivity curves."""
    searcher, _, seed_from = name.partition("+")
    return [f"searcher.name={searcher}"] + ([f"searcher.seed_from={seed_from}"] if seed_from else [])


def machine_cpu_seconds() -> float:
    """CPU-seconds every process on this machine has used since boot (user, nice, system, irq, softirq)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:8]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields)
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall and machine CPU seconds of a block."""

    def __enter__(self) -> "Meter":
        self.wall, self.cpu = time.perf_counter(), machine_cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, machine_cpu_seconds() - self.cpu


def arch_overrides(arch: str) -> list[str]:
    """The architecture, every group (the stem too) on the same grid up to ``--space-high``."""
    return [f"model={arch}", "space.groups={}"]


def pick(rows: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The finished, fine-tuned trial with the best validation accuracy at <= target x base latency."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("stage") in (None, "full")
          and r["latency_ms"] <= target * r["base_latency_ms"]]
    return max(ok, key=lambda r: r["accuracy"]) if ok else None


def policy_key(row: dict[str, Any]) -> str:
    """A trial's policy: the criterion it pruned with and every group's ratio."""
    ratios = {k.removeprefix("ratio:"): v for k, v in sorted(row.items()) if k.startswith("ratio:") and v is not None}
    return json.dumps({"criterion": row.get("criterion_used") or row["criterion"], "ratios": ratios})


def run_searcher(arch: str, seed: int, name: str, args: argparse.Namespace, common: list[str],
                 out: Path, finalized: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Search, then finalize the pick at each target. ``finalized`` holds this (arch, seed)'s finalized policies:
    a policy another method already finalized is not finalized again (same base, policy, seed and recipe: the same
    model); its metrics and finalize compute are reused."""
    run_dir = out / arch / f"seed{seed}" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # every search starts from nothing: equal compute
    # no sensitivity curves from an earlier search either (the latency references stay shared: they are how
    # searches time alike)
    shutil.rmtree(Path(os.environ["AUTOPRUNE_CACHE_DIR"]) / "sensitivity", ignore_errors=True)
    config = load_config(CONFIG, [*common, f"name=value_{arch}_{name.replace('+', '_')}",
                                  *searcher_overrides(name),
                                  f"searcher.seed={seed}", "trials=1000", "searcher.grid=12",
                                  f"time_budget_s={args.search_minutes * 60}"])
    with Meter() as search:
        summary = run_search(config, run_dir, echo=lambda m: print(f"[{arch} s{seed} {name}] {m}", flush=True))
    rows = read_trials(summary.run_dir).to_pylist()
    results = []
    for target in args.targets:
        row = pick(rows, target)
        result: dict[str, Any] = {"arch": arch, "seed": seed, "method": name, "target": target,
                                  "hypervolume": summary.front.hypervolume, "search_seconds": search.wall,
                                  "search_cpu_seconds": search.cpu,
                                  "trials": sum(r["status"] == "ok" and r.get("stage") in (None, "full") for r in rows),
                                  "stage0": sum(r.get("stage") == "proxy" for r in rows)}
        if row is None:
            results.append({**result, "test_accuracy": None})
            continue
        key = policy_key(row)
        if key not in finalized:
            with Meter() as final:
                # the PyTorch files only: ONNX, int8 and their runtime table are the same work for every method
                metrics = finalize(run_dir, pick=f"trial:{row['trial_id']}", epochs=args.final_epochs, kd=True,
                                   out=run_dir / f"final_{target:g}", deploy=DeployOptions(onnx=False, int8=False),
                                   echo=lambda m: None)
            finalized[key] = {"metrics": metrics, "cpu": final.cpu, "wall": final.wall, "by": f"{name}@{target:g}"}
        done = finalized[key]
        metrics = done["metrics"]
        results.append({**result, "trial_id": row["trial_id"], "policy": json.loads(key),
                        "search_val_accuracy": row["accuracy"], "finalized_by": done["by"],
                        "test_accuracy": metrics["test_accuracy"], "speedup": metrics["final"]["speedup"],
                        "macs": metrics["macs"], "base_test_accuracy": metrics["base"]["test_accuracy"],
                        "final_cpu_seconds": done["cpu"], "final_seconds": done["wall"]})
        print(f"[{arch} s{seed} {name}] target {target:g}: trial {row['trial_id']} test {metrics['test_accuracy']:.4f} "
              f"at {metrics['final']['speedup']:.2f}x ({search.cpu + done['cpu']:.0f} CPU-s; finalized by "
              f"{done['by']})", flush=True)
    return results


def run_peer(arch: str, seed: int, args: argparse.Namespace, base: Path, out: Path) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT / "bench"))
    from peer_fastnas import run_fastnas

    from autoprune.searching.controller import recipe, trial_settings

    config = load_config(CONFIG, [*arch_overrides(arch), f"base.checkpoint={base}", f"searcher.seed={seed}"])
    settings = replace(trial_settings(config), finetune_epochs=args.final_epochs, kd=True, seed=seed,
                       threads=len(os.sched_getaffinity(0)))
    results = []
    for flops in args.fastnas_flops:
        report = run_fastnas(base, [flops], settings=settings, recipe=replace(recipe(config), seed=seed), uniform=True,
                             divisor=args.fastnas_divisor, workdir=out / arch / f"seed{seed}" / "fastnas")
        for row in report["rows"]:  # FastNAS, then uniform L1 at FastNAS's MACs
            method = "fastnas" if row["method"] == "fastnas" else "uniform@fastnas"
            results.append({"arch": arch, "seed": seed, "method": method, "target": flops,
                            "test_accuracy": row["test_accuracy"], "speedup": row["speedup"], "macs": row["macs"],
                            "base_test_accuracy": report["base"]["test_accuracy"],
                            "search_cpu_seconds": row["search_cpu_seconds"],
                            "final_cpu_seconds": row["finetune_seconds"] * settings.threads,
                            "search_seconds": row["search_seconds"]})
            print(f"[{arch} s{seed} {method}] FLOPs {flops:g}: test {row['test_accuracy']:.4f} at "
                  f"{row['speedup']:.2f}x ({row['search_cpu_seconds']:.0f} CPU-s search)", flush=True)
    return results


def summarise(rows: list[dict[str, Any]]) -> str:
    """Per architecture, method and target (a latency fraction; a FLOPs fraction for FastNAS's rows): mean test
    accuracy, speedup and compute over seeds."""
    lines = [f"{'arch':<9} {'method':<12} {'target':>6} {'seeds':>5} {'test acc':>17} {'speedup':>8} "
             f"{'CPU-s':>7} {'hypervolume':>11}"]
    keys = sorted({(r["arch"], r["method"], r["target"]) for r in rows}, key=lambda k: (k[0], -k[2], k[1]))
    for arch, method, target in keys:
        group = [r for r in rows if (r["arch"], r["method"], r["target"]) == (arch, method, target)
                 and r.get("test_accuracy") is not None]
        if not group:
            lines.append(f"{arch:<9} {method:<12} {target:>6g} {0:>5d} {'no trial under target':>17}")
            continue
        acc = [r["test_accuracy"] for r in group]
        spread = f" +-{statistics.stdev(acc):.4f}" if len(acc) > 1 else ""
        hv = [r["hypervolume"] for r in group if r.get("hypervolume") is not None]
        lines.append(f"{arch:<9} {method:<12} {target:>6g} {len(group):>5d} {statistics.mean(acc):>8.4f}{spread:>9} "
                     f"{statistics.mean(r['speedup'] for r in group):>7.2f}x "
                     f"{statistics.mean(r['search_cpu_seconds'] + r['final_cpu_seconds'] for r in group):>7.0f} "
                     f"{(f'{statistics.mean(hv):.4f}' if hv else '-'):>11}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    from autoprune.searching.plot import plt

    archs = sorted({r["arch"] for r in rows})
    fig, axes = plt.subplots(1, len(archs), figsize=(5.5 * len(archs), 4.2), squeeze=False, constrained_layout=True)
    for ax, arch in zip(axes[0], archs):
        for method in sorted({r["method"] for r in rows}):
            pts = [r for r in rows if r["arch"] == arch and r["method"] == method and r.get("test_accuracy") is not None]
            ax.scatter([r["speedup"] for r in pts], [r["test_accuracy"] for r in pts], label=method, s=22)
        base = next((r["base_test_accuracy"] for r in rows if r["arch"] == arch and r.get("base_test_accuracy")), None)
        if base is not None:
            ax.axhline(base, color="grey", lw=0.8, ls="--", label="base")
        ax.set_title(arch)
        ax.set_xlabel("measured speedup (x base latency)")
        ax.set_ylabel("test accuracy after finalize")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.environ.get("AUTOPRUNE_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--archs", default="resnet20,vgg11_bn")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=METHODS, help="searchers, 'X+sensitivity' (X seeded from sensitivity "
                   "curves) and 'fastnas' (the peer, with uniform L1 at its MACs)")
    p.add_argument("--search-minutes", type=float, default=5.0, help="wall-clock budget of each search")
    p.add_argument("--finetune-epochs", type=float, default=0.1, help="each trial's KD fine-tune")
    p.add_argument("--final-epochs", type=float, default=1.0, help="finalize's KD fine-tune (and FastNAS's)")
    p.add_argument("--base-epochs", type=float, default=3.0)
    p.add_argument("--train-samples", type=int, help="train on this many images (default: the whole split)")
    p.add_argument("--targets", default="0.5,0.33", help="latency targets as fractions of the base's (batch 1)")
    p.add_argument("--space-high", type=float, default=0.9, help="the highest ratio of every group: at batch 1 "
                   "ResNet-20's smallest model times 0.31x the base at 0.9 (0.49x at 0.7)")
    p.add_argument("--fastnas-flops", default="0.25,0.5", help="FastNAS's FLOPs targets as fractions of the base's")
    p.add_argument("--fastnas-divisor", type=int, default=4, help="FastNAS's channel divisor: 4 for CIFAR-width "
                   "ResNets (16-64 channels); ModelOpt's default 32 for VGG's 64-512 (4 makes 560 sub-nets to score)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-value"))
    args = p.parse_args()
    args.targets = [float(t) for t in args.targets.split(",")]
    args.fastnas_flops = [float(t) for t in args.fastnas_flops.split(",")]
    if not (Path(args.data_root) / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        print(f"bench: Fashion-MNIST not found under {args.data_root} (set --data-root or AUTOPRUNE_DATA)")
        return 2
    out = Path(args.out)
    # no curves or latency references from earlier runs of the bench
    shutil.rmtree(out / "cache", ignore_errors=True)
    os.environ["AUTOPRUNE_CACHE_DIR"] = str(out / "cache")
    rows: list[dict[str, Any]] = []
    for arch in args.archs.split(","):
        base = out / arch / "base.pt"
        common = [*arch_overrides(arch), "data.dataset=fashionmnist", f"data.root={args.data_root}",
                  f"space.ratio.high={args.space_high}",
                  f"base.checkpoint={base}", f"base.epochs={args.base_epochs}", "constraints=[]",
                  f"finetune.epochs={args.finetune_epochs}", "concurrency=2",
                  *([f"data.max_train_samples={args.train_samples}"] if args.train_samples else [])]
        config = load_config(CONFIG, common)  # the base is trained here, so no searcher is charged for it
        data = load_data(data_spec(config))
        ensure_base(config, data, build_task(config, data), print)
        for seed in (int(s) for s in args.seeds.split(",")):
            finalized: dict[str, dict[str, Any]] = {}
            for name in args.methods.split(","):
                if name == "fastnas":
                    rows += run_peer(arch, seed, args, base, out)
                else:
                    rows += run_searcher(arch, seed, name, args, common, out, finalized)
                (out / "search_value.json").write_text(json.dumps(rows, indent=1))
    print("\n" + summarise(rows))
    plot(rows, out / "search_value.png")
    print(f"\nresults: {out / 'search_value.json'}, plot: {out / 'search_value.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
