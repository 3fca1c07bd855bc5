"""One resident stage-0 evaluator: the base model, its channel rankings and the calibration batches, held for every
candidate it scores.

Stage 0 is prune, (optionally) least-squares reconstruction, batch-norm recalibration on training batches (adaptive
BN, EagleEye), and the task's metric on its ``proxy`` split. What does not depend on the candidate is computed once,
when the evaluator starts: the calibration and recalibration batches, each criterion's ranking of every group (a
magnitude, activation or gradient ranking of the unpruned model does not change with the ratio, so a candidate is a
slicing of precomputed orders: ``autoprune.pruning.structural.Rankings``), the base's proxy metric and its size, params
and MACs. Latency is not timed here: the search's latency model predicts it (``autoprune.measure.predictor``).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autoprune.measure.metrics import count_macs, count_params, serialized_size
from autoprune.pruning import prune
from autoprune.pruning.reconstruct import reconstruct
from autoprune.pruning.structural import RECORD_ATTR, Rankings, rank_groups
from autoprune.searching.space import SearchSpace
from autoprune.searching.trial import RECONSTRUCT_BATCHES, Stopwatch
from autoprune.tasks.base import Batch, Task
from autoprune.tasks.training import recalibrate_bn


@dataclass(frozen=True)
class Stage0Settings:
    """How stage 0 scores a candidate: ``calib_batches`` for data-driven criteria, ``bn_batches`` training batches to
    recalibrate batch norm on, least-squares ``reconstruct``ion first, ``threads`` per evaluator, ``seed``."""

    calib_batches: int = 8
    bn_batches: int = 10
    reconstruct: bool = False
    threads: int = 1
    seed: int = 0


@dataclass
class Scored:
    """One candidate's stage-0 outcome: ``metrics`` (``proxy_<metric>``, params, size_bytes, macs, channels,
    criterion_used) or the ``error`` that stopped it, and where the seconds went."""

    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    host: str = ""


class Stage0Evaluator:
    """Scores candidates (points of ``space``) at stage 0; built once per evaluator process (see module).

    Args:
        base: the unpruned model (a copy is kept, on the CPU).
        task: the task whose ``calibration`` and ``evaluate(model, "proxy")`` stage 0 uses.
        space: the search space the points belong to.
        settings: how candidates are scored.
    """

    def __init__(self, base: nn.Module, task: Task, space: SearchSpace, settings: Stage0Settings) -> None:
        torch.set_num_threads(settings.threads)
        self.task, self.space, self.settings = task, space, settings
        self.base = base.cpu().eval()
        self.metric = task.metric.name
        self.example = task.example_input()
        self.input_shape = tuple(self.example.shape[1:])
        self.calib = task.calibration(max(settings.calib_batches, RECONSTRUCT_BATCHES), seed=settings.seed)
        self.bn = task.calibration(settings.bn_batches, seed=settings.seed + 1)
        self._rankings: dict[str, Rankings] = {}
        self.host = socket.gethostname()
        self.base_metrics = {f"proxy_{self.metric}": task.evaluate(self.base, "proxy"), **self._static(self.base)}

    def rankings(self, criterion: str) -> Rankings:
        """Every group's channel ranking by ``criterion`` on the base, computed the first time it is asked for."""
        if criterion not in self._rankings:
            self._rankings[criterion] = rank_groups(self.base, criterion, self.example, self.calib,
                                                    ignore=list(self.space.ignore),
                                                    calib_batches=self.settings.calib_batches, seed=self.settings.seed,
                                                    loss=self.task.loss if self.task.has_loss else None)
        return self._rankings[criterion]

    def _static(self, model: nn.Module) -> dict[str, Any]:
        return {"params": count_params(model), "size_bytes": serialized_size(model),
                "macs": count_macs(model, self.input_shape)}

    def score(self, point: dict[str, Any]) -> Scored:
        """One candidate's stage-0 outcome; an error (a policy the model cannot take) is returned, not raised."""
        watch = Stopwatch()
        try:
            with watch("prune"):
                policy = self.space.policy(point)
                pruned = prune(self.base, policy, self.example, rankings=self.rankings(policy.criterion))
            record = getattr(pruned, RECORD_ATTR)
            metrics: dict[str, Any] = {**self._static(pruned), "channels": record.channels_after(),
                                       "criterion_used": record.criterion_summary()}
            if self.settings.reconstruct:
                with watch("reconstruct"):
                    reconstruct(self.base, pruned, self.calib[:RECONSTRUCT_BATCHES])
            with watch("recalibrate"):
                if self.bn:  # without calibration data the pruned model keeps the base's batch-norm statistics
                    recalibrate_bn(pruned, _cpu(self.bn), len(self.bn))
            with watch("evaluate"):
                metrics[f"proxy_{self.metric}"] = self.task.evaluate(pruned, "proxy")
        except Exception as e:  # noqa: BLE001  (a failed candidate is an outcome: the search goes on)
            message = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return Scored(error=f"{type(e).__name__}: {message}"[:500], seconds=watch.seconds, host=self.host)
        return Scored(metrics, None, watch.seconds, self.host)

    def score_many(self, points: list[dict[str, Any]]) -> list[Scored]:
        """``score`` for each point, in order."""
        return [self.score(p) for p in points]

    def base_outcome(self) -> dict[str, Any]:
        """The unpruned base's proxy metric, size, params and MACs (computed once)."""
        return dict(self.base_metrics)


def _cpu(batches: list[Batch]) -> list[Batch]:
    return [(x.cpu() if isinstance(x, torch.Tensor) else x, y) for x, y in batches]
