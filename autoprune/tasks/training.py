"""Training, fine-tuning with optional knowledge distillation, evaluation, and BN recalibration."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.measure import gate

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class TrainingDiverged(AutopruneError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    """SGD with momentum and a cosine schedule; ``kd_alpha`` > 0 distils from a teacher.

    ``sparsity_l1`` > 0 is network slimming's sparsity training (Liu et al. 2017): an L1 penalty of that
    weight on every batch norm's scale, applied as the paper's code does, by adding its subgradient
    ``sparsity_l1 * sign(gamma)`` to the scales' gradients after each backward pass (the reported loss
    leaves the penalty out).
    """

    epochs: float = 1.0  # fractional epochs allowed: 0.5 trains on half the batches
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    kd_alpha: float = 0.0
    kd_temperature: float = 4.0
    seed: int = 0
    sparsity_l1: float = 0.0
    precision: str = "auto"  # autocast_dtype


def autocast_dtype(device_type: str, precision: str, bf16_supported: bool) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device_type`` (None: fp32, no autocast). ``auto``: bf16 on a GPU that
    supports it, else fp16 (trained with a gradient scaler); fp32 on CPUs, where autocast is rarely faster."""
    if precision == "auto":
        if device_type != "cuda":
            return None
        return torch.bfloat16 if bf16_supported else torch.float16
    if precision not in _DTYPES:
        raise AutopruneError(f"precision must be one of auto, {', '.join(_DTYPES)}, got '{precision}'")
    return _DTYPES[precision]


_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _channels_last_helps(model: nn.Module, device: torch.device) -> bool:
    """NHWC convolutions are faster on NVIDIA tensor cores; on CPUs the layout conversions cost more than they save."""
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def classification_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per-sample cross-entropy of ``model(inputs)`` against integer labels (the gradient criteria's default)."""
    inputs, labels = batch
    return F.cross_entropy(model(inputs), labels, reduction="none")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                      alpha: float, temperature: float) -> torch.Tensor:
    """(1 - alpha) * CE(student, targets) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))."""
    ce = F.cross_entropy(student, targets)
    if alpha <= 0:
        return ce
    kl = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                  reduction="batchmean", log_target=True)
    return (1.0 - alpha) * ce + alpha * temperature ** 2 * kl


def train(model: nn.Module, loader: Batches, config: TrainConfig, *, teacher: nn.Module | None = None,
          device: str | torch.device = "cpu", on_epoch: Callable[[int, float], None] | None = None,
          progress: dict[str, Any] | None = None) -> list[float]:
    """Train ``model`` in place; return the mean loss of each epoch.

    Mixed precision by ``config.precision`` (``autocast_dtype``; fp16 with a ``GradScaler``), convolutions in
    channels-last layout on CUDA (the model is handed back contiguous). ``on_epoch(epoch, mean_loss)`` is called
    after each epoch, e.g. to report validation accuracy. Raises ``TrainingDiverged`` on a non-finite loss.

    ``progress`` makes the run resumable: before each ``on_epoch`` it is filled with the step, epoch,
    optimizer and schedule state (checkpoint it); passed back filled, training continues from there, with
    the same schedule, as if it had never stopped.
    """
    if config.sparsity_l1 < 0:
        raise AutopruneError(f"sparsity_l1 must be >= 0, got {config.sparsity_l1}")
    device = torch.device(device)
    torch.manual_seed(config.seed)
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    batches_per_epoch = len(loader)  # type: ignore[arg-type]
    total_steps = max(1, math.ceil(config.epochs * batches_per_epoch))
    updater = _Updater(model, config, total_steps, device)
    losses: list[float] = []
    step, epoch = 0, 0
    if progress:
        updater.load_state_dict(progress)
        step, epoch = int(progress["step"]), int(progress["epoch"])
    with _layout(device, model, teacher) as layout:
        while step < total_steps:
            running, seen = 0.0, 0
            for x, y in islice(loader, total_steps - step):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if x.dim() == 4:
                    x = x.contiguous(memory_format=layout)
                with gate.step():  # paused while the latency meter times a model on this node
                    with torch.autocast(device.type, dtype=updater.dtype or torch.float32,
                                        enabled=updater.dtype is not None):
                        logits = model(x)
                        if teacher is not None and config.kd_alpha > 0:
                            with torch.no_grad():
                                soft = teacher(x)
                            loss = distillation_loss(logits.float(), soft.float(), y, config.kd_alpha,
                                                     config.kd_temperature)
                        else:
                            loss = F.cross_entropy(logits.float(), y)
                    if not torch.isfinite(loss):
                        raise TrainingDiverged(f"training diverged: loss is {loss.item()} at step {step + 1} "
                                               f"(lower the lr)")
                    updater.step(loss)
                    running += loss.item() * len(y)  # waits for the step's GPU work: the gate covers all of it
                seen += len(y)
                step += 1
            epoch += 1
            losses.append(running / max(seen, 1))
            if progress is not None:
                progress.update(step=step, epoch=epoch, **updater.state_dict())
            if on_epoch is not None:
                on_epoch(epoch, losses[-1])
    return losses


class _Updater:
    """One optimisation step: SGD with a cosine schedule, the fp16 gradient scaler when autocast is fp16, and
    network slimming's L1 subgradient on batch-norm scales."""

    def __init__(self, model: nn.Module, config: TrainConfig, total_steps: int, device: torch.device) -> None:
        self.optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay, nesterov=True)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, total_steps)
        self.dtype = autocast_dtype(device.type, config.precision,
                                    device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False))
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        self.l1 = config.sparsity_l1
        self.scales = [m.weight for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                       and m.weight is not None] if self.l1 > 0 else []

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # the L1 subgradient is added to true gradients
        else:
            loss.backward()
        for gamma in self.scales:
            if gamma.grad is not None:
                gamma.grad.add_(torch.sign(gamma.detach()), alpha=self.l1)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.schedule.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


@contextmanager
def _layout(device: torch.device, *models: nn.Module | None) -> Iterator[torch.memory_format]:
    """Channels-last weights while training where it helps (``_channels_last_helps``); contiguous again after."""
    present = [m for m in models if m is not None]
    layout = torch.channels_last if present and _channels_last_helps(present[0], device) else torch.contiguous_format
    for m in present:
        m.to(memory_format=layout)
    try:
        yield layout
    finally:
        for m in present:
            m.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Batches, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy as a fraction."""
    model.to(device).eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with gate.step():
            correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / max(total, 1)


def small_bn_scales(model: nn.Module, below: float = 1e-2) -> float:
    """The fraction of batch-norm scales |gamma| below ``below``: channels sparsity training has switched off."""
    scales = [m.weight.detach().abs().flatten() for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    if not scales:
        return 0.0
    return float((torch.cat(scales) < below).float().mean())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Batches, batches: int = 20, device: str | torch.device = "cpu") -> None:
    """Adaptive BN: re-estimate every batch norm's running statistics on a few training batches.

    A cheap, training-free way to evaluate a freshly pruned candidate (Li et al., EagleEye 2020).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.to(device).train()
    for x, _ in islice(loader, batches):
        with gate.step():
            model(x.to(device))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()
