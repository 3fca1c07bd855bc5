"""autoprune: search per-layer structural-pruning policies for PyTorch models."""
from autoprune.errors import AutopruneError
from autoprune.pruning import prune  # first: policy.py reads the criteria registry from autoprune.pruning
from autoprune.policy import Policy, PrunableGroup, discover

__all__ = ["AutopruneError", "Policy", "PrunableGroup", "discover", "prune"]
__version__ = "0.1.0"
