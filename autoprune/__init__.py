"""autoprune: search per-layer structural-pruning policies for PyTorch models.

The package follows the data flow: ``config`` -> ``data`` / ``models`` / ``tasks`` -> ``pruning`` -> ``measure``
-> ``search`` -> ``deploy``.
"""
from autoprune.deploy.artefacts import DeployOptions
from autoprune.deploy.export import export, load
from autoprune.deploy.finalize import finalize
from autoprune.errors import AutopruneError
from autoprune.pruning import Policy, PrunableGroup, discover, prune
from autoprune.searching.api import SearchResult, search
from autoprune.tasks import Metric, Task

__all__ = ["AutopruneError", "DeployOptions", "Metric", "Policy", "PrunableGroup", "SearchResult", "Task", "discover",
           "export", "finalize", "load", "prune", "search"]
__version__ = "0.1.0"
