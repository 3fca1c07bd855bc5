"""The Ray Tune trainable: one policy per trial, pruned, fine-tuned and measured on the worker.

The base checkpoint and the data reach the worker through Ray's object store (``tune.with_parameters``),
not from disk. Validation accuracy is reported after every fine-tuning epoch together with every
objective, the final report carries ``final=True`` and the pruned checkpoint. A trial that raises (NaN
loss, out of memory, a pruning error) reports ``status='failed'`` with the error: the search goes on.
"""
from __future__ import annotations

import math
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from autoprune import checkpoint as ckpt_io
from autoprune.data import ImageData
from autoprune.space import SearchSpace
from autoprune.trial import TrialSettings, run_trial

PRUNED_FILE = "pruned.pt"


def _objectives(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": metrics["val_accuracy"], "size_bytes": metrics["size_bytes"],
            "latency_ms": metrics["latency_ms"], "params": metrics["params"], "macs": metrics["macs"],
            "latency_iqr_ms": metrics["latency_iqr_ms"]}


def policy_trial(config: dict[str, Any], *, base: ckpt_io.Checkpoint, data: ImageData, space: SearchSpace,
                 settings: TrialSettings) -> None:
    """Run one candidate; ``config['point']`` is the searcher's point of ``space``."""
    torch.set_num_threads(settings.threads)
    host = socket.gethostname()
    try:
        policy = space.policy(config["point"])
        model = base.build()

        def on_epoch(epoch: int, metrics: dict[str, Any]) -> None:
            tune.report({**_objectives(metrics), "status": "running", "epoch": epoch, "final": False, "host": host})

        result = run_trial(model, data, policy, settings, on_epoch=on_epoch)
    except Exception as e:  # recorded as a failed trial; the search continues
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        tune.report({"status": "failed", "error": f"{type(e).__name__}: {message}"[:500], "final": True,
                     "host": host, "epoch": 0, "accuracy": math.nan, "size_bytes": math.nan,
                     "latency_ms": math.nan})
        return
    base_metrics = {f"base_{k}": v for k, v in _objectives(result.base).items()}
    base_metrics["base_test_accuracy"] = result.base["test_accuracy"]
    final = {**_objectives(result.pruned), **base_metrics, "test_accuracy": result.pruned["test_accuracy"],
             "status": "ok", "error": None, "final": True, "host": host, "criterion": policy.criterion,
             "epoch": math.ceil(settings.finetune_epochs),
             **{f"seconds_{k}": v for k, v in result.seconds.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_io.save(ckpt_io.from_model(result.model, base.model_spec, base.data_spec, base.input_shape,
                                        base.preprocess, {**result.pruned, "base": result.base}),
                     Path(tmp) / PRUNED_FILE)
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(tmp))
