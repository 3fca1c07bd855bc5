"""Bayesian search: multi-objective TPE (Ozaki et al. 2020), constraint-aware."""
import optuna

from autoprune.searching.searchers.optuna_base import OptunaSearcher


class TPESearcher(OptunaSearcher):
    name = "tpe"

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(n_startup_trials=int(self.settings.get("startup_trials", 6)),
                                          multivariate=True, seed=seed)
