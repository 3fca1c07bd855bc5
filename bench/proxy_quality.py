"""Stage-0 proxy quality: does the proxy rank a finished search's fine-tuned candidates, with and without
least-squares reconstruction?

    .venv/bin/python bench/proxy_quality.py RUN_DIR [RUN_DIR ...] [--out proxy_quality.json]

For every fine-tuned trial of each run, its policy is pruned again from the run's base (loaded as finalize loads
it) and evaluated at stage 0 twice, in one process on one thread: batch norm recalibrated as the search does
(``searcher.proxy_batches``, by the search's own ``Stage0Evaluator``), then the metric on the proxy split; once as
pruned, once after the least-squares
reconstruction of the pruned channels' consumers (``space.reconstruct``). Printed per run: the Spearman rank
correlation of each proxy with the fine-tuned validation metric, beside that of MACs alone (more MACs ranked as
better) and of the proxy the search itself recorded, and the mean seconds per stage-0 evaluation.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr

from autoprune.deploy.export import run_config
from autoprune.deploy.finalize import load_searched_base
from autoprune.errors import AutopruneError
from autoprune.searching.front import is_full
from autoprune.searching.results import read_trials
from autoprune.searching.space import SearchSpace
from autoprune.searching.stage0 import Stage0Evaluator
from autoprune.searching.stage0.attach import stage0_settings
from autoprune.searching.storage import as_run_dir


def rank_correlation(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho; None where either side is constant (no ranking to compare)."""
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


def study(run_path: str) -> dict[str, Any]:
    """Both proxies of every fine-tuned trial of the run, and their rank correlations with its fine-tuned metric."""
    run = as_run_dir(run_path)
    config = run_config(run)
    searched = load_searched_base(run, config)  # as finalize loads it
    task = searched.task
    name = task.metric.name
    rows = [r for r in read_trials(run).to_pylist() if r["status"] == "ok" and is_full(r)]
    if len(rows) < 3:
        raise AutopruneError(f"run '{run_path}' has {len(rows)} fine-tuned trials: a rank correlation needs 3")
    space = SearchSpace.from_config(config, searched.groups)
    evaluators = {reconstruct: Stage0Evaluator(searched.model, task, space,
                                               replace(stage0_settings(config, 1), reconstruct=reconstruct))
                  for reconstruct in (False, True)}
    trials = []
    for row in rows:
        point = {**{g: row[f"ratio:{g}"] for g in space.groups}, "criterion": row["criterion"]}
        entry: dict[str, Any] = {"trial_id": row["trial_id"], "finetuned": row[name], "macs": row["macs"],
                                 "recorded_proxy": row[f"proxy_{name}"]}
        for reconstruct, evaluator in evaluators.items():
            scored = evaluator.score(point)
            if scored.error is not None:
                raise AutopruneError(f"run '{run_path}', trial {row['trial_id']}: {scored.error}")
            key = "reconstructed" if reconstruct else "plain"
            entry[key] = scored.metrics[f"proxy_{name}"]
            entry[f"seconds_{key}"] = sum(scored.seconds.values())
        trials.append(entry)
        print(f"  {row['trial_id']}: fine-tuned {entry['finetuned']:.4f}  proxy {entry['plain']:.4f}  "
              f"reconstructed {entry['reconstructed']:.4f}", flush=True)
    finetuned = [t["finetuned"] for t in trials]
    sign = 1.0 if task.metric.mode == "max" else -1.0
    recorded = [t for t in trials if t["recorded_proxy"] is not None]
    return {"run": run_path, "trials": trials, "metric": name, "finetune_epochs": config["finetune.epochs"],
            "spearman": {
                "proxy": rank_correlation([t["plain"] for t in trials], finetuned),
                "proxy_reconstructed": rank_correlation([t["reconstructed"] for t in trials], finetuned),
                "macs": rank_correlation([sign * t["macs"] for t in trials], finetuned),
                "recorded_proxy": (rank_correlation([t["recorded_proxy"] for t in recorded],
                                                    [t["finetuned"] for t in recorded])
                                   if len(recorded) >= 3 else None)},
            "seconds": {k: statistics.mean(t[f"seconds_{k}"] for t in trials) for k in ("plain", "reconstructed")}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="finished search run directories")
    p.add_argument("--out", default="proxy_quality.json")
    args = p.parse_args()
    results, failed = [], False
    for run in args.runs:
        print(f"{run}:", flush=True)
        try:
            results.append(study(run))
        except AutopruneError as e:
            print(f"proxy_quality: error: {e}", file=sys.stderr)
            failed = True
    print(f"\n{'run':<40} {'trials':>6} {'proxy':>7} {'+recon':>7} {'MACs':>7} {'recorded':>8} {'s/eval':>7} "
          f"{'+recon s':>8}")
    for r in results:
        rho = {k: "-" if v is None else f"{v:.2f}" for k, v in r["spearman"].items()}
        print(f"{Path(r['run']).name:<40} {len(r['trials']):>6} {rho['proxy']:>7} {rho['proxy_reconstructed']:>7} "
              f"{rho['macs']:>7} {rho['recorded_proxy']:>8} {r['seconds']['plain']:>7.2f} "
              f"{r['seconds']['reconstructed']:>8.2f}")
    if results:
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"written: {args.out}")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
