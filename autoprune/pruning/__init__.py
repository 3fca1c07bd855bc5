"""Structural pruning: importance criteria and the one-shot / iterative strategies."""
from autoprune.pruning.criteria import REGISTRY, Criterion, make_criterion
from autoprune.pruning.structural import PruneRecord, prune, replay

__all__ = ["REGISTRY", "Criterion", "PruneRecord", "make_criterion", "prune", "replay"]
