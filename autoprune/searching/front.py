"""Compute and persist the Pareto front of a run: ``front.parquet`` and ``pareto.png``."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from autoprune.objectives import Objective, values_of
from autoprune.searching.pareto import hypervolume, pareto_indices
from autoprune.searching.plot import plot_front
from autoprune.searching.results import FRONT_FILE, read_trials, run_objectives
from autoprune.searching.storage import RunDir, as_run_dir

PLOT_FILE = "pareto.png"


@dataclass
class Front:
    rows: list[dict[str, Any]]
    hypervolume: float
    base: dict[str, float] | None


def is_full(row: dict[str, Any]) -> bool:
    """Fine-tuned with the search's full budget: only such trials enter the front (not stage-0 or short ones)."""
    return row.get("stage") in (None, "full")


def base_values(rows: list[dict[str, Any]], objectives: Sequence[Objective]) -> dict[str, float] | None:
    """The base model's value of each objective as measured by the finished trials (median over workers)."""
    ok = [r for r in rows if r["status"] == "ok" and is_full(r)]
    if not ok:
        return None
    out = {}
    for o in objectives:
        values = sorted(r[f"base_{o.name}"] for r in ok)
        out[o.name] = values[len(values) // 2]
    return out


def compute_front(rows: list[dict[str, Any]], objectives: Sequence[Objective]) -> Front:
    """Non-dominated set over finished, feasible trials; hypervolume relative to the base model.

    Sorted best first in the first objective.
    """
    candidates = [r for r in rows if r["status"] == "ok" and r["feasible"] and is_full(r)]
    front = [candidates[i] for i in pareto_indices([values_of(r, objectives) for r in candidates], objectives)]
    base = base_values(rows, objectives)
    hv = hypervolume([values_of(r, objectives) for r in front], values_of(base, objectives),
                     objectives) if base and front else 0.0
    return Front(sorted(front, key=lambda r: objectives[0].loss(r[objectives[0].name])), hv, base)


def write_front(run_dir: str | Path | RunDir) -> Front:
    """Recompute the front over the run's objectives (from its marker) from ``trials.parquet``; write
    ``front.parquet`` and ``pareto.png``."""
    run = as_run_dir(run_dir)
    objectives = run_objectives(run)
    table = read_trials(run)
    rows = table.to_pylist()
    front = compute_front(rows, objectives)
    run.write_table(FRONT_FILE, pa.Table.from_pylist(front.rows, schema=table.schema))
    run.write_bytes(PLOT_FILE, plot_front(rows, {r["trial_id"] for r in front.rows}, front.base, objectives))
    return front


def format_rows(rows: list[dict[str, Any]], metric: str = "accuracy") -> str:
    """A compact table of trials: id, criterion, policy summary, the task's ``metric``, size, latency, status."""
    lines = [f"{'trial':>14s} {'criterion':>15s} {'ratios mean [min-max]':>22s} {metric[:9]:>9s} "
             f"{'size KB':>9s} {'lat ms':>8s} {'status':>8s}"]
    for r in rows:
        ratios = [v for k, v in r.items() if k.startswith("ratio:") and v is not None]
        summary = f"{sum(ratios) / len(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]" if ratios else "-"
        acc = f"{r[metric]:.4f}" if r.get(metric) is not None else "-"
        size = f"{r['size_bytes'] / 1024:.1f}" if r.get("size_bytes") is not None else "-"
        lat = f"{r['latency_ms']:.3f}" if r.get("latency_ms") is not None else "-"
        status = "infeas." if r["status"] == "ok" and not r.get("feasible", True) else r["status"]
        if r["status"] == "ok" and not is_full(r):  # the metric is the stage's: the proxy, or after a short fine-tune
            status = str(r["stage"])
        lines.append(f"{r['trial_id']:>14s} {str(r.get('criterion') or '-'):>15s} {summary:>22s} {acc:>9s} "
                     f"{size:>9s} {lat:>8s} {status:>8s}")
    return "\n".join(lines)
