"""Ray Tune wiring: trials run as Tune trials, their results land in the results store as they finish."""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any

# Quiet, file-light Tune (set before Ray is imported): no TensorBoard/CSV loggers per trial, the classic
# reporter, no warnings about the per-epoch checkpoints autoprune asks for.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from ray import tune  # noqa: E402

from autoprune.config import SearchConfig, violations  # noqa: E402
from autoprune.measure.metrics import torch_threads  # noqa: E402
from autoprune.searching.front import compute_front, format_rows  # noqa: E402
from autoprune.searching.results import ResultsStore, skipped_row  # noqa: E402
from autoprune.searching.screening import LatencyScreen, Verdict  # noqa: E402
from autoprune.searching.searchers import Searcher  # noqa: E402
from autoprune.searching.space import SearchSpace  # noqa: E402
from autoprune.searching.storage import RunDir  # noqa: E402
from autoprune.searching.trainable import PRUNED_FILE  # noqa: E402
from autoprune.searching.trial import TrialSettings, scores  # noqa: E402
from autoprune.tasks.base import Task  # noqa: E402


def _quiet_tune() -> None:
    """Tune's warnings about its own bookkeeping (searcher snapshots, per-trial result files) are noise here."""
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)


def init_ray(cpus: float) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (set by Ray Jobs and KubeRay; ``auto`` joins a ``ray start``
    cluster on this machine), or start a private local instance, never a stale one by accident."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
        return
    # the workers of a private local Ray import what this process can (a model class or a task defined in a module
    # beside the script, a test module): they inherit its sys.path as PYTHONPATH from the raylet ray.init starts
    previous = os.environ.get("PYTHONPATH")
    paths = [*(previous.split(os.pathsep) if previous else []), *(p for p in sys.path if p and os.path.isdir(p))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    try:
        ray.init(address="local", num_cpus=max(1, int(cpus)), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous


def run_tune(config: SearchConfig, run_dir: RunDir, base: Any, task: Task, space: SearchSpace,
             searcher: Searcher, store: ResultsStore, settings: TrialSettings, trials: int, echo,
             meter: Any, time_budget_s: float | None) -> bool:
    """Run ``trials`` trials on Ray Tune; every trial times its candidate on the search's latency actor ``meter``.
    Returns whether ``time_budget_s`` (what is left of the search's ``time_budget_s``; Tune's clock starts at
    ``fit``) ended it."""
    from autoprune.searching.trainable import policy_trial
    from autoprune.searching.tune_searcher import AskTellSearch

    constraints = config.constraints
    _quiet_tune()
    with torch_threads(settings.threads):  # what no candidate changes, evaluated once for every trial
        base_scores = scores(base.build().eval(), task)
    trainable = tune.with_resources(
        tune.with_parameters(policy_trial, base=base, task=task, space=space, settings=settings, meter=meter,
                             base_scores=base_scores),
        {"cpu": config["resources.cpu"], "gpu": config["resources.gpu"]},
    )
    screen = latency_screen(config, space, meter)
    search = AskTellSearch(searcher, lambda result: violations(constraints, result), trials,
                           screen=screen if screen.active else None, on_skip=SkipRecorder(store, space, echo))
    scheduler = None
    if config["scheduler"] == "asha":  # stopped trials are told as stopped: they never reach the front
        # stop_last_trials=False: a trial that reaches max_t must send its final report, not be stopped at it
        scheduler = tune.schedulers.ASHAScheduler(metric=config["metric.name"], mode=config["metric.mode"],
                                                  time_attr="epoch",
                                                  max_t=max(1, math.ceil(config["finetune.epochs"])),
                                                  grace_period=1, stop_last_trials=False)
    callback = StoreCallback(store, space, config, echo)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=-1,  # the searcher ends it
                                    time_budget_s=time_budget_s,
                                    max_concurrent_trials=config["concurrency"], reuse_actors=True,
                                    trial_name_creator=str, trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
        run_config=tune.RunConfig(name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=run_dir.uri,
                                  callbacks=[callback], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=config["max_failures"]),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    echo(format_rows([], config["metric.name"]).splitlines()[0] + "  front")
    started = time.monotonic()
    tuner.fit()
    return time_budget_s is not None and time.monotonic() - started >= time_budget_s


def latency_screen(config: SearchConfig, space: SearchSpace, meter: Any) -> LatencyScreen:
    """Predictions from the latency actor against the config's latency constraints (``latency.screen_margin``)."""
    import ray

    margin = config["latency.screen_margin"]
    reference = ray.get(meter.reference.remote()).latency_ms
    constraints = config.constraints if margin is not None else []
    return LatencyScreen(space, constraints, {"latency_ms": reference},
                         lambda channels: ray.get(meter.predict.remote(channels)), margin or 0.0)


class SkipRecorder:
    """Records a candidate skipped on its predicted latency as a ``skipped`` row (never counted as a trial)."""

    def __init__(self, store: ResultsStore, space: SearchSpace, echo) -> None:
        self.store, self.space, self.echo = store, space, echo

    def __call__(self, point: dict[str, Any], verdict: Verdict, searcher: str) -> None:
        row = skipped_row(point, self.space.groups, str(verdict.reason), searcher,
                          latency_predicted_ms=verdict.predicted_ms)
        self.store.append(row)
        self.echo(f"{row['trial_id']:>14s} {verdict.reason}")


class StoreCallback(tune.Callback):
    """Appends each trial Tune ends to the results store (exactly once) and prints a progress line.

    A trial's status is what its searcher is told (``tune_search.outcome_of``): ``ok``; ``failed`` when it
    raised or Tune reports it errored, even after some epochs (an actor or node lost beyond
    ``max_failures``), with the error; ``stopped`` when a scheduler ended it before its final result.
    Tune calls neither hook for trials still running when the driver stops (Ctrl-C, a crash): they are
    not recorded, and ``--resume`` runs them again.
    """

    def __init__(self, store: ResultsStore, space: SearchSpace, config: SearchConfig, echo) -> None:
        self.store, self.space, self.config, self.echo = store, space, config, echo
        self.run = store.run
        self.constraints = config.constraints
        self.objectives = config.objectives

    def _row(self, trial: Any, result: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
        from autoprune.searching.tune_searcher import outcome_of

        result = result or {}
        point = trial.config["point"]
        outcome = outcome_of(result, error is not None, lambda r: violations(self.constraints, r), self.objectives)
        row: dict[str, Any] = {f"ratio:{g}": point[g] for g in self.space.groups}
        row.update(trial_id=trial.trial_id, searcher=trial.config["searcher"], criterion=point["criterion"],
                   status=outcome.state, error=None, host=result.get("host"),
                   device=result.get("device"))
        if outcome.state == "ok":
            row.update({k: v for k, v in result.items() if k in self.store.schema.names and k not in row})
            row["feasible"] = all(v <= 0 for v in outcome.violations.values())
            checkpoint = trial.checkpoint
            if checkpoint:  # relative to the run directory, so a run directory can be moved
                path = f"{checkpoint.path.rstrip('/')}/{PRUNED_FILE}"
                prefix = self.run.path.rstrip("/") + "/"
                row["checkpoint"] = path[len(prefix):] if path.startswith(prefix) else path
        elif outcome.state == "failed":
            row["error"] = result.get("error") or error or "an objective value is not finite"
        else:
            row["error"] = "stopped by the scheduler before its fine-tuning budget"
        row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        return row

    def _record(self, trial: Any, result: dict[str, Any] | None, error: str | None) -> None:
        row = self._row(trial, result, error)
        self.store.append(row)
        front = compute_front(self.store.rows, self.objectives)
        line = format_rows([row], self.config["metric.name"]).splitlines()[1]
        self.echo(f"{line}  {len(front.rows):5d}" + (f"  {row['error']}" if row["status"] != "ok" else ""))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial, trial.last_result, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = getattr(trial, "error_msg", None) or "trial errored"
        self._record(trial, trial.last_result, str(error).strip().splitlines()[-1][:500])
