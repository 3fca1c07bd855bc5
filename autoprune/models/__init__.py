"""The model zoo: CIFAR ResNets and VGGs, torchvision classifiers, and user factories."""
from autoprune.models.zoo import BUILTIN, ModelSpec, build_model

__all__ = ["BUILTIN", "ModelSpec", "build_model"]
