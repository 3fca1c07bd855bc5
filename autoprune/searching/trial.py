"""One candidate, end to end: prune the base model to a policy, fine-tune it, measure it against the base."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from autoprune import devices
from autoprune.measure.latency import Meter, ReferenceStore, local_meter
from autoprune.measure.metrics import count_macs, count_params, serialized_size, torch_threads
from autoprune.measure.spec import LatencySpec
from autoprune.pruning import prune
from autoprune.pruning.policy import Policy, discover
from autoprune.pruning.reconstruct import reconstruct
from autoprune.pruning.structural import RECORD_ATTR
from autoprune.tasks.base import Batch, Task
from autoprune.tasks.training import recalibrate_bn

RECONSTRUCT_BATCHES = 4  # calibration batches (64 images each for classification): 2 to 8 measured the same accuracy


@dataclass(frozen=True)
class TrialSettings:
    """How a candidate is pruned, fine-tuned and measured; what it is fine-tuned and evaluated on is the task's."""

    finetune_epochs: float = 1.0
    kd: bool = False               # fine-tune distilling from the unpruned base (the task's teacher)
    steps: int = 1                 # >1: iterative pruning, a short fine-tune between steps
    step_epochs: float = 0.1       # the fine-tune between iterative steps
    calib_batches: int = 8         # calibration batches for data-driven criteria
    bn_batches: int = 40           # calibration batches for adaptive BN recalibration before fine-tuning
    latency_batch_size: int = 32
    latency_repeats: int = 50
    latency_reference_repeats: int = 100
    reconstruct: bool = False      # least-squares reconstruction of the pruned consumers before BN recalibration
    gate: str | None = None        # the search's measurement gate (autoprune/measure/gate.py): steps pause while it times
    threads: int = 1
    device: str = "auto"           # where the candidate trains: auto is decided where it runs (autoprune.devices)
    latency_device: str = "cpu"    # where it is timed (the search's latency actor, or finalize's meter)
    latency_runtime: str = "torch"  # what it is timed in: torch, onnxruntime or int8 (autoprune/measure/runtimes.py)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def latency_spec(self, input_shape: tuple[int, ...]) -> LatencySpec:
        return LatencySpec(tuple(input_shape), self.latency_batch_size, self.threads, self.latency_device,
                           self.latency_repeats, reference_repeats=self.latency_reference_repeats,
                           runtime=self.latency_runtime)


@dataclass
class TrialResult:
    model: nn.Module
    base: dict[str, Any]
    pruned: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        speedup = self.base["latency_ms"] / self.pruned["latency_ms"]
        return {"base": self.base, "pruned": self.pruned, "speedup": speedup,
                "params_ratio": self.pruned["params"] / self.base["params"],
                "macs_ratio": self.pruned["macs"] / self.base["macs"], "seconds": self.seconds}


