"""What a candidate is fine-tuned and evaluated on: the Task interface, the built-in image classification, tasks
by import path, and the classification training loop (distillation, evaluation, BN recalibration)."""
from autoprune.tasks.base import SPLITS, Batch, EpochCallback, Metric, Task, device_of

__all__ = ["SPLITS", "Batch", "EpochCallback", "Metric", "Task", "device_of"]
