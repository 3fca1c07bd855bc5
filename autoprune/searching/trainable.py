"""The Ray Tune trainable: one policy per trial, pruned, fine-tuned and measured on the worker.

The base checkpoint and the task (with its data) reach the worker through Ray's object store (``tune.with_parameters``),
not from disk. Validation accuracy is reported after every fine-tuning epoch together with every
objective, the final report carries ``final=True`` and the pruned checkpoint. A trial that raises (NaN
loss, out of memory, a pruning error) reports ``status='failed'`` with the error: the search goes on.
"""
from __future__ import annotations

import dataclasses
import math
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from autoprune import devices
from autoprune.measure import gate
from autoprune.measure.latency import RemoteMeter
from autoprune.pruning import checkpoint as ckpt_io
from autoprune.searching.searchers.base import EPOCHS_KEY, stage_of
from autoprune.searching.space import SearchSpace
from autoprune.searching.trial import Resume, TrialResult, TrialSettings, run_trial
from autoprune.tasks.base import Task

PRUNED_FILE = "pruned.pt"
PROGRESS_FILE = "progress.pt"  # fine-tuning step, optimizer and schedule state: a resumed trial continues them


REPORTED = ("size_bytes", "latency_ms", "params", "macs", "latency_iqr_ms", "latency_ratio", "latency_raw_ms",
            "latency_raw_base_ms", "latency_predicted_ms", "latency_cached")


def _objectives(metrics: dict[str, Any], metric: str) -> dict[str, Any]:
    return {metric: metrics[f"val_{metric}"], **{k: metrics[k] for k in REPORTED if k in metrics}}


def _save(directory: str, base: ckpt_io.Checkpoint, state: TrialResult, epochs_done: int, final: bool,
          progress: dict[str, Any]) -> None:
    metrics = {"pruned": state.pruned, "base": state.base, "seconds": state.seconds, "epochs_done": epochs_done,
               "final": final}
    ckpt_io.save(ckpt_io.from_model(state.model, base.model_spec, base.data_spec, base.input_shape, base.preprocess,
                                    metrics), Path(directory) / PRUNED_FILE)
    torch.save(progress, Path(directory) / PROGRESS_FILE)


def _restore(base: ckpt_io.Checkpoint) -> Resume | None:
    """The trial's last checkpoint (after a node loss or a restart), if Tune hands one back."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        saved = ckpt_io.load(Path(directory) / PRUNED_FILE)
        model = saved.build(base_module=base.module)
        progress = torch.load(Path(directory) / PROGRESS_FILE, map_location="cpu", weights_only=True)
    m = saved.metrics
    return Resume(model, m["base"], m["pruned"], int(m["epochs_done"]), dict(m.get("seconds", {})), progress)


def policy_trial(config: dict[str, Any], *, base: ckpt_io.Checkpoint, task: Task, space: SearchSpace,
                 settings: TrialSettings, meter: Any = None, base_scores: dict[str, float] | None = None) -> None:
    """Run one candidate; ``config['point']`` is the searcher's point of ``space``.

    After every fine-tuning epoch the pruned model is checkpointed, so a trial whose node is lost
    resumes on another node from its last epoch (``resumed_from_epoch`` in its final result).
    """
    torch.set_num_threads(settings.threads)
    gate.install(settings.gate)
    host, metric, device = socket.gethostname(), task.metric.name, None
    try:
        device = devices.resolve(settings.device)  # what Ray gave this trial, decided here, not in the driver
        settings = dataclasses.replace(settings, device=device)
        policy = space.policy(config["point"])
        resume = _restore(base)

        def on_epoch(epoch: int, metrics: dict[str, Any], state: TrialResult, progress: dict[str, Any]) -> None:
            with tempfile.TemporaryDirectory() as tmp:
                _save(tmp, base, state, epoch, final=False, progress=progress)
                tune.report({**_objectives(metrics, metric), "status": "running", "epoch": epoch, "final": False,
                             "host": host, "device": device}, checkpoint=tune.Checkpoint.from_directory(tmp))

        stage, remote = stage_of(config["point"]), RemoteMeter(meter) if meter is not None else None
        if stage == "short":
            settings = dataclasses.replace(settings, finetune_epochs=float(config["point"][EPOCHS_KEY]))
        result = run_trial(base.build(), task, policy, settings, on_epoch=on_epoch, resume=resume, meter=remote,
                            base_scores=base_scores)
    except Exception as e:  # recorded as a failed trial; the search continues
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        tune.report({"status": "failed", "error": f"{type(e).__name__}: {message}"[:500], "final": True,
                     "host": host, "device": device, "epoch": 0, metric: math.nan,
                     **{k: math.nan for k in ("size_bytes", "latency_ms", "params", "macs")}})
        return
    base_metrics = {f"base_{k}": v for k, v in _objectives(result.base, metric).items()}
    base_metrics[f"base_test_{metric}"] = result.base.get(f"test_{metric}")
    final = {**_objectives(result.pruned, metric), **base_metrics, f"test_{metric}": result.pruned.get(f"test_{metric}"),
             f"proxy_{metric}": result.pruned[f"proxy_{metric}"], "stage": stage,
             "criterion_used": result.pruned["criterion_used"], "epochs": settings.finetune_epochs,
             "latency_source": "measured", "status": "ok", "error": None, "final": True, "host": host, "device": device,
             "epoch": math.ceil(settings.finetune_epochs),
             "resumed_from_epoch": resume.epochs_done if resume else None,
             **{f"seconds_{k}": v for k, v in result.seconds.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        _save(tmp, base, result, math.ceil(settings.finetune_epochs), final=True, progress={})
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(tmp))
