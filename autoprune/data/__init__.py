"""Datasets: the embedded Fashion-MNIST subset, torchvision datasets from a local root, ImageFolder trees read
lazily, the user's own Datasets."""
from autoprune.data.datasets import ImageData, Split, TensorLoader, load_data
from autoprune.data.factory import FactoryData
from autoprune.data.folder import FolderData
from autoprune.data.spec import DATASETS, ClassificationData, DataSpec

__all__ = ["DATASETS", "ClassificationData", "DataSpec", "FactoryData", "FolderData", "ImageData", "Split", "TensorLoader",
           "load_data"]
