"""Bayesian search: Gaussian-process regression with log expected hypervolume improvement."""
import optuna

from autoprune.searching.searchers.optuna_base import OptunaSearcher


class GPSearcher(OptunaSearcher):
    name = "gp"

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(n_startup_trials=int(self.settings.get("startup_trials", 6)), seed=seed)
