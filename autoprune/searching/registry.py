"""The searchers by name, as ``module:Class`` paths: the config validates names against it without importing a
searcher (nor Optuna), and ``make_searcher`` imports the one a search uses."""

SEARCHERS = {
    "nsga2": "autoprune.searching.searchers.nsga2:NSGA2Searcher",
    "tpe": "autoprune.searching.searchers.tpe:TPESearcher",
    "gp": "autoprune.searching.searchers.gp:GPSearcher",
    "random": "autoprune.searching.searchers.random:RandomSearcher",
    "uniform": "autoprune.searching.searchers.uniform:UniformSearcher",
    "sensitivity": "autoprune.searching.searchers.sensitivity:SensitivitySearcher",
    "greedy": "autoprune.searching.searchers.greedy:GreedySearcher",
}
