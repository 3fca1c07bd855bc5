"""Export a chosen trial: policy, weights, a ``torch.export`` program, ONNX and int8 ONNX models, metrics and a
model card (``autoprune/deploy/artefacts.py`` writes the ONNX files, and the weight-shared one on request).

``autoprune.load(DIR)`` rebuilds the model from the zoo architecture, the recorded pruning history
and the weights (``torch.load(weights_only=True)``); ``model.pt2`` needs plain torch only:
``torch.export.load("model.pt2").module()``. ``MANIFEST.sha256`` lists every file's checksum;
``autoprune.load`` refuses an export that does not match it. ``write_export`` writes these files for
``export`` and for ``autoprune.finalize``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.config import SearchConfig, load_config
from autoprune.deploy.artefacts import (
    INT8_FILE,
    ONNX_FILE,
    DeployOptions,
    deploy_card,
    with_shared_weights,
    write_deployables,
)
from autoprune.errors import AutopruneError
from autoprune.measure.spec import LatencySpec
from autoprune.models.zoo import build_model
from autoprune.objectives import Objective
from autoprune.pruning import checkpoint as ckpt_io
from autoprune.pruning.policy import Policy
from autoprune.searching.results import read_trials, run_metric, run_objectives
from autoprune.searching.storage import RunDir, as_run_dir
from autoprune.tasks.base import Task

PICKS = ("knee", "best", "min-latency", "min-size")  # best: the best validation metric
MODEL_FILE, PROGRAM_FILE, MANIFEST_FILE = "model.pt", "model.pt2", "MANIFEST.sha256"
EXPORT_FILES = ("policy.json", MODEL_FILE, PROGRAM_FILE, ONNX_FILE, INT8_FILE, "metrics.json", "README.md",
                MANIFEST_FILE)  # and model.shared.npz with weight sharing
# how far the written model's test metric may be from the recorded one: 0.1 % of it, and at least 0.001 (0.1 point
# of accuracy; a model evaluated on a GPU, in bf16 or with other kernels, can score slightly differently on CPU)
TOLERANCE = 0.001


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


def verify_manifest(directory: Path, required: Sequence[str] = (MODEL_FILE,)) -> None:
    """Refuse an export whose files do not match its manifest (tampered, truncated or missing), whose manifest
    leaves out a file in ``required`` (what the caller reads), or names a file outside ``directory``."""
    manifest = directory / MANIFEST_FILE
    if not manifest.is_file():
        raise AutopruneError(f"export '{directory}' has no {MANIFEST_FILE}: refusing to load it")
    listed = set()
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        expected, _, name = line.partition("  ")
        if not name or len(expected) != 64:
            raise AutopruneError(f"export '{directory}': line {number} of {MANIFEST_FILE} is not '<sha256>  <file>': "
                                 f"refusing to load it")
        if name in (".", "..") or Path(name).name != name:
            raise AutopruneError(f"export '{directory}': {MANIFEST_FILE} names '{name}', not a file of the export "
                                 f"directory: refusing to load it")
        path = directory / name
        if not path.is_file():
            raise AutopruneError(f"export '{directory}': {name} listed in {MANIFEST_FILE} is missing")
        if _sha256(path) != expected:
            raise AutopruneError(f"export '{directory}': {name} does not match its checksum in {MANIFEST_FILE} "
                                 f"(modified or corrupt): refusing to load it")
        listed.add(name)
    unlisted = [name for name in required if name not in listed]
    if unlisted:
        raise AutopruneError(f"export '{directory}': {MANIFEST_FILE} does not list {', '.join(unlisted)}: "
                             f"refusing to load it")


def metrics_differ(a: float, b: float) -> bool:
    """Whether two values of a metric are further apart than ``TOLERANCE`` allows (one test image in 1,000 is not)."""
    return abs(a - b) > TOLERANCE * max(1.0, abs(b)) + 1e-9


def check_test_metric(name: str, measured: float, recorded: float) -> None:
    """Refuse a written model whose test metric is further from the recorded one than ``TOLERANCE`` allows."""
    if metrics_differ(measured, recorded):
        raise AutopruneError(f"the written model gives test {name} {measured:.4f} on CPU, {recorded:.4f} was "
                             f"recorded: the model does not match its metrics")


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


def pick_trial(run_dir: str | Path | RunDir, pick: str, max_latency_ms: float | None = None,
               metric_bound: float | None = None, max_size_mb: float | None = None) -> dict[str, Any]:
    """Choose a trial of the run: a point of the (filtered) front, or ``trial:ID``. ``metric_bound``: the
    validation metric at least this (at most, for a metric to minimise)."""
    # imported here: autoprune.searching.front imports matplotlib, which ``import autoprune`` should not pay for
    from autoprune.searching.front import compute_front

    rows = read_trials(run_dir).to_pylist()
    if pick.startswith("trial:"):
        wanted = pick.split(":", 1)[1]
        match = [r for r in rows if r["trial_id"] == wanted]
        if not match:
            raise AutopruneError(f"--pick {pick}: run '{run_dir}' has no trial '{wanted}'")
        if match[0]["status"] != "ok":
            raise AutopruneError(f"--pick {pick}: that trial did not finish "
                                 f"({match[0]['status']}: {match[0]['error']})")
        return match[0]
    if pick not in PICKS:
        raise AutopruneError(f"--pick must be one of {', '.join(PICKS)} or trial:ID, got '{pick}'")
    objectives = run_objectives(run_dir)
    front = compute_front(rows, objectives).rows
    if max_latency_ms is not None:
        front = [r for r in front if r["latency_ms"] <= max_latency_ms]
    metric = run_metric(run_dir)
    if metric_bound is not None:
        front = [r for r in front if metric.loss(r[metric.name]) <= metric.loss(metric_bound)]
    if max_size_mb is not None:
        front = [r for r in front if r["size_bytes"] <= max_size_mb * 1e6]
    if not front:
        raise AutopruneError(f"no Pareto-front trial of '{run_dir}' meets the requested limits")
    if pick == "knee":
        return knee(front, objectives)
    if pick == "best":
        return min(front, key=lambda r: metric.loss(r[metric.name]))
    return min(front, key=lambda r: r[{"min-latency": "latency_ms", "min-size": "size_bytes"}[pick]])


def export(run_dir: str | Path | RunDir, pick: str = "knee", out: str | Path = "export", *,
           max_latency_ms: float | None = None, metric_bound: float | None = None,
           max_size_mb: float | None = None, deploy: DeployOptions | None = None,
           echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Export the trial ``pick`` chooses (see ``pick_trial``) from ``run_dir`` into ``out``; return its metrics.
    ``deploy``: what to write beside the PyTorch files (default: the run's ``deploy.*`` config keys)."""
    run = as_run_dir(run_dir)
    if not run.is_dir():
        raise AutopruneError(f"run directory '{run_dir}' does not exist")
    return export_trial(run, pick_trial(run, pick, max_latency_ms, metric_bound, max_size_mb), out, deploy, echo)


