"""Base and pruned checkpoints: plain dicts of tensors and primitives, loadable with ``weights_only=True``.

A pruned checkpoint stores the unpruned architecture's spec plus torch-pruning's pruning history,
so the pruned structure is rebuilt from the zoo and then the weights are loaded: no pickled modules.
"""
from __future__ import annotations

import copy
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.data import DataSpec
from autoprune.errors import AutopruneError
from autoprune.models import ModelSpec, build_model
from autoprune.pruning.structural import RECORD_ATTR, PruneRecord, replay

FORMAT = "autoprune-checkpoint"
PYTHON = "python:"  # model_spec.arch prefix of a base given as a Python object
VERSION = 1


@dataclass
class Checkpoint:
    """A model's weights with what it takes to rebuild it and to reload its data."""

    model_spec: ModelSpec
    data_spec: DataSpec
    input_shape: tuple[int, ...]
    preprocess: dict[str, list[float]]
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)
    record: PruneRecord | None = None
    # a base given as a Python object (``autoprune.search(model, ...)``, ``model_spec.arch`` 'python:...'): the
    # unpruned module the structure is rebuilt from; never written by ``save``
    module: nn.Module | None = None

    @property
    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, *self.input_shape)

    def build(self, path: str | Path = "checkpoint", base_module: nn.Module | None = None) -> nn.Module:
        """Rebuild the (possibly pruned) model and load the weights. A 'python:' architecture is rebuilt from the
        unpruned ``base_module`` (or the checkpoint's own ``module``)."""
        source = base_module if base_module is not None else self.module
        if self.model_spec.arch.startswith(PYTHON) and source is None:
            raise AutopruneError(f"checkpoint '{path}' prunes a model given in Python ({self.model_spec.arch[7:]}): "
                                 f"rebuilding it needs that unpruned model")
        model = copy.deepcopy(source).cpu() if source is not None else build_model(self.model_spec)
        if self.record is not None:
            replay(model, self.record.history, self.example_input)
            setattr(model, RECORD_ATTR, self.record)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as e:
            detail = str(e).strip().splitlines()[0]
            raise AutopruneError(
                f"checkpoint '{path}' does not fit architecture '{self.model_spec.arch}': {detail}"
            ) from None
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        d = {"format": FORMAT, "version": VERSION, "model_spec": self.model_spec.to_dict(),
             "data_spec": self.data_spec.to_dict(), "input_shape": list(self.input_shape),
             "preprocess": self.preprocess, "metrics": self.metrics, "state_dict": self.state_dict}
        if self.record is not None:
            d["prune_record"] = self.record.to_dict()
        return d


def from_model(model: nn.Module, model_spec: ModelSpec, data_spec: DataSpec, input_shape: tuple[int, ...],
               preprocess: dict[str, list[float]], metrics: dict[str, Any] | None = None) -> Checkpoint:
    """Snapshot ``model`` (pruned or not) as a checkpoint."""
    state = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}
    return Checkpoint(model_spec, data_spec, tuple(input_shape), preprocess, state, dict(metrics or {}),
                      getattr(model, RECORD_ATTR, None))


def save(checkpoint: Checkpoint, path: str | Path) -> None:
    """Write atomically: a crash never leaves a half-written checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint.to_dict(), f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint safely (``weights_only=True``); a missing, corrupt or foreign file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise AutopruneError(f"checkpoint '{path}' does not exist")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AutopruneError(f"checkpoint '{path}' is corrupt or truncated: {detail}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise AutopruneError(f"'{path}' is not an autoprune checkpoint (train one with 'autoprune train-base')")
    if d.get("version") != VERSION:
        raise AutopruneError(f"checkpoint '{path}' has version {d.get('version')!r}, this autoprune reads {VERSION}")
    record = None
    if "prune_record" in d:
        record = PruneRecord.from_dict(d["prune_record"])
    return Checkpoint(ModelSpec.from_dict(d["model_spec"]), DataSpec.from_dict(d["data_spec"]),
                      tuple(d["input_shape"]), d["preprocess"], d["state_dict"], d.get("metrics", {}), record)
