"""Model metrics: parameters, serialised size, MACs, and honestly measured latency.

Latency protocol: fixed batch size and torch thread count, warm-up, at least 30 timed repeats,
median and interquartile range; several models are timed interleaved in one process (order
alternating each round) so their ratio is not skewed by drift; CUDA is timed with synchronisation.
"""
from __future__ import annotations

import io
import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch_pruning as tp
from torch import nn

MIN_REPEATS = 30


@dataclass(frozen=True)
class Latency:
    median_ms: float
    iqr_ms: float
    repeats: int
    batch_size: int
    threads: int
    device: str
    samples_ms: tuple[float, ...] = ()  # one per round, in round order (rounds are shared by the models timed together)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what the weights cost on disk."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates for one sample of ``input_shape`` (C, H, W)."""
    device = next(model.parameters()).device
    was_training = model.training
    macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return int(macs)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_latency(models: Mapping[str, nn.Module], input_shape: tuple[int, ...], *, batch_size: int = 32,
                    threads: int = 1, device: str | torch.device = "cpu", warmup: int = 10,
                    repeats: int = 50) -> dict[str, Latency]:
    """Time one forward pass of each model, interleaved round by round; return per-model statistics."""
    repeats = max(repeats, MIN_REPEATS)
    device = torch.device(device)
    x = torch.randn(batch_size, *input_shape, device=device)
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    for m in models.values():
        m.to(device).eval()
    timed = _cuda_timed if device.type == "cuda" else _wall_timed
    on_device = torch.cuda.device(device) if device.type == "cuda" else nullcontext()  # the events' stream
    with torch_threads(threads), torch.inference_mode(), on_device:
        for _ in range(warmup):
            for n in names:
                models[n](x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        for r in range(repeats):
            for n in (names if r % 2 == 0 else reversed(names)):
                times[n].append(timed(models[n], x))
    result = {}
    for n, t in times.items():
        q1, _, q3 = statistics.quantiles(t, n=4)
        result[n] = Latency(statistics.median(t), q3 - q1, len(t), batch_size, threads, str(device), tuple(t))
    return result


def _wall_timed(model: nn.Module, x: torch.Tensor) -> float:
    """Milliseconds of one forward pass on the CPU (wall clock)."""
    start = time.perf_counter()
    model(x)
    return (time.perf_counter() - start) * 1e3


def _cuda_timed(model: nn.Module, x: torch.Tensor) -> float:
    """Milliseconds of one forward pass on the GPU, between CUDA events recorded on the stream around it (the
    kernels' time, not the host's launch overhead alone)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    model(x)
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))
