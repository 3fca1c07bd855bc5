"""Evolutionary search: NSGA-II (Deb et al. 2002) with constrained domination."""
import optuna

from autoprune.searching.searchers.optuna_base import OptunaSearcher


class NSGA2Searcher(OptunaSearcher):
    name = "nsga2"

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(population_size=int(self.settings.get("population", 8)), seed=seed)
