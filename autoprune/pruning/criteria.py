"""Channel-importance criteria: each ranks the channels of one coupled group (higher = keep).

A criterion is small: ``prepare`` gathers what it needs from calibration batches (weight-only
criteria need nothing), ``scores`` returns one score per channel of a torch-pruning group, or
raises ``Unscorable`` saying why it has nothing to rank that group by (``prune`` then ranks the
group by L1 and records it). Adding a criterion is one class and one line in ``REGISTRY``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.tasks.training import classification_loss

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]  # (model, batch) -> one loss per sample, shape (N,)
_reducer = tp.importance.GroupMagnitudeImportance(group_reduction="mean", normalizer=None)
_GRAD_READ = (nn.modules.conv._ConvNd, nn.Linear, nn.LayerNorm)


class Unscorable(AutopruneError):
    """A criterion has nothing to rank a group's channels by; the message says why."""


class Criterion(ABC):
    """Ranks the channels of a group. Data-driven criteria set ``needs_data``."""

    name: ClassVar[str]
    needs_data: ClassVar[bool] = False

    @abstractmethod
    def prepare(self, model: nn.Module, batches: Sequence[Batch]) -> None:
        """Collect statistics on ``model`` (its current, possibly partly pruned, shape)."""

    @abstractmethod
    def scores(self, group: tp.Group) -> torch.Tensor:
        """A 1-D float tensor with one finite score per channel of ``group``'s root layer.

        Raises ``Unscorable`` when the criterion has nothing to rank this group by.
        """


class _TorchPruningCriterion(Criterion):
    """Delegates scoring to a torch-pruning importance; ``unscorable`` says why it may have nothing to score."""

    unscorable: ClassVar[str] = "no weights in group"

    def __init__(self) -> None:
        self._importance = self._make()

    @abstractmethod
    def _make(self) -> tp.importance.Importance: ...

    def prepare(self, model: nn.Module, batches: Sequence[Batch]) -> None:
        pass

    def scores(self, group: tp.Group) -> torch.Tensor:
        s = self._importance(group)
        if s is None:  # no layer of the kind the importance reads, e.g. bn_scale on a group without batch norm
            raise Unscorable(self.unscorable)
        return torch.nan_to_num(s.float(), nan=0.0)


class L1(_TorchPruningCriterion):
    """Sum of |w| over every weight the channel owns in its group (Li et al. 2017)."""

    name = "l1"

    def _make(self) -> tp.importance.Importance:
        return tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)


class L2(_TorchPruningCriterion):
    """Sum of w^2 over every weight the channel owns in its group."""

    name = "l2"

    def _make(self) -> tp.importance.Importance:
        return tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)


class BNScale(_TorchPruningCriterion):
    """|gamma| of the batch norms in the group (network slimming, Liu et al. 2017)."""

    name = "bn_scale"
    unscorable = "no batch norm in group"

    def _make(self) -> tp.importance.Importance:
        return tp.importance.BNScaleImportance(normalizer=None)


LOSS_CRITERIA = ("taylor", "hessian")  # criteria that rank by gradients of a loss (the task's: ``Task.loss``)


class _LossCriterion(_TorchPruningCriterion):
    """Ranks by gradients of ``loss`` on the calibration batches (default: ``classification_loss``)."""

    needs_data = True
    unscorable = "no gradients in group"

    def __init__(self, loss: LossFn | None = None) -> None:
        super().__init__()
        self.loss = loss or classification_loss

    def _losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        losses = self.loss(model, batch)
        if not isinstance(losses, torch.Tensor) or losses.ndim != 1:
            raise AutopruneError(f"criterion '{self.name}': the loss must return one value per sample (a 1-D tensor), "
                                 f"got {tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses)}")
        return losses


class Taylor(_LossCriterion):
    """|w * dL/dw| summed per channel, gradients accumulated over the calibration batches (Molchanov et al. 2019)."""

    name = "taylor"

    def _make(self) -> tp.importance.Importance:
        return tp.importance.GroupTaylorImportance(normalizer=None)

    def scores(self, group: tp.Group) -> torch.Tensor:
        for item in group:  # torch-pruning reads the .grad of every conv, linear and layer norm it scores
            layer = item.dep.target.module
            if isinstance(layer, _GRAD_READ) and layer.weight is not None and layer.weight.grad is None:
                raise Unscorable(f"no gradient reached the group's {type(layer).__name__}")
        return super().scores(group)

    def prepare(self, model: nn.Module, batches: Sequence[Batch]) -> None:
        model.eval()
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for batch in batches:
                self._losses(model, batch).mean().backward()


class Hessian(_LossCriterion):
    """OBD saliency w^2 * H_ii, H_ii estimated by the empirical Fisher (the mean squared per-sample gradient)."""

    name = "hessian"

    def __init__(self, loss: LossFn | None = None, max_samples: int = 32) -> None:
        super().__init__(loss)
        self.max_samples = max_samples

    def _make(self) -> tp.importance.Importance:
        return tp.importance.GroupHessianImportance(normalizer=None)

    def prepare(self, model: nn.Module, batches: Sequence[Batch]) -> None:
        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        fisher = [torch.zeros_like(p) for p in params]
        count = 0
        with torch.enable_grad():
            for batch in batches:
                losses = self._losses(model, batch)
                for i in range(min(len(losses), self.max_samples - count)):
                    grads = torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)
                    for f, g in zip(fisher, grads):
                        if g is not None:
                            f.add_(g.detach() ** 2)
                    count += 1
                if count >= self.max_samples:
                    break
        for p, f in zip(params, fisher):  # torch-pruning reads H_ii from .grad
            p.grad = f / max(count, 1)


