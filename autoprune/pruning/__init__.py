"""Structural pruning: the dependency graph, policies, importance criteria, the one-shot / iterative strategies,
least-squares reconstruction, and pruned checkpoints."""
from autoprune.pruning.criteria import REGISTRY, Criterion, Unscorable, make_criterion
from autoprune.pruning.policy import Policy, PrunableGroup, discover
from autoprune.pruning.structural import PruneRecord, Rankings, prune, rank_groups, replay

__all__ = ["REGISTRY", "Criterion", "Policy", "PruneRecord", "PrunableGroup", "Unscorable", "discover",
           "Rankings", "make_criterion", "prune", "rank_groups", "replay"]
