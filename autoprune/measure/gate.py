"""A node-local gate: trials on a node pause between steps while the latency meter times a model there.

Latency figures are ratios to the base timed back to back, which cancels load that slows both alike, but
not all load does: a small model preempted by a training trial loses more than a large one. So on the node
where the meter runs, training and evaluation steps hold the gate shared and the meter holds it exclusive
while it times; trials on other nodes are not slowed (each node has its own gate files). Writers are not
starved: a trial passes a turnstile before each step, and the meter holds the turnstile while it waits.
Built on ``fcntl.flock`` over two files in the temp directory, named after the search.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import ContextManager

import torch


class MeasurementGate:
    def __init__(self, name: str) -> None:
        directory = Path(tempfile.gettempdir()) / "autoprune-gates"
        directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._turnstile = os.open(directory / f"{name}.turnstile", os.O_RDWR | os.O_CREAT, 0o644)
        self._gate = os.open(directory / f"{name}.gate", os.O_RDWR | os.O_CREAT, 0o644)

    @contextmanager
    def step(self) -> Iterator[None]:
        """Around one training or evaluation step: waits while a measurement runs. CUDA work is asynchronous: the
        step's kernels finish before the gate is released, so none runs while the meter times."""
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        fcntl.flock(self._gate, fcntl.LOCK_SH)
        try:
            yield
        finally:
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    @contextmanager
    def measuring(self) -> Iterator[None]:
        """Around a measurement: new steps wait, running ones finish first."""
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._gate, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._gate, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)


_installed: MeasurementGate | None = None


def install(name: str | None) -> None:
    """Make this process's training and evaluation steps pass the gate ``name`` (None: no gate)."""
    global _installed
    if name is None:
        _installed = None
    elif _installed is None or _installed.name != name:
        _installed = MeasurementGate(name)


def step() -> ContextManager[None]:
    """The installed gate's step, or nothing when none is installed (single candidates, tests, export)."""
    return _installed.step() if _installed is not None else nullcontext()