class _ActivationCriterion(Criterion):
    """Scores channels by statistics of the activations that flow through them.

    A group's channels are read where they are consumed: the inputs of the Conv/Linear layers
    the group feeds (post-nonlinearity, so ReLU zeros are visible), and the input of a depthwise
    convolution that the group owns.
    """

    needs_data = True

    def __init__(self) -> None:
        self._stats: dict[nn.Module, torch.Tensor] = {}

    @abstractmethod
    def _channel_stat(self, pooled: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
        """From per-sample channel means ``pooled`` and zero fractions ``zeros`` (both N x C), one score per channel."""

    def prepare(self, model: nn.Module, batches: Sequence[Batch]) -> None:
        pooled: dict[nn.Module, list[torch.Tensor]] = {}
        zeros: dict[nn.Module, list[torch.Tensor]] = {}

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0].detach().float()
            if isinstance(module, nn.modules.conv._ConvNd):
                x = x.flatten(2)
            else:
                x = x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2)
            pooled.setdefault(module, []).append(x.abs().mean(2))
            zeros.setdefault(module, []).append((x == 0).float().mean(2))

        hooks = [m.register_forward_hook(hook) for m in model.modules()
                 if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
        model.eval()
        try:
            with torch.no_grad():
                for x, _ in batches:
                    model(x)
        finally:
            for h in hooks:
                h.remove()
        self._stats = {m: self._channel_stat(torch.cat(pooled[m]), torch.cat(zeros[m])) for m in pooled}

    def scores(self, group: tp.Group) -> torch.Tensor:
        imps, root_idxs = [], []
        for item in group:
            dep, idxs = item.dep, item.idxs
            layer, fn = dep.target.module, dep.handler
            reads_input = fn in (tp.prune_conv_in_channels, tp.prune_linear_in_channels,
                                 tp.prune_depthwise_conv_out_channels)
            if reads_input and layer in self._stats:
                imps.append(self._stats[layer][idxs])
                root_idxs.append(item.root_idxs)
        if not imps:
            raise Unscorable("no activation statistics: no Conv/Linear layer reads the group's channels")
        return torch.nan_to_num(_reducer._reduce(imps, root_idxs), nan=0.0)


class ActivationMean(_ActivationCriterion):
    """Mean absolute activation of the channel."""

    name = "activation_mean"

    def _channel_stat(self, pooled: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
        return pooled.mean(0)


class APoZ(_ActivationCriterion):
    """1 - average percentage of zeros (Hu et al. 2016): channels that are mostly zero are pruned first."""

    name = "apoz"

    def _channel_stat(self, pooled: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
        return 1.0 - zeros.mean(0)

    def scores(self, group: tp.Group) -> torch.Tensor:
        s = super().scores(group)
        if bool((s == 1.0).all()):  # nothing to tell channels apart: ranking them would go by index
            raise Unscorable("no zero activations where the group is consumed (no ReLU before its consumers)")
        return s


class Entropy(_ActivationCriterion):
    """Entropy of the channel's pooled activation across samples (Luo & Wu 2017): low entropy carries little."""

    name = "entropy"
    bins = 32

    def _channel_stat(self, pooled: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
        lo, hi = pooled.min(0).values, pooled.max(0).values
        width = (hi - lo).clamp_min(1e-12)
        bin_idx = ((pooled - lo) / width * self.bins).long().clamp(0, self.bins - 1)
        counts = torch.zeros(self.bins, pooled.shape[1], device=pooled.device)
        counts.scatter_add_(0, bin_idx, torch.ones_like(pooled))
        p = counts / pooled.shape[0]
        return -(p * torch.log(p.clamp_min(1e-12))).sum(0)


class Random(Criterion):
    """Seeded random scores: the sanity baseline every other criterion should beat."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._generator = torch.Generator().manual_seed(seed)

    def prepare(self, model: nn.Module, batches: Sequence[Batch]) -> None:
        pass

    def scores(self, group: tp.Group) -> torch.Tensor:
        return torch.rand(len(group[0].idxs), generator=self._generator)


REGISTRY: dict[str, type[Criterion]] = {
    c.name: c for c in (L1, L2, Taylor, Hessian, BNScale, ActivationMean, APoZ, Entropy, Random)
}


def make_criterion(name: str, seed: int = 0, loss: LossFn | None = None) -> Criterion:
    """Instantiate the criterion called ``name`` (``seed`` drives ``random``, ``loss`` the gradient criteria:
    per-sample losses of (model, batch), default ``classification_loss``)."""
    if name not in REGISTRY:
        raise AutopruneError(f"unknown criterion '{name}': use one of {', '.join(REGISTRY)}")
    if name == "random":
        return Random(seed)
    if name in LOSS_CRITERIA:
        return REGISTRY[name](loss)  # type: ignore[call-arg]
    return REGISTRY[name]()
