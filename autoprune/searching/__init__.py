"""The search: the space of policies, the searchers, the Ray Tune trainable and searcher adapter, the controller,
the results store and the Pareto front."""
