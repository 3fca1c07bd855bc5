"""One candidate, end to end: prune the base model to a policy, fine-tune it, measure it against the base."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any, Callable, Iterator

import torch
from torch import nn

from autoprune.data import ImageData
from autoprune.measure.latency import LatencySpec, Meter, local_meter
from autoprune.measure.metrics import count_macs, count_params, serialized_size, torch_threads
from autoprune.pruning import prune
from autoprune.pruning.policy import Policy, discover
from autoprune.pruning.reconstruct import reconstruct
from autoprune.pruning.structural import RECORD_ATTR
from autoprune.tasks.training import TrainConfig, evaluate, recalibrate_bn, train

RECONSTRUCT_BATCHES = 4  # batches of 64 calibration images: 2 to 8 measured the same accuracy


@dataclass(frozen=True)
class TrialSettings:
    """How a candidate is pruned, fine-tuned and measured."""

    finetune_epochs: float = 1.0
    lr: float = 0.02
    kd: bool = False
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    steps: int = 1                 # >1: iterative pruning, a short fine-tune between steps
    step_batches: int = 20         # batches of fine-tuning between iterative steps
    calib_batches: int = 8         # batches for data-driven criteria
    bn_batches: int = 20           # batches for adaptive BN recalibration
    batch_size: int = 128
    latency_batch_size: int = 32
    latency_repeats: int = 50
    latency_reference_repeats: int = 100
    proxy_samples: int = 1000      # the fixed validation subset stage-0 (proxy) accuracy is measured on
    reconstruct: bool = False      # least-squares reconstruction of the pruned consumers before BN recalibration
    gate: str | None = None        # the search's measurement gate (autoprune/measure/gate.py): steps pause while it times
    threads: int = 1
    device: str = "cpu"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def latency_spec(self, input_shape: tuple[int, ...]) -> LatencySpec:
        return LatencySpec(tuple(input_shape), self.latency_batch_size, self.threads, self.device,
                           self.latency_repeats, reference_repeats=self.latency_reference_repeats)


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


class _Stopwatch:
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


def run_trial(base_model: nn.Module, data: ImageData, policy: Policy, settings: TrialSettings,
              on_epoch: EpochCallback | None = None, resume: Resume | None = None,
              meter: Meter | None = None) -> TrialResult:
    """Prune → measure → adaptive BN → fine-tune → evaluate.

    Size, MACs and latency do not change with fine-tuning, so they are measured right after pruning, latency
    by ``meter`` (the search's shared latency actor; an in-process one when None). ``on_epoch(epoch, metrics,
    state, progress)`` then gets the validation accuracy of every fine-tuning epoch together with those
    measurements, the state and the training progress to checkpoint. With ``resume``, pruning and measuring
    are skipped and fine-tuning continues where it stopped, on the same learning-rate schedule.
    """
    device = torch.device(settings.device)
    watch = _Stopwatch()
    if resume is not None:
        watch.seconds.update(resume.seconds)
    with torch_threads(settings.threads):
        base_model = base_model.to(device).eval()
        train_loader = data.loader("train", settings.batch_size, shuffle=True, augment=True,
                                   seed=settings.seed + (resume.epochs_done if resume else 0), device=device)
        val_loader = data.loader("val", 256, device=device)
        test_loader = data.loader("test", 256, device=device)
        if resume is None:
            pruned, base, after = _prune_and_measure(base_model, data, policy, settings, train_loader, watch, device,
                                                     meter)
            progress = {}
        else:
            pruned, base, after = resume.model.to(device), dict(resume.base), dict(resume.pruned)
            progress = dict(resume.progress)
        state = TrialResult(pruned, base, after, watch.seconds)
        with watch("finetune"):
            config = TrainConfig(epochs=settings.finetune_epochs, lr=settings.lr, seed=settings.seed,
                                 kd_alpha=settings.kd_alpha if settings.kd else 0.0,
                                 kd_temperature=settings.kd_temperature)

            def report(epoch: int, loss: float) -> None:
                if on_epoch is not None:
                    on_epoch(epoch, {**after, "val_accuracy": evaluate(pruned, val_loader, device), "loss": loss},
                             state, progress)
                    pruned.train()

            if settings.finetune_epochs > 0:
                train(pruned, train_loader, config, teacher=base_model if settings.kd else None,
                      device=device, on_epoch=report, progress=progress)
        with watch("evaluate"):
            base.update(val_accuracy=evaluate(base_model, val_loader, device),
                        test_accuracy=evaluate(base_model, test_loader, device))
            after.update(val_accuracy=evaluate(pruned, val_loader, device),
                         test_accuracy=evaluate(pruned, test_loader, device))
    return TrialResult(pruned.eval(), base, after, watch.seconds)


def _prune_and_measure(base_model: nn.Module, data: ImageData, policy: Policy, settings: TrialSettings,
                       train_loader: Any, watch: _Stopwatch, device: torch.device,
                       meter: Meter | None) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    def short_finetune(model: nn.Module, step: int) -> None:
        epochs = settings.step_batches / len(train_loader)
        train(model, train_loader, TrainConfig(epochs=epochs, lr=settings.lr, seed=settings.seed + step), device=device)

    example = torch.zeros(1, *data.input_shape, device=device)
    with watch("prune"):
        calib = data.loader("train", 64, shuffle=True, seed=settings.seed, device=device)
        pruned = prune(base_model, policy, example, calib, steps=settings.steps, between_steps=short_finetune,
                       calib_batches=settings.calib_batches, seed=settings.seed)
    with watch("measure"):
        record = getattr(pruned, RECORD_ATTR)
        if meter is None:
            meter = local_meter(base_model, example, discover(base_model, example, policy.ignore),
                                settings.latency_spec(data.input_shape))
        base = {**static_metrics(base_model, data.input_shape), **meter.reference().metrics()}
        after = {**static_metrics(pruned, data.input_shape), **meter.measure(pruned, record.channels_after()).metrics(),
                 "channels": record.channels_after(), "criterion_used": record.criterion_summary()}
    if settings.reconstruct:  # before BN recalibration: measured better in that order
        with watch("reconstruct"):
            calib = data.loader("train", 64, shuffle=True, seed=settings.seed, device=device)
            reconstruct(base_model, pruned, list(islice(calib, RECONSTRUCT_BATCHES)))
    with watch("recalibrate"):
        recalibrate_bn(pruned, train_loader, settings.bn_batches, device)
        after["proxy_accuracy"] = evaluate(pruned, data.loader("val", 256, device=device,
                                                               limit=settings.proxy_samples), device)
    return pruned, base, after


def run_proxy(base_model: nn.Module, data: ImageData, policy: Policy, settings: TrialSettings,
              meter: Meter | None = None) -> TrialResult:
    """Stage 0, seconds per candidate: prune, measure, recalibrate batch norm, evaluate on the fixed proxy subset
    of the validation split (``settings.proxy_samples``). ``pruned["val_accuracy"]`` is that proxy accuracy."""
    device = torch.device(settings.device)
    watch = _Stopwatch()
    with torch_threads(settings.threads):
        base_model = base_model.to(device).eval()
        train_loader = data.loader("train", settings.batch_size, shuffle=True, augment=True, seed=settings.seed,
                                   device=device)
        pruned, base, after = _prune_and_measure(base_model, data, policy, settings, train_loader, watch, device,
                                                 meter)
        base["val_accuracy"] = base["proxy_accuracy"] = evaluate(
            base_model, data.loader("val", 256, device=device, limit=settings.proxy_samples), device)
    after["val_accuracy"] = after["proxy_accuracy"]
    return TrialResult(pruned.eval(), base, after, watch.seconds)