class Stopwatch:
    """Seconds per named step, added up over the blocks it times (rounded to milliseconds)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = round(self.seconds.get(step, 0.0) + time.perf_counter() - start, 3)


def static_metrics(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    return {"params": count_params(model), "size_bytes": serialized_size(model), "macs": count_macs(model, input_shape)}


@dataclass
class Resume:
    """A trial restored from its last per-epoch checkpoint: the pruned, partly fine-tuned model, what was
    measured, and the fine-tuning progress (step, optimizer and schedule state) to continue from."""

    model: nn.Module
    base: dict[str, Any]
    pruned: dict[str, Any]
    epochs_done: int
    seconds: dict[str, float] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)


EpochCallback = Callable[[int, dict[str, Any], "TrialResult", dict[str, Any]], None]


def run_trial(base_model: nn.Module, task: Task, policy: Policy, settings: TrialSettings,
              on_epoch: EpochCallback | None = None, resume: Resume | None = None,
              meter: Meter | None = None, base_scores: dict[str, float] | None = None) -> TrialResult:
    """Prune → measure → adaptive BN → fine-tune (when the task trains) → evaluate.

    Size, MACs and latency do not change with fine-tuning, so they are measured right after pruning, latency
    by ``meter`` (the search's shared latency actor; an in-process one when None). ``on_epoch(epoch, metrics,
    state, progress)`` then gets the validation metric of every fine-tuning epoch together with those
    measurements, the state and the training progress to checkpoint. With ``resume``, pruning and measuring
    are skipped and fine-tuning continues where it stopped, on the same learning-rate schedule. ``base_scores``:
    the base's ``val_<metric>`` and ``test_<metric>`` when the caller knows them (a search evaluates its base once,
    ``base_scores``), else evaluated here.
    """
    device = torch.device(devices.resolve(settings.device))
    watch = Stopwatch()
    name = task.metric.name
    if resume is not None:
        watch.seconds.update(resume.seconds)
    with torch_threads(settings.threads):
        base_model = base_model.to(device).eval()
        if resume is None:
            pruned, base, after = _prune_and_measure(base_model, task, policy, settings, watch, device, meter)
            progress: dict[str, Any] = {}
        else:
            pruned, base, after = resume.model.to(device), dict(resume.base), dict(resume.pruned)
            progress = dict(resume.progress)
        state = TrialResult(pruned, base, after, watch.seconds)
        if task.trains and settings.finetune_epochs > 0:
            with watch("finetune"):
                def report(epoch: int, logs: dict[str, float]) -> None:
                    if on_epoch is not None:
                        on_epoch(epoch, {**after, **logs, f"val_{name}": task.evaluate(pruned, "val")}, state,
                                 progress)

                task.finetune(pruned, settings.finetune_epochs, teacher=base_model if settings.kd else None,
                              on_epoch=report, progress=progress)
        with watch("evaluate"):
            base.update(base_scores if base_scores is not None else scores(base_model, task))
            after.update(scores(pruned, task))
    return TrialResult(pruned.eval(), base, after, watch.seconds)


def scores(model: nn.Module, task: Task) -> dict[str, float]:
    """``model``'s metric on the validation and test splits: ``{val_<metric>, test_<metric>}``."""
    name = task.metric.name
    return {f"val_{name}": task.evaluate(model, "val"), f"test_{name}": task.evaluate(model, "test")}


def _prune_and_measure(base_model: nn.Module, task: Task, policy: Policy, settings: TrialSettings,
                       watch: Stopwatch, device: torch.device,
                       meter: Meter | None) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    def short_finetune(model: nn.Module, step: int) -> None:
        if task.trains:
            task.finetune(model, settings.step_epochs)

    example = task.example_input().to(device)
    input_shape = tuple(example.shape[1:])
    with watch("prune"):
        calib = task.calibration(max(settings.calib_batches, RECONSTRUCT_BATCHES), seed=settings.seed)
        pruned = prune(base_model, policy, example, calib, steps=settings.steps, between_steps=short_finetune,
                       calib_batches=settings.calib_batches, seed=settings.seed, loss=task.loss)
    with watch("measure"):
        record = getattr(pruned, RECORD_ATTR)
        if meter is None:
            meter = local_meter(base_model, example, discover(base_model, example, policy.ignore),
                                settings.latency_spec(input_shape), store=ReferenceStore.default())
        base = {**static_metrics(base_model, input_shape), **meter.reference().metrics()}
        after = {**static_metrics(pruned, input_shape), **meter.measure(pruned, record.channels_after()).metrics(),
                 "channels": record.channels_after(), "criterion_used": record.criterion_summary()}
    if settings.reconstruct:  # before BN recalibration: measured better in that order
        with watch("reconstruct"):
            reconstruct(base_model, pruned, [_to(b, device) for b in calib[:RECONSTRUCT_BATCHES]])
    with watch("recalibrate"):
        batches = task.calibration(settings.bn_batches, seed=settings.seed + 1)
        if batches:  # without calibration data the pruned model keeps the base's batch-norm statistics
            recalibrate_bn(pruned, [_to(b, device) for b in batches], settings.bn_batches, device)
        after[f"proxy_{task.metric.name}"] = task.evaluate(pruned, "proxy")
    return pruned, base, after


def _to(batch: Batch, device: torch.device) -> Batch:
    inputs, targets = batch
    return (inputs.to(device) if isinstance(inputs, torch.Tensor) else inputs,
            targets.to(device) if isinstance(targets, torch.Tensor) else targets)
