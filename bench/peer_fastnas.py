"""Peer baseline for the search-value benchmark: NVIDIA ModelOpt FastNAS next to uniform L1, run the autoprune way.

    .venv/bin/python bench/peer_fastnas.py BASE.pt [--targets 0.5 0.33] [--epochs 1] [--seed 0]
        [--divisor 4] [--threads 1] [--no-uniform] [--workdir DIR] [--json OUT.json] [--verbose]

Needs the ``bench`` extra (``pip install -e '.[bench]'``: nvidia-modelopt[torch], requests, huggingface_hub,
torchprofile 0.0.4). ``bench/search_value.py`` imports ``run_fastnas`` and calls it with the base, data and
``TrialSettings`` its autoprune searchers get.

Protocol, for each FLOPs target t (a fraction of the base model's FLOPs):

1. FastNAS. ``mtp.prune`` on a copy of the base with channel / feature divisors of ``divisor`` (4 by default:
   ModelOpt's default of 32 leaves a 16/32/64-channel CIFAR ResNet almost nothing to search) and the constraint
   ``flops <= t``. Its score function is validation accuracy after batch-norm recalibration: ModelOpt re-estimates
   the BN statistics of every sub-net it scores on its queue of 50 cached training batches, sized to hold the
   ``bn_batches * batch_size`` images autoprune's adaptive BN uses, then ``autoprune.tasks.training.evaluate`` runs on
   the validation split. FastNAS
   scores each layer's channel choices alone (its sensitivity map), then binary-searches one sensitivity
   threshold to the FLOPs target. ModelOpt 0.47 never shrinks channels that feed a Linear layer (its Linear
   takes features on the last dimension, a conv's output has them on dimension 1), so a classifier's input
   stage keeps its width: on ResNet-20 it searches 11 channel counts where autoprune has 12 groups (the last
   stage's residual width, 64, stays). Every search starts from scratch (an old ModelOpt checkpoint is deleted), so
   the wall-clock and CPU seconds (this process and its children, ``resource.getrusage``) are its full cost.
   ModelOpt exports the winner in place to a plain ``nn.Module`` (checked: no dynamic module is left).
2. Uniform L1 at equal MACs: ``autoprune.Policy.uniform(groups, r, criterion="l1")`` with the smallest r
   (bisection) whose pruned model has at most FastNAS's MACs; the bisection's seconds are reported the same way.
3. Both models then go through autoprune's trial recipe (as in ``autoprune.searching.trial.run_trial``): adaptive BN on
   ``settings.bn_batches`` training batches, fine-tuning with ``autoprune.tasks.training.train`` (SGD, cosine,
   ``settings.finetune_epochs``, KD from the unpruned base with ``settings.kd_alpha`` / ``kd_temperature``),
   validation and test accuracy with ``autoprune.tasks.training.evaluate``, MACs with
   ``autoprune.measure.metrics.count_macs``, and latency with one ``autoprune.measure.latency.local_meter`` shared
   by every row: the base timed alone is the reference, each candidate is timed interleaved with the base,
   ``speedup = reference / latency_ms``.
   Every row gets fresh loaders with the same seed, so both see the same batches in the same order.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

import autoprune
from autoprune import devices
from autoprune.data import ImageData, load_data
from autoprune.measure.latency import LatencyMeter, local_meter
from autoprune.measure.metrics import count_macs, count_params, serialized_size, torch_threads
from autoprune.pruning import checkpoint as checkpoints
from autoprune.searching.trial import TrialSettings
from autoprune.tasks.classification import CALIBRATION_BATCH, ClassificationTask, Recipe
from autoprune.tasks.training import evaluate, recalibrate_bn

DEFAULT_SETTINGS = TrialSettings(finetune_epochs=1.0, kd=True)
DEFAULT_RECIPE = Recipe()
BISECTION_STEPS = 16  # ratio resolution 0.95 / 2**16: finer than one channel of any group


def fastnas_rules(divisor: int) -> dict[str, dict[str, dict[str, int]]]:
    """FastNAS rules that keep channel and feature counts multiples of ``divisor`` (ModelOpt's default: 32)."""
    return {"nn.Conv2d": {"*": {"channel_divisor": divisor}},
            "nn.BatchNorm2d": {"*": {"feature_divisor": divisor}},
            "nn.Linear": {"*": {"feature_divisor": divisor}}}


def layer_channels(model: nn.Module) -> dict[str, int]:
    """Output channels (features) of every Conv / Linear layer by module name: identifies a pruned structure."""
    return {name: int(m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)
            for name, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def fastnas_search(base: nn.Module, data: ImageData, flops_fraction: float, settings: TrialSettings, *,
                   divisor: int = 4, checkpoint: Path, verbose: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Run FastNAS on a copy of ``base`` to ``flops_fraction`` of its FLOPs; return the plain sub-net and its cost.

    ModelOpt recalibrates batch norm before scoring a sub-net only once its queue of cached training batches is
    full (``MODELOPT_QUEUE_MAXLEN``, 50); with fewer it warns and scores on stale statistics. So the queue gets
    exactly 50 batches, sized to hold the ``bn_batches`` calibration batches autoprune's adaptive BN uses, and a
    "queue not filled" warning is an error here.
    """
    import modelopt.torch.prune as mtp
    from modelopt.torch.nas.autonas import MODELOPT_QUEUE_MAXLEN
    from modelopt.torch.opt.dynamic import DynamicModule

    device = torch.device(devices.resolve(settings.device))
    model = copy.deepcopy(base).to(device).eval()
    calib_batch = min(math.ceil(settings.bn_batches * CALIBRATION_BATCH / MODELOPT_QUEUE_MAXLEN),
                      len(data.train) // MODELOPT_QUEUE_MAXLEN)
    if calib_batch < 1:
        raise ValueError(f"FastNAS needs at least {MODELOPT_QUEUE_MAXLEN} training images for BN recalibration")
    calib_loader = data.loader("train", calib_batch, shuffle=True, seed=settings.seed, device=device)
    val_loader = data.loader("val", 256, device=device)
    checkpoint.unlink(missing_ok=True)
    torch.manual_seed(settings.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wall, cpu = time.perf_counter(), cpu_seconds()
        subnet, state = mtp.prune(
            model, mode=[("fastnas", fastnas_rules(divisor))], constraints={"flops": f"{flops_fraction * 100:g}%"},
            dummy_input=torch.zeros(1, *data.input_shape, device=device),
            config={"data_loader": calib_loader, "max_iter_data_loader": MODELOPT_QUEUE_MAXLEN,
                    "score_func": lambda m: evaluate(m, val_loader, device), "checkpoint": str(checkpoint),
                    "verbose": verbose})
        cost = {"search_seconds": time.perf_counter() - wall, "search_cpu_seconds": cpu_seconds() - cpu}
    if any("queue not filled" in str(w.message) for w in caught):
        raise RuntimeError("ModelOpt scored sub-nets without BN recalibration (its data queue was not filled)")
    dynamic = [name for name, m in subnet.named_modules() if isinstance(m, DynamicModule)]
    if dynamic:
        raise RuntimeError(f"ModelOpt left dynamic modules after export: {dynamic[:3]}")
    cost.update(modelopt_flops=float(state["best"]["constraints"]["flops"]),
                searched_hparams=len(state["sensitivity_map"]), calib_batch_size=calib_batch)
    return subnet.eval(), cost


def uniform_at_macs(base: nn.Module, example: torch.Tensor, max_macs: int,
                    input_shape: tuple[int, ...]) -> tuple[nn.Module, dict[str, Any]]:
    """Uniform L1 pruning with the smallest ratio whose model has at most ``max_macs`` MACs (bisection)."""
    groups = autoprune.discover(base, example)
    wall, cpu = time.perf_counter(), cpu_seconds()
    lo, hi = 0.0, 0.95
    best = autoprune.prune(base, autoprune.Policy.uniform(groups, hi, criterion="l1"), example)
    if count_macs(best, input_shape) > max_macs:
        raise RuntimeError(f"uniform L1 at ratio {hi} still exceeds {max_macs} MACs")
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        pruned = autoprune.prune(base, autoprune.Policy.uniform(groups, mid, criterion="l1"), example)
        if count_macs(pruned, input_shape) <= max_macs:
            hi, best = mid, pruned
        else:
            lo = mid
    return best.eval(), {"search_seconds": time.perf_counter() - wall, "search_cpu_seconds": cpu_seconds() - cpu,
                         "uniform_ratio": hi}


def finetune_and_measure(model: nn.Module, base: nn.Module, task: ClassificationTask, settings: TrialSettings,
                         meter: LatencyMeter) -> dict[str, Any]:
    """autoprune's trial recipe after pruning: measure, adaptive BN, fine-tune (KD from ``base``), evaluate."""
    device = torch.device(devices.resolve(settings.device))
    input_shape = task.data.input_shape
    channels = layer_channels(model)
    latency = meter.measure(model, channels)
    row: dict[str, Any] = {"macs": count_macs(model, input_shape), "params": count_params(model),
                           "size_bytes": serialized_size(model), "latency_ms": latency.latency_ms,
                           "latency_iqr_ms": latency.iqr_ms, "channels": channels,
                           "speedup": meter.reference().latency_ms / latency.latency_ms}
    model.to(device)
    batches = [(x.to(device), y.to(device)) for x, y in task.calibration(settings.bn_batches, seed=settings.seed + 1)]
    recalibrate_bn(model, batches, settings.bn_batches, device)
    row["val_accuracy_after_bn_recalibration"] = task.evaluate(model, "val")
    wall = time.perf_counter()
    if settings.finetune_epochs > 0:
        task.finetune(model, settings.finetune_epochs, teacher=base if settings.kd else None)
    row["finetune_seconds"] = time.perf_counter() - wall
    row["val_accuracy"] = task.evaluate(model, "val")
    row["test_accuracy"] = task.evaluate(model, "test")
    return row


def run_fastnas(base: str | Path | checkpoints.Checkpoint, targets: Sequence[float] = (0.5, 0.33), *,
                data: ImageData | None = None, settings: TrialSettings = DEFAULT_SETTINGS,
                recipe: Recipe = DEFAULT_RECIPE, divisor: int = 4,
                uniform: bool = True, workdir: str | Path | None = None, verbose: bool = False,
                on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """FastNAS (and uniform L1 at FastNAS's MACs) for each FLOPs target, fine-tuned and measured like autoprune.

    ``base`` is an autoprune base checkpoint (path or loaded); ``data`` defaults to the checkpoint's data spec.
    ``settings`` carries the fine-tuning epochs, KD, seed, BN batches, the latency spec (batch, threads, repeats)
    and the device, ``recipe`` the classification task's lr, batch size and KD weights, as for autoprune's trials.
    ModelOpt's search checkpoints go to ``workdir`` (a temporary directory when None). ``on_row(row)`` is called as
    each row is done.

    Returns ``{"base": {...}, "settings": {...}, "divisor": int, "rows": [...]}``. ``base`` has ``macs``,
    ``params``, ``size_bytes``, ``latency_ms`` (the meter's reference), ``val_accuracy`` and ``test_accuracy``.
    Each row has ``method`` ("fastnas" | "uniform_l1"), ``flops_target``, ``search_seconds``,
    ``search_cpu_seconds``, ``macs``, ``macs_ratio``, ``params``, ``params_ratio``, ``size_bytes``,
    ``latency_ms``, ``latency_iqr_ms``, ``speedup``, ``val_accuracy_after_bn_recalibration``, ``val_accuracy``,
    ``test_accuracy``, ``finetune_seconds``, ``channels`` (per Conv / Linear layer); FastNAS rows add
    ``modelopt_flops`` (its own FLOPs count of the winner), ``searched_hparams`` (channel counts it searched)
    and ``calib_batch_size``; uniform rows add ``uniform_ratio``.
    """
    ckpt = checkpoints.load(base) if isinstance(base, (str, Path)) else base
    data = data if data is not None else load_data(ckpt.data_spec)
    task = ClassificationTask(data, recipe)
    device = torch.device(devices.resolve(settings.device))
    input_shape = tuple(data.input_shape)
    rows: list[dict[str, Any]] = []
    with torch_threads(settings.threads), ExitStack() as stack:
        folder = Path(workdir if workdir is not None else stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        model = ckpt.build().to(device).eval()
        example = torch.zeros(1, *input_shape, device=device)
        meter = local_meter(model, example, autoprune.discover(model, example), settings.latency_spec(input_shape))
        base_row = {"macs": count_macs(model, input_shape), "params": count_params(model),
                    "size_bytes": serialized_size(model), "latency_ms": meter.reference().latency_ms,
                    "val_accuracy": evaluate(model, data.loader("val", 256, device=device), device),
                    "test_accuracy": evaluate(model, data.loader("test", 256, device=device), device)}

        def finish(method: str, target: float, pruned: nn.Module, extra: dict[str, Any]) -> dict[str, Any]:
            row = {"method": method, "flops_target": target, **extra,
                   **finetune_and_measure(pruned, model, task, settings, meter)}
            row.update(macs_ratio=row["macs"] / base_row["macs"], params_ratio=row["params"] / base_row["params"])
            rows.append(row)
            if on_row is not None:
                on_row(row)
            return row

        for target in targets:
            if not 0.0 < target < 1.0:
                raise ValueError(f"FLOPs target must be a fraction in (0, 1), got {target}")
            checkpoint = folder / f"fastnas_flops{round(target * 100)}_seed{settings.seed}.pth"
            subnet, cost = fastnas_search(model, data, target, settings, divisor=divisor, checkpoint=checkpoint,
                                          verbose=verbose)
            row = finish("fastnas", target, subnet, cost)
            if uniform:
                pruned, cost = uniform_at_macs(model, example, row["macs"], input_shape)
                finish("uniform_l1", target, pruned, cost)
    return {"base": base_row, "settings": {**settings.to_dict(), **task.describe()}, "divisor": divisor, "rows": rows}


HEADER = (f"{'method':<11} {'FLOPs':>5} {'search s':>8} {'cpu s':>7} {'MACs M':>7} {'xMACs':>6} {'params k':>8} "
          f"{'lat ms':>7} {'speedup':>7} {'val BN':>6} {'val':>6} {'test':>6}")


def format_row(row: dict[str, Any]) -> str:
    """One line of the results table."""
    return (f"{row['method']:<11} {row['flops_target']:>5.2f} {row['search_seconds']:>8.1f} "
            f"{row['search_cpu_seconds']:>7.1f} {row['macs'] / 1e6:>7.2f} {row['macs_ratio']:>6.3f} "
            f"{row['params'] / 1e3:>8.1f} {row['latency_ms']:>7.3f} {row['speedup']:>6.2f}x "
            f"{row['val_accuracy_after_bn_recalibration']:>6.4f} {row['val_accuracy']:>6.4f} "
            f"{row['test_accuracy']:>6.4f}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", help="autoprune base checkpoint (autoprune train-base ... --out BASE.pt)")
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.33], help="FLOPs as fractions of the base")
    p.add_argument("--epochs", type=float, default=1.0, help="KD fine-tuning epochs per model")
    p.add_argument("--lr", type=float, default=Recipe().lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--divisor", type=int, default=4, help="FastNAS channel / feature divisor")
    p.add_argument("--threads", type=int, default=1, help="torch threads (search, fine-tuning and latency)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-uniform", action="store_true", help="skip the uniform-L1 row at FastNAS's MACs")
    p.add_argument("--workdir", help="keep ModelOpt's search checkpoints here")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--verbose", action="store_true", help="ModelOpt's search-space profile and progress")
    args = p.parse_args(argv)
    if args.divisor < 1 or not math.isfinite(args.epochs) or args.epochs < 0:
        p.error("--divisor must be >= 1 and --epochs >= 0")
    settings = TrialSettings(finetune_epochs=args.epochs, kd=True, threads=args.threads, device=args.device,
                             latency_device=args.device, seed=args.seed)
    print(HEADER, flush=True)
    result = run_fastnas(args.base, args.targets, settings=settings, recipe=Recipe(lr=args.lr, seed=args.seed),
                         divisor=args.divisor, uniform=not args.no_uniform,
                         workdir=args.workdir, verbose=args.verbose, on_row=lambda r: print(format_row(r), flush=True))
    b = result["base"]
    print(f"{'base':<11} {1:>5.2f} {'-':>8} {'-':>7} {b['macs'] / 1e6:>7.2f} {1:>6.3f} {b['params'] / 1e3:>8.1f} "
          f"{b['latency_ms']:>7.3f} {1:>6.2f}x {'-':>6} {b['val_accuracy']:>6.4f} {b['test_accuracy']:>6.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"results: {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
