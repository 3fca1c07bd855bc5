"""autoprune: search per-layer structural-pruning policies for PyTorch models."""
from autoprune.errors import AutopruneError

# Imported here, not lazily: a submodule imported later would replace the function of the same name
# (``autoprune.export``, ``autoprune.finalize``) with the module.
from autoprune.export import export, load
from autoprune.finalize import finalize
from autoprune.policy import Policy, PrunableGroup, discover
from autoprune.pruning import prune  # first: policy.py reads the criteria registry from autoprune.pruning

__all__ = ["AutopruneError", "Policy", "PrunableGroup", "discover", "export", "finalize", "load", "prune"]
__version__ = "0.1.0"