def export_trial(run_dir: str | Path | RunDir, row: dict[str, Any], out: str | Path,
                 deploy: DeployOptions | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the export of ``row`` (its trial checkpoint) into ``out`` and return its metrics."""
    run = as_run_dir(run_dir)
    if not row.get("checkpoint") or not run.exists(row["checkpoint"]):
        raise AutopruneError(f"trial {row['trial_id']} has no checkpoint at "
                             f"'{run.display(row.get('checkpoint') or '')}'")
    with run.local_path(row["checkpoint"]) as source:
        ckpt = ckpt_io.load(source)
    python = load_python_run(run)
    if ckpt.record is None:
        raise AutopruneError(f"trial {row['trial_id']}'s checkpoint holds no pruned model")
    policy = Policy.from_dict(ckpt.record.policy)
    m = run_metric(run).name
    base = {k: row[f"base_{k}"] for k in (m, f"test_{m}", "size_bytes", "latency_ms", "params", "macs")}
    metrics = {"trial_id": row["trial_id"], "model": ckpt.model_spec.arch, "metric": m, f"test_{m}": row[f"test_{m}"],
               f"val_{m}": row[m], "latency_ms": row["latency_ms"], "latency_iqr_ms": row["latency_iqr_ms"],
               "size_bytes": row["size_bytes"], "params": row["params"], "macs": row["macs"],
               "input_shape": ["batch", *ckpt.input_shape], "preprocess": ckpt.preprocess, "base": base}
    card = model_card(f"Pruned {ckpt.model_spec.arch} (trial {row['trial_id']})",
                      f"Structurally pruned with autoprune: channels physically removed by the per-layer policy in\n"
                      f"`policy.json` (criterion `{policy.criterion}`), then fine-tuned during the search "
                      f"(`autoprune finalize` fine-tunes it fully).",
                      [("base", base), ("pruned", {**metrics, m: row[m]})],
                      "Latency was measured by the search's latency meter, base and pruned interleaved in one process.",
                      metrics)
    if python is not None:
        ckpt.module = python.model
    config = run_config(run)
    write_export(Path(out), ckpt, policy, metrics, card, python.task if python is not None else run_task(run),
                 latency_spec(config, ckpt.input_shape), deploy or DeployOptions.from_config(config), echo)
    return metrics


def latency_spec(config: SearchConfig, input_shape: tuple[int, ...]) -> LatencySpec:
    """How the run timed candidates (batch, threads, repeats): the runtimes table of the card times the same way."""
    from autoprune.searching.controller import trial_settings

    return trial_settings(config).latency_spec(input_shape)


def load_python_run(run: RunDir) -> Any:
    """The model and task of a run of ``autoprune.search`` (``PythonRun``), None for a run from a config."""
    from autoprune.searching.controller import load_python_run as load

    return load(run)


def run_config(run: RunDir) -> SearchConfig:
    """The run's ``config.yaml``, loaded as ``--resume`` loads it (keys added since take their defaults)."""
    if not run.exists("config.yaml"):
        raise AutopruneError(f"run '{run}' has no config.yaml")
    with run.local_path("config.yaml") as saved:
        return load_config(saved)


def run_task(run: RunDir) -> Task:
    """The task the run searched with (from its ``config.yaml``): exports are checked with it."""
    from autoprune.searching.controller import build_task, classification_data

    config = run_config(run)
    return build_task(config, classification_data(config))


def write_export(out: Path, ckpt: ckpt_io.Checkpoint, policy: Policy, metrics: dict[str, Any], card: str,
                 task: Task, spec: LatencySpec, deploy: DeployOptions, echo: Callable[[str], None]) -> None:
    """Write ``EXPORT_FILES`` into ``out`` (replaced atomically) once the written model, rebuilt from
    ``model.pt``, gives ``metrics['test_<metric>']`` on the task's test split within ``TOLERANCE``. ``metrics``
    and the card gain the deployable files' report (``artefacts.write_deployables``), timed as ``spec``."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        policy.save(tmp / "policy.json")
        ckpt_io.save(ckpt, tmp / MODEL_FILE)
        model = ckpt_io.load(tmp / MODEL_FILE).build(tmp / MODEL_FILE, base_module=ckpt.module)
        name = metrics["metric"]
        check_test_metric(name, task.evaluate(model, "test"), metrics[f"test_{name}"])
        example = torch.randn(2, *ckpt.input_shape)
        batch = torch.export.Dim("batch", min=1, max=65536)
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, tmp / PROGRAM_FILE)
        base = copy.deepcopy(ckpt.module) if ckpt.module is not None else build_model(ckpt.model_spec)
        report = write_deployables(tmp, model, base, task, spec, deploy, metrics[f"test_{name}"],
                                   metrics["size_bytes"], echo)
        metrics.update(report)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "README.md").write_text(card + deploy_card(report, name))
        write_manifest(tmp)
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; a previous ``out`` is renamed aside first and removed once ``new`` is in place (put
    back if that rename fails), so ``out`` is always one whole export, never a partly removed one."""
    if not out.exists():
        new.rename(out)
        return
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def card_rows(metric: str) -> tuple[tuple[str, str, str], ...]:
    """The model card's rows: label, key in a column, format."""
    return ((f"test {metric}", f"test_{metric}", "{:.4f}"), (f"validation {metric}", metric, "{:.4f}"),
            ("parameters", "params", "{:,}"), ("size (bytes)", "size_bytes", "{:,}"), ("MACs", "macs", "{:,}"),
            ("latency (ms, median)", "latency_ms", "{:.3f}"))


def model_card(title: str, about: str, columns: Sequence[tuple[str, dict[str, Any]]], notes: str,
               metrics: dict[str, Any]) -> str:
    """The export's README.md: ``about``, a table of ``columns`` (the first is the base), ``notes``, usage."""
    lines = ["| metric | " + " | ".join(name for name, _ in columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for label, key, fmt in card_rows(metrics["metric"]):
        lines.append(f"| {label} | " + " | ".join(fmt.format(c[key]) if c.get(key) is not None else "-"
                                                  for _, c in columns) + " |")
    base_ms = columns[0][1]["latency_ms"]  # a column measured against another reference states its "speedup"
    lines.append("| speedup (base latency / latency) | " + " | ".join(
        f"{c.get('speedup', base_ms / c['latency_ms']):.2f}x" for _, c in columns) + " |")
    pre = metrics["preprocess"]
    inputs = (f"pixels scaled to [0, 1], then normalised with\nmean `{[round(x, 4) for x in pre['mean']]}` and std "
              f"`{[round(x, 4) for x in pre['std']]}`." if pre else "prepared as the task prepares them.")
    return f"""# {title}

{about}

{chr(10).join(lines)}

{notes}

## Use

Inputs: shape `{metrics['input_shape']}` (any batch size), {inputs}

```python
import torch
model = torch.export.load("model.pt2").module()      # plain torch, no autoprune needed
# or: import autoprune; model = autoprune.load(".")  # nn.Module rebuilt from model.pt (weights_only)
```
"""


def load(directory: str | Path, model: nn.Module | None = None, shared: bool = False) -> nn.Module:
    """Rebuild an exported model from ``DIR/model.pt`` (``weights_only=True``) after checking ``MANIFEST.sha256``.
    ``model``: the unpruned model, for an export of a model given in Python (``autoprune.search``); ``model.pt2``
    needs none. ``shared``: with the weights of ``model.shared.npz`` (weight sharing) instead."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AutopruneError(f"export directory '{directory}' does not exist")
    from autoprune.deploy.sharing import SHARED_FILE

    listed = (MODEL_FILE, SHARED_FILE) if shared and (directory / SHARED_FILE).is_file() else (MODEL_FILE,)
    verify_manifest(directory, listed)  # an export without the shared file: with_shared_weights says so
    path = directory / MODEL_FILE
    rebuilt = ckpt_io.load(path).build(path, base_module=model)
    return with_shared_weights(directory, rebuilt).eval() if shared else rebuilt
