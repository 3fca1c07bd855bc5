"""A search's stage-0 engine, started: evaluators, the latency model fitted on timed structures, the budget.

``attach_engine`` is what the controller calls once the searcher exists: when the searcher asks for stage-0
candidates (``searcher.proxy_trials`` > 0, ``sensitivity``, ``greedy``, ``seed_from: sensitivity``), it starts the
evaluator pool, times ``latency.calibration`` structures drawn across the space's latency band on the search's
latency actor (the base and the space's corners are timed already), fits the latency model on them, hands the
searcher the budget it repairs its proposals into, and runs the stage-0 work the searcher asks for before its first
fine-tune. Every later point the searcher asks at stage 0 goes through the same engine.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autoprune.config import SEEDABLE, SearchConfig
from autoprune.measure.structure import StructureModel
from autoprune.searching.results import ResultsStore
from autoprune.searching.searchers.base import Searcher
from autoprune.searching.space import SearchSpace
from autoprune.searching.stage0.budget import Budget
from autoprune.searching.stage0.engine import Stage0Engine
from autoprune.searching.stage0.evaluator import Stage0Settings
from autoprune.searching.stage0.keeper import LatencyKeeper
from autoprune.searching.stage0.pool import EvaluatorPool
from autoprune.tasks.base import Task

Echo = Callable[[str], None]


def uses_stage0(config: SearchConfig) -> bool:
    """Whether the configured searcher evaluates candidates at stage 0 (``proxy_trials`` stages the Optuna-backed
    ones only: ``uniform`` fine-tunes its grid)."""
    return ((config["searcher.proxy_trials"] > 0 and config["searcher.name"] in SEEDABLE)
            or config["searcher.name"] in ("sensitivity", "greedy")
            or config["searcher.seed_from"] == "sensitivity")


def stage0_settings(config: SearchConfig, threads: int) -> Stage0Settings:
    return Stage0Settings(bn_batches=config["searcher.proxy_batches"], reconstruct=config["space.reconstruct"],
                          threads=threads, seed=config["searcher.seed"])


def attach_engine(config: SearchConfig, searcher: Searcher, store: ResultsStore, base_model: Any, task: Task,
                  space: SearchSpace, structure: StructureModel, meter: Any, threads: int,
                  echo: Echo) -> Stage0Engine:
    """The engine around ``searcher`` (see module), its stage-0 work before the first fine-tune done."""
    pool = EvaluatorPool(base_model, task, space, stage0_settings(config, threads), cpus=config["resources.cpu"])
    try:
        return _attach(config, searcher, store, base_model, task, space, structure, meter, pool, echo)
    except BaseException:  # an error or an interrupt before the engine is handed over: its evaluators go too
        pool.close()
        raise


def _attach(config: SearchConfig, searcher: Searcher, store: ResultsStore, base_model: Any, task: Task,
            space: SearchSpace, structure: StructureModel, meter: Any, pool: EvaluatorPool,
            echo: Echo) -> Stage0Engine:
    import ray

    base = pool.base_outcome()
    metric = config["metric.name"]
    reference = ray.get(meter.reference.remote()).latency_ms
    base_values = {metric: base[f"proxy_{metric}"], "params": base["params"], "size_bytes": base["size_bytes"],
                   "macs": base["macs"], "latency_ms": reference}
    budget = Budget.from_constraints(space, structure, config.constraints, base_values,
                                     ray.get(meter.predictor.remote()))
    keeper = LatencyKeeper(meter, base_model, task.example_input(), budget)
    keeper.calibrate(config["latency.calibration"], config["searcher.seed"], echo)
    searcher.use_budget(budget)
    engine = Stage0Engine(searcher, pool, store, budget, config.constraints, base_values,
                          batch=max(config["searcher.population"], 4 * pool.size), echo=echo, keeper=keeper,
                          time_budget_s=config["time_budget_s"])
    echo(f"stage 0: {pool.size} resident evaluators (base proxy {metric} {base[f'proxy_{metric}']:.4f}, "
         f"{config['searcher.proxy_batches']} recalibration batches, {config['searcher.proxy_samples']} proxy samples)")
    engine.prepare()
    return engine
