"""Datasets: the embedded Fashion-MNIST subset and torchvision datasets from a local root."""
from autoprune.data.datasets import DATASETS, DataSpec, ImageData, Split, TensorLoader, load_data

__all__ = ["DATASETS", "DataSpec", "ImageData", "Split", "TensorLoader", "load_data"]
