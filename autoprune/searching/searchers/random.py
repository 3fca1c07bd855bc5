"""Random search: every ratio drawn independently from its grid."""
import optuna

from autoprune.searching.searchers.optuna_base import OptunaSearcher


class RandomSearcher(OptunaSearcher):
    name = "random"

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=seed)
