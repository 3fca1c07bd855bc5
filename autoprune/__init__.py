"""autoprune: search per-layer structural-pruning policies for PyTorch models."""
from typing import TYPE_CHECKING

from autoprune.errors import AutopruneError
from autoprune.pruning import prune  # first: policy.py reads the criteria registry from autoprune.pruning
from autoprune.policy import Policy, PrunableGroup, discover


if TYPE_CHECKING:
    from torch import nn


def load(directory: str) -> "nn.Module":
    """Rebuild the model exported into ``directory`` by ``autoprune export``."""
    from autoprune.export import load as _load

    return _load(directory)


__all__ = ["AutopruneError", "Policy", "PrunableGroup", "discover", "load", "prune"]
__version__ = "0.1.0"
