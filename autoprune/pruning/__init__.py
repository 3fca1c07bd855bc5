"""Structural pruning: importance criteria and the one-shot / iterative strategies."""
from autoprune.pruning.criteria import REGISTRY, Criterion, Unscorable, make_criterion
from autoprune.pruning.structural import PruneRecord, prune, replay

__all__ = ["REGISTRY", "Criterion", "PruneRecord", "Unscorable", "make_criterion", "prune", "replay"]
