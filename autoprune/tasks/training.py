"""Training, fine-tuning with optional knowledge distillation, evaluation, and BN recalibration."""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterable

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

    Mixed precision (bf16 autocast) on CUDA. ``on_epoch(epoch, mean_loss)`` is called after each
    epoch, e.g. to report validation accuracy. Raises ``TrainingDiverged`` on a non-finite loss.

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
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    use_amp = device.type == "cuda"
    scales = [m.weight for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None] if config.sparsity_l1 > 0 else []
    losses: list[float] = []
    step, epoch = 0, 0
    if progress:
        optimizer.load_state_dict(progress["optimizer"])
        schedule.load_state_dict(progress["schedule"])
        step, epoch = int(progress["step"]), int(progress["epoch"])
    while step < total_steps:
        running, seen = 0.0, 0
        for x, y in islice(loader, total_steps - step):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with gate.step():  # paused while the latency meter times a model on this node
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = model(x)
                    if teacher is not None and config.kd_alpha > 0:
                        with torch.no_grad():
                            soft = teacher(x)
                        loss = distillation_loss(logits.float(), soft.float(), y, config.kd_alpha,
                                                 config.kd_temperature)
                    else:
                        loss = F.cross_entropy(logits.float(), y)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"training diverged: loss is {loss.item()} at step {step + 1} (lower the lr)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for gamma in scales:
                    if gamma.grad is not None:
                        gamma.grad.add_(torch.sign(gamma.detach()), alpha=config.sparsity_l1)
                optimizer.step()
                schedule.step()
            running += loss.item() * len(y)
            seen += len(y)
            step += 1
        epoch += 1
        losses.append(running / max(seen, 1))
        if progress is not None:
            progress.update(step=step, epoch=epoch, optimizer=optimizer.state_dict(), schedule=schedule.state_dict())
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    return losses


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
