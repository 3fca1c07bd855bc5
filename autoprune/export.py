"""Export a chosen trial: policy, weights, a ``torch.export`` program, metrics and a model card.

``autoprune.load(DIR)`` rebuilds the model from the zoo architecture, the recorded pruning history
and the weights (``torch.load(weights_only=True)``); ``model.pt2`` needs plain torch only:
``torch.export.load("model.pt2").module()``. ``MANIFEST.sha256`` lists every file's checksum;
``autoprune.load`` refuses an export that does not match it.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune import checkpoint as ckpt_io
from autoprune.data import load_data
from autoprune.errors import AutopruneError
from autoprune.front import compute_front
from autoprune.objectives import Objective
from autoprune.policy import Policy
from autoprune.results import read_trials, run_objectives
from autoprune.storage import RunDir, as_run_dir
from autoprune.train import evaluate

PICKS = ("knee", "max-accuracy", "min-latency", "min-size")
MODEL_FILE, PROGRAM_FILE, MANIFEST_FILE = "model.pt", "model.pt2", "MANIFEST.sha256"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """``sha256sum``-compatible list of every file in ``directory``."""
    lines = [f"{_sha256(p)}  {p.name}" for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_FILE]
    (directory / MANIFEST_FILE).write_text("\n".join(lines) + "\n")


def verify_manifest(directory: Path) -> None:
    """Refuse an export whose files do not match its manifest (tampered, truncated or missing)."""
    manifest = directory / MANIFEST_FILE
    if not manifest.is_file():
        raise AutopruneError(f"export '{directory}' has no {MANIFEST_FILE}: refusing to load it")
    for line in manifest.read_text().splitlines():
        expected, _, name = line.partition("  ")
        path = directory / name
        if not path.is_file():
            raise AutopruneError(f"export '{directory}': {name} listed in {MANIFEST_FILE} is missing")
        if _sha256(path) != expected:
            raise AutopruneError(f"export '{directory}': {name} does not match its checksum in {MANIFEST_FILE} "
                                 f"(modified or corrupt): refusing to load it")


def knee(rows: list[dict[str, Any]], objectives: Sequence[Objective]) -> dict[str, Any]:
    """The front point closest to the ideal point after scaling each objective to [0, 1] over the front."""
    bounds = [(o, min(r[o.name] for r in rows), max(r[o.name] for r in rows)) for o in objectives]

    def distance(r: dict[str, Any]) -> float:
        scaled = []
        for o, lo, hi in bounds:
            v = (r[o.name] - lo) / (hi - lo) if hi > lo else 0.0
            scaled.append(1.0 - v if o.maximize else v)  # 0 is ideal for every objective
        return math.hypot(*scaled)

    return min(rows, key=distance)


def pick_trial(run_dir: str | Path | RunDir, pick: str, max_latency_ms: float | None = None, min_accuracy: float | None = None,
               max_size_mb: float | None = None) -> dict[str, Any]:
    """Choose a trial of the run: a point of the (filtered) front, or ``trial:ID``."""
    rows = read_trials(run_dir).to_pylist()
    if pick.startswith("trial:"):
        wanted = pick.split(":", 1)[1]
        match = [r for r in rows if r["trial_id"] == wanted]
        if not match:
            raise AutopruneError(f"--pick {pick}: run '{run_dir}' has no trial '{wanted}'")
        if match[0]["status"] != "ok":
            raise AutopruneError(f"--pick {pick}: that trial did not finish ({match[0]['status']}: {match[0]['error']})")
        return match[0]
    if pick not in PICKS:
        raise AutopruneError(f"--pick must be one of {', '.join(PICKS)} or trial:ID, got '{pick}'")
    objectives = run_objectives(run_dir)
    front = compute_front(rows, objectives).rows
    if max_latency_ms is not None:
        front = [r for r in front if r["latency_ms"] <= max_latency_ms]
    if min_accuracy is not None:
        front = [r for r in front if r["accuracy"] >= min_accuracy]
    if max_size_mb is not None:
        front = [r for r in front if r["size_bytes"] <= max_size_mb * 1e6]
    if not front:
        raise AutopruneError(f"no Pareto-front trial of '{run_dir}' meets the requested limits")
    if pick == "knee":
        return knee(front, objectives)
    key, sign = {"max-accuracy": ("accuracy", -1), "min-latency": ("latency_ms", 1), "min-size": ("size_bytes", 1)}[pick]
    return min(front, key=lambda r: sign * r[key])


def export_trial(run_dir: str | Path | RunDir, row: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Write the export of ``row`` into ``out`` (replaced atomically) and return its metrics."""
    run, out = as_run_dir(run_dir), Path(out)
    if not row.get("checkpoint") or not run.exists(row["checkpoint"]):
        raise AutopruneError(f"trial {row['trial_id']} has no checkpoint at '{run.display(row.get('checkpoint') or '')}'")
    with run.local_path(row["checkpoint"]) as source:
        ckpt = ckpt_io.load(source)
        model = ckpt.build(source)
    data = load_data(ckpt.data_spec)
    test_accuracy = evaluate(model, data.loader("test", 256))
    if abs(test_accuracy - row["test_accuracy"]) > 1e-9:
        raise AutopruneError(f"exported model gives test accuracy {test_accuracy:.4f}, the run recorded "
                             f"{row['test_accuracy']:.4f}: its checkpoint does not match the trial")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy = Policy.from_dict(ckpt.record.policy)
    policy.save(tmp / "policy.json")
    ckpt_io.save(ckpt, tmp / MODEL_FILE)
    example = torch.randn(2, *ckpt.input_shape)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp / PROGRAM_FILE)
    metrics = {"trial_id": row["trial_id"], "model": ckpt.model_spec.arch, "test_accuracy": test_accuracy,
               "val_accuracy": row["accuracy"], "latency_ms": row["latency_ms"],
               "latency_iqr_ms": row["latency_iqr_ms"], "size_bytes": row["size_bytes"], "params": row["params"],
               "macs": row["macs"], "input_shape": ["batch", *ckpt.input_shape], "preprocess": ckpt.preprocess,
               "base": {k: row[f"base_{k}"] for k in ("accuracy", "test_accuracy", "size_bytes", "latency_ms",
                                                        "params", "macs")}}
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (tmp / "README.md").write_text(model_card(metrics, policy))
    write_manifest(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return metrics


def model_card(m: dict[str, Any], policy: Policy) -> str:
    b = m["base"]
    return f"""# Pruned {m['model']} (trial {m['trial_id']})

Structurally pruned with autoprune: channels physically removed by the per-layer policy in
`policy.json` (criterion `{policy.criterion}`), then fine-tuned.

| metric | base | pruned |
| --- | ---: | ---: |
| test accuracy | {b['test_accuracy']:.4f} | {m['test_accuracy']:.4f} |
| validation accuracy | {b['accuracy']:.4f} | {m['val_accuracy']:.4f} |
| parameters | {b['params']:,} | {m['params']:,} |
| size (bytes) | {b['size_bytes']:,} | {m['size_bytes']:,} |
| MACs | {b['macs']:,} | {m['macs']:,} |
| latency (ms, median) | {b['latency_ms']:.3f} | {m['latency_ms']:.3f} |

Latency was measured on the search worker, base and pruned interleaved in one process.

## Use

Inputs: shape `{m['input_shape']}` (any batch size), pixels scaled to [0, 1], then normalised with
mean `{[round(x, 4) for x in m['preprocess']['mean']]}` and std `{[round(x, 4) for x in m['preprocess']['std']]}`.

```python
import torch
model = torch.export.load("model.pt2").module()      # plain torch, no autoprune needed
# or: import autoprune; model = autoprune.load(".")  # nn.Module rebuilt from model.pt (weights_only)
```
"""


def load(directory: str | Path) -> nn.Module:
    """Rebuild an exported model from ``DIR/model.pt`` (``weights_only=True``) after checking ``MANIFEST.sha256``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AutopruneError(f"export directory '{directory}' does not exist")
    verify_manifest(directory)
    path = directory / MODEL_FILE
    return ckpt_io.load(path).build(path)
