"""The results store: one Parquet row per finished trial, rewritten atomically on every append.

Also the run directory's marker, ``autoprune-run.json``, which says what the run searched (its objectives)
and where its Optuna study lives.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from autoprune.errors import AutopruneError
from autoprune.objectives import ACCURACY, DEFAULT_OBJECTIVES, Objective, metric_objective, parse_objectives
from autoprune.searching.storage import RunDir, as_run_dir

MARKER = "autoprune-run.json"
TRIALS_FILE = "trials.parquet"
FRONT_FILE = "front.parquet"
COST_COLUMNS = ["params", "size_bytes", "macs", "latency_ms", "latency_iqr_ms"]
SECONDS_COLUMNS = ["seconds_prune", "seconds_finetune", "seconds_measure", "seconds_recalibrate", "seconds_evaluate"]
FIXED_COLUMNS = ["trial_id", "status", "error", "searcher", "criterion", "criterion_used"]
# how the latency figure came about (autoprune/measure/latency.py): the ratio to the base timed back to back, the raw
# timings under whatever load there was, the prediction made before measuring, and whether it came from the cache
# and its source: "measured" on the target, or "predicted" by the latency model (stage-0 candidates are not timed)
LATENCY_COLUMNS = ["latency_ratio", "latency_raw_ms", "latency_raw_base_ms", "latency_predicted_ms", "latency_cached",
                   "latency_source"]

STRING_COLUMNS = {"trial_id", "status", "error", "searcher", "criterion", "criterion_used", "host", "device", "checkpoint",
                  "finished_at", "stage", "latency_source"}
INT_COLUMNS = {"params", "size_bytes", "macs", "base_params", "base_size_bytes", "base_macs", "resumed_from_epoch"}


def schema(groups: Iterable[str], metric: str = ACCURACY.name) -> pa.Schema:
    """Fixed columns, one ``ratio:<group>`` column per group, then the task's ``metric`` (validation; ``test_``),
    costs, base values and timings.

    Staged evaluation adds the stage a row was evaluated at (proxy: prune + BN recalibration only; short; full),
    the fine-tuning epochs it got, and its stage-0 metric on the task's proxy split (``proxy_<metric>``, for every
    stage, so the proxy's rank correlation with the fine-tuned metric can be reported). For a proxy row, the metric
    is that proxy value."""
    measured = [metric, f"test_{metric}", *COST_COLUMNS]
    tail = ["feasible", "stage", "epochs", f"proxy_{metric}", *measured, *[f"base_{c}" for c in measured],
            *LATENCY_COLUMNS, *SECONDS_COLUMNS, "host", "device", "checkpoint", "resumed_from_epoch", "finished_at"]
    fields = []
    for name in [*FIXED_COLUMNS, *[f"ratio:{g}" for g in groups], *tail]:
        if name in STRING_COLUMNS:
            t = pa.string()
        elif name in ("feasible", "latency_cached"):
            t = pa.bool_()
        elif name in INT_COLUMNS:
            t = pa.int64()
        else:
            t = pa.float64()
        fields.append(pa.field(name, t))
    return pa.schema(fields)


class ResultsStore:
    """``RUN_DIR/trials.parquet``: every finished trial, each exactly once (keyed by ``trial_id``)."""

    def __init__(self, run_dir: str | Path | RunDir, groups: list[str], metric: str = ACCURACY.name) -> None:
        self.run, self.metric = as_run_dir(run_dir), metric
        self.schema = schema(groups, metric)
        existing = read_trials(self.run).to_pylist() if self.run.exists(TRIALS_FILE) else []
        self._rows: dict[str, dict[str, Any]] = {r["trial_id"]: r for r in existing}

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows.values())

    def __contains__(self, trial_id: str) -> bool:
        return trial_id in self._rows

    def append(self, row: dict[str, Any]) -> None:
        """Add (or replace) one trial's row and rewrite the file atomically."""
        self.extend([row])

    def extend(self, rows: list[dict[str, Any]]) -> None:
        """Add (or replace) several rows with one atomic rewrite (stage 0 records its candidates a chunk at a time)."""
        for row in rows:
            self._rows[row["trial_id"]] = {name: row.get(name) for name in self.schema.names}
        self.run.write_table(TRIALS_FILE, pa.Table.from_pylist(self.rows, schema=self.schema))


def read_trials(run_dir: str | Path | RunDir, name: str = TRIALS_FILE) -> pa.Table:
    run = as_run_dir(run_dir)
    if not run.exists(name):
        raise AutopruneError(f"no results in '{run}': {run.display(name)} does not exist (run 'autoprune search' first)")
    try:
        return run.read_table(name)
    except (pa.ArrowInvalid, OSError) as e:
        raise AutopruneError(f"results file '{run.display(name)}' is unreadable: {e}") from None


def read_marker(run_dir: str | Path | RunDir) -> dict[str, Any]:
    """The run directory's ``autoprune-run.json``; only directories autoprune created have one."""
    run = as_run_dir(run_dir)
    if not run.exists(MARKER):
        raise AutopruneError(f"'{run}' is not an autoprune run directory (no {MARKER})")
    try:
        marker = json.loads(run.read_text(MARKER))
    except (ValueError, OSError) as e:
        raise AutopruneError(f"{run.display(MARKER)} is unreadable: {e}") from None
    if not isinstance(marker, dict) or marker.get("format") != "autoprune-run":
        raise AutopruneError(f"{run.display(MARKER)} is not an autoprune run marker")
    return marker


def run_metric(run_dir: str | Path | RunDir) -> Objective:
    """The task's metric of the run, as recorded in its marker (runs from before named metrics: accuracy)."""
    recorded = read_marker(run_dir).get("metric") or {"name": ACCURACY.name, "mode": "max"}
    return metric_objective(recorded["name"], recorded["mode"])


def run_objectives(run_dir: str | Path | RunDir) -> tuple[Objective, ...]:
    """The objectives the run searched over, as recorded in its marker.

    Version 1 markers predate configurable objectives: those runs always searched the default three.
    """
    marker = read_marker(run_dir)
    if marker.get("version", 1) < 2:
        return DEFAULT_OBJECTIVES
    return parse_objectives(marker["objectives"], f"{MARKER} objectives", run_metric(run_dir))


def skipped_row(point: dict[str, Any], groups: list[str], reason: str, searcher: str, **fields: Any) -> dict[str, Any]:
    """The row of a candidate skipped before it was fine-tuned (never counted as a trial): its ratios, criterion, why,
    and ``fields`` (its predicted or measured latency)."""
    row: dict[str, Any] = {f"ratio:{g}": point[g] for g in groups}
    row.update(trial_id=f"skip-{uuid.uuid4().hex[:8]}", status="skipped", error=reason, searcher=searcher,
               criterion=point["criterion"], finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"), **fields)
    return row
