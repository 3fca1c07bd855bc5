"""``autoprune.search``: prune-search a model you already have, with your evaluation and training loop.

    result = autoprune.search(model, example_input, evaluate=my_eval, finetune=my_finetune,
                              calibration=batches, out="runs/mine", trials=16)
    result.front, result.trials, result.run_dir
    autoprune.export(result.run_dir, pick="knee", out="export/")

It runs on Ray exactly as ``autoprune search`` does (a private local Ray, or the cluster named by ``RAY_ADDRESS``).
``config`` is a search-space YAML path or a mapping; keyword ``overrides`` set any key as ``--set`` does (a mapping
for a section: ``searcher={"name": "tpe"}``; the config's ``finetune`` section, whose name the training callable
takes, goes in ``config={"finetune": {...}}``). The model and the callables travel to the workers by value
(cloudpickle; see ``autoprune.tasks.callables``) and are kept in the run directory, so ``export`` and ``finalize``
work from it later.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.tasks.base import Batch, Metric
from autoprune.tasks.callables import CallableTask, Evaluate, Finetune, Loss


@dataclass
class SearchResult:
    """What a search left: its run directory, every trial and the Pareto front (pandas DataFrames with every column
    of ``trials.parquet``), the front's hypervolume, and the counts of finished and failed trials."""

    run_dir: str
    trials: Any
    front: Any
    hypervolume: float
    finished: int
    failed: int


def search(model: nn.Module, example_input: torch.Tensor, *, evaluate: Evaluate, finetune: Finetune | None = None,
           calibration: Iterable[Batch] | None = None, test: Evaluate | None = None, loss: Loss | None = None,
           config: str | Path | Mapping[str, Any] | None = None, out: str | Path = "runs/search",
           resume: bool = False, echo: Callable[[str], None] = print, **overrides: Any) -> SearchResult:
    """Search pruning policies of ``model``: each candidate is pruned, recalibrated on ``calibration``, fine-tuned
    by ``finetune(model, epochs, teacher)`` when given and scored by ``evaluate(model) -> float`` (the config's
    ``metric``: ``accuracy`` to maximise unless ``metric={"name": ..., "mode": "min"}``); ``loss(model, batch)``,
    one training loss per sample, lets the ``taylor`` and ``hessian`` criteria rank channels. See the module."""
    from autoprune.config import load_config
    from autoprune.searching.controller import PythonRun, run_search
    from autoprune.searching.results import FRONT_FILE, read_trials

    if not isinstance(model, nn.Module):
        raise AutopruneError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path: str | Path | None = None
    settings: dict[str, Any] = {}
    if isinstance(config, Mapping):
        settings.update(config)
    else:
        path = config
    settings.update(overrides)
    if "task" in settings or "base" in settings and "weights" in dict(settings["base"] or {}):
        raise AutopruneError("autoprune.search takes the model and the task as arguments: leave 'task' and "
                             "'base.weights' to configs for the CLI")
    loaded = load_config(path, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
                                for key, value in settings.items()])
    task = CallableTask(evaluate, example_input, finetune=finetune, calibration=calibration, test=test, loss=loss,
                        metric=Metric(loaded["metric.name"], loaded["metric.mode"]))
    summary = run_search(loaded, out, resume=resume, echo=echo, python=PythonRun(model, task))
    run = summary.run_dir
    trials = read_trials(run).to_pandas()
    front = read_trials(run, FRONT_FILE).to_pandas() if run.exists(FRONT_FILE) else trials.iloc[0:0]
    return SearchResult(run.uri, trials, front, summary.front.hypervolume, summary.finished, summary.failed)
