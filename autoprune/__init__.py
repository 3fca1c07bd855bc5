"""autoprune: search per-layer structural-pruning policies for PyTorch models."""
from autoprune.errors import AutopruneError
from autoprune.pruning import prune  # first: policy.py reads the criteria registry from autoprune.pruning
from autoprune.policy import Policy, PrunableGroup, discover


def load(directory: str) -> "torch.nn.Module":  # noqa: F821
    """Rebuild the model exported into ``directory`` by ``autoprune export``."""
    from autoprune.export import load as _load

    return _load(directory)


__all__ = ["AutopruneError", "Policy", "PrunableGroup", "discover", "load", "prune"]
__version__ = "0.1.0"
