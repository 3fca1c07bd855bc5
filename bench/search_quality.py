"""Search-quality benchmark: several searchers on the same base model, data and trial budget.

    python bench/search_quality.py [--data-root ../shared/data] [--trials 16] [--searchers nsga2,tpe,random,uniform]

Protocol: one ResNet-20 base trained on the full Fashion-MNIST training split (minus a stratified 10 %
validation split); every searcher then gets the same search space (search_spaces/resnet20_fashionmnist.yaml),
the same number of trials, fine-tuning budget and concurrency, and no constraints. Searchers select on
validation accuracy; test accuracy is only reported. Printed per searcher: the hypervolume of its front
(accuracy, size, latency; normalised by the base model, 0 = base, 1 = ideal), the best validation / test
accuracy among trials at <= 1/2 of the base latency and at <= 1/3 of the base MACs, and the ratio of the
best searcher's hypervolume to uniform's and random's.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from autoprune.config import load_config
from autoprune.controller import run_search
from autoprune.results import read_trials

ROOT = Path(__file__).resolve().parents[1]


def best_under(rows: list[dict], key: str, fraction: float) -> tuple[float, float] | None:
    """(val, test) accuracy of the most accurate finished trial with ``key <= fraction * base``."""
    ok = [r for r in rows if r["status"] == "ok" and r[key] <= fraction * r[f"base_{key}"]]
    if not ok:
        return None
    best = max(ok, key=lambda r: r["accuracy"])
    return best["accuracy"], best["test_accuracy"]


def fmt(pair: tuple[float, float] | None) -> str:
    return "-" if pair is None else f"{pair[0]:.4f} / {pair[1]:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.environ.get("AUTOPRUNE_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--searchers", default="nsga2,tpe,random,uniform")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--base-epochs", type=float, default=3)
    p.add_argument("--finetune-epochs", type=float, default=0.1, help="fraction of the 54k-image training split")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "runs" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"))
    args = p.parse_args()
    if not (Path(args.data_root) / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        sys.exit(f"bench: Fashion-MNIST not found under {args.data_root} (set --data-root or AUTOPRUNE_DATA)")
    out = Path(args.out)
    criteria = ["l1", "bn_scale"]
    results = {}
    for name in args.searchers.split(","):
        config = load_config(ROOT / "search_spaces" / "resnet20_fashionmnist.yaml", [
            f"name=bench_{name}", "data.dataset=fashionmnist", f"data.root={args.data_root}",
            f"base.checkpoint={out / 'base.pt'}", f"base.epochs={args.base_epochs}", f"trials={args.trials}",
            f"searcher.name={name}", f"searcher.grid={max(1, args.trials // len(criteria))}",
            f"space.criteria={criteria}", f"finetune.epochs={args.finetune_epochs}", "constraints=[]",
            f"concurrency={args.concurrency}"])
        start = time.perf_counter()
        resume = (out / name / "autoprune-run.json").is_file()  # an interrupted benchmark continues
        summary = run_search(config, out / name, resume=resume, echo=lambda m, name=name: print(f"[{name}] {m}", flush=True))
        rows = read_trials(summary.run_dir).to_pylist()
        results[name] = {"hv": summary.front.hypervolume, "trials": sum(r["status"] == "ok" for r in rows),
                         "lat": best_under(rows, "latency_ms", 0.5), "macs": best_under(rows, "macs", 1 / 3),
                         "seconds": time.perf_counter() - start}
    print(f"\n{'searcher':10s} {'trials':>6s} {'hypervolume':>11s} {'best val/test @ <=1/2 latency':>30s} "
          f"{'best val/test @ <=1/3 MACs':>27s} {'minutes':>8s}")
    for name, r in results.items():
        print(f"{name:10s} {r['trials']:6d} {r['hv']:11.4f} {fmt(r['lat']):>30s} {fmt(r['macs']):>27s} "
              f"{r['seconds'] / 60:8.1f}")
    learned = {k: v for k, v in results.items() if k not in ("uniform", "random")}
    if learned:
        best = max(learned, key=lambda k: learned[k]["hv"])
        for ref in ("uniform", "random"):
            if ref in results and results[ref]["hv"] > 0:
                print(f"hypervolume {best} / {ref}: {results[best]['hv'] / results[ref]['hv']:.2f}")
    print(f"runs: {out}")


if __name__ == "__main__":
    main()
