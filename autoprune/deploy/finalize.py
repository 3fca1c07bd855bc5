"""Finalize a chosen trial: prune the base to its policy again, fine-tune with the full budget, export it.

A search fine-tunes every candidate briefly, enough to rank them; the model to ship deserves the full budget.
``finalize`` reads the run's ``config.yaml`` and the chosen trial's policy (its ``ratio:<group>`` columns and
criterion), prunes the run's base checkpoint to it with the same criterion, ``round_to``, calibration data and
seed the trial used, fine-tunes it for ``finetune.final_epochs`` epochs (distilling from the base by default),
evaluates the test split once, measures latency again in-process, and writes everything ``export`` writes.
``metrics.json`` keeps the trial's search-time figures (``search``) next to the final ones (``final``).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoprune.deploy.artefacts import DeployOptions
from autoprune.deploy.export import metrics_differ, model_card, pick_trial, run_config, write_export
from autoprune.errors import AutopruneError
from autoprune.pruning import checkpoint as ckpt_io
from autoprune.searching.results import read_marker
from autoprune.searching.storage import RunDir, as_run_dir

if TYPE_CHECKING:
    from torch import nn

    from autoprune.config import SearchConfig
    from autoprune.measure.latency import LatencyMeter
    from autoprune.measure.spec import LatencySpec
    from autoprune.pruning.policy import Policy, PrunableGroup
    from autoprune.searching.space import SearchSpace
    from autoprune.searching.trial import TrialResult, TrialSettings
    from autoprune.tasks.base import Task

Echo = Callable[[str], None]
COST_KEYS = ("latency_ms", "latency_iqr_ms", "size_bytes", "params", "macs")


def finalize(run_dir: str | Path | RunDir, pick: str = "knee", epochs: float | None = None, kd: bool = True,
             out: str | Path = "final", *, deploy: DeployOptions | None = None, against: str | None = None,
             echo: Echo = print) -> dict[str, Any]:
    """Re-prune the base to the policy of the trial ``pick`` chooses (as ``export``), fine-tune it for ``epochs``
    (default: the run's ``finetune.final_epochs``) with distillation from the base unless ``kd`` is False, and
    write the export files into ``out`` (``deploy``: what beside the PyTorch files; default: the run's
    ``deploy.*`` keys). ``against="uniform"``: also finalize, the same way, the uniform policy measured closest to
    the finalized model's latency, and report the difference (``autoprune/deploy/against.py``). Returns the contents
    of ``metrics.json``."""
    from autoprune.deploy.against import AGAINST

    if against is not None and against not in AGAINST:
        raise AutopruneError(f"against (--against) must be one of {', '.join(AGAINST)}, got '{against}'")
    # imported here: ``import autoprune`` imports this module and stays light (controller brings matplotlib)
    from autoprune import devices
    from autoprune.measure.latency import ReferenceStore, local_meter
    from autoprune.searching.controller import trial_settings
    from autoprune.searching.trial import run_trial

    start = time.perf_counter()
    run = as_run_dir(run_dir)
    if not run.is_dir():
        raise AutopruneError(f"run directory '{run_dir}' does not exist")
    read_marker(run)  # only directories autoprune created
    row = pick_trial(run, pick)
    config = run_config(run)
    devices.check_local_latency(trial_settings(config).latency_device, f"finalize of run '{run}' (timed as the "
                                f"search was)", config["latency.device"])
    epochs = config["finetune.final_epochs"] if epochs is None else float(epochs)
    if epochs < 0:
        raise AutopruneError(f"--epochs must be >= 0, got {epochs}")
    searched_base = load_searched_base(run, config, echo)
    base, base_path, task, base_model = (searched_base.checkpoint, searched_base.path, searched_base.task,
                                         searched_base.model)
    policy = searched_base.policy(row)
    searched = trial_settings(config)
    # fine-tune on every core this process may use; time latency as the search did (its threads and batch)
    settings = replace(searched, finetune_epochs=epochs, kd=kd, threads=max(searched.threads, _cores()),
                       device=devices.resolve(searched.device))
    spec = searched.latency_spec(base.input_shape)
    meter = local_meter(base_model, base.example_input, searched_base.groups, spec,
                        store=ReferenceStore.when(config["latency.shared_reference"]))
    echo(f"finalizing trial {row['trial_id']} ({pick}) of {run}: criterion '{policy.criterion}', fine-tuning "
         f"{_epochs(epochs)}{' with KD from the base' if kd else ''} on {settings.device} "
         f"(the search fine-tuned {_epochs(config['finetune.epochs'])})")
    loaded = round(time.perf_counter() - start, 3)
    name = task.metric.name
    result = run_trial(base_model, task, policy, settings, meter=meter,
                       on_epoch=lambda e, m, *_: echo(f"  fine-tune epoch {e}: val_{name} {m[f'val_{name}']:.4f}"))
    if metrics_differ(result.base[f"test_{name}"], row[f"base_test_{name}"]):
        echo(f"note: base '{base_path}' gives test {name} {result.base[f'test_{name}']:.4f}, the search's base "
             f"gave {row[f'base_test_{name}']:.4f}: it may not be the base the run searched")
    metrics = final_metrics(row, pick, run, config, base, result, name, {**settings.to_dict(), **task.describe()},
                            spec)
    if against == "uniform":
        try:
            metrics["against_uniform"] = finalize_uniform(searched_base, policy.criterion, meter, settings, metrics,
                                                          echo)
        except AutopruneError as e:  # the finalized model is still written
            echo(f"against uniform: not compared: {e}")
    ckpt = ckpt_io.from_model(result.model, base.model_spec, base.data_spec, base.input_shape, base.preprocess,
                              result.pruned)
    ckpt.module = base.module
    metrics["seconds"] = {"load": loaded, **result.seconds}
    write_export(Path(out), ckpt, policy, metrics, finalized_card(metrics, policy.criterion), task, spec,
                 deploy or DeployOptions.from_config(config), echo)
    return metrics


def finalize_uniform(searched: SearchedBase, criterion: str, meter: LatencyMeter, settings: TrialSettings,
                     metrics: dict[str, Any], echo: Echo) -> dict[str, Any]:
    """The uniform policy at the finalized model's measured latency, pruned and fine-tuned as it was (``against``)."""
    from autoprune.deploy.against import comparison, uniform_at_latency
    from autoprune.searching.trial import run_trial

    final, name = metrics["final"], metrics["metric"]
    match = uniform_at_latency(searched.model, searched.checkpoint.example_input, searched.space, criterion, meter,
                               final["latency_ms"])
    echo(f"against uniform: ratio {match.ratio:g} measured closest to {final['latency_ms']:.3f} ms "
         f"({match.latency_ms:.3f} ms; " + ", ".join(f"{r:g}: {ms:.3f}" for r, ms in match.timed.items())
         + "); fine-tuning it the same way")
    result = run_trial(searched.model, searched.task, match.policy, settings, meter=meter,
                       on_epoch=lambda e, m, *_: echo(f"  uniform fine-tune epoch {e}: val_{name} "
                                                      f"{m[f'val_{name}']:.4f}"))
    compared = comparison(match, final, result.pruned, metrics["base"]["latency_ms"], name)
    echo(f"against uniform {match.ratio:g}: test {name} {final[f'test_{name}']:.4f} finalized at "
         f"{final['latency_ms']:.3f} ms, {compared[f'test_{name}']:.4f} uniform at {compared['latency_ms']:.3f} ms "
         f"({compared[f'test_{name}_difference']:+.4f})")
    return compared


@dataclass
class SearchedBase:
    """The base a run pruned (its sparsity-trained copy where the search made one), its task, and the space."""

    checkpoint: ckpt_io.Checkpoint
    path: Path
    task: Task
    model: nn.Module
    groups: list[PrunableGroup]
    space: SearchSpace

    def policy(self, row: dict[str, Any]) -> Policy:
        """The policy of a trial row of the run; a one-line error when the base lacks one of its groups."""
        from autoprune.searching.controller import space_point

        missing = [g for g in self.space.groups if row.get(f"ratio:{g}") is None]
        if missing:
            raise AutopruneError(f"trial {row['trial_id']} has no ratio for group '{missing[0]}' of base "
                                 f"'{self.path}': not the base the run searched")
        return self.space.policy(space_point(row, self.space))


def load_searched_base(run: RunDir, config: SearchConfig, echo: Echo = print) -> SearchedBase:
    """The base, task and search space of run ``run`` (``config``: its config.yaml), as the search had them."""
    from autoprune.pruning.policy import discover
    from autoprune.searching.channel_step import resolve_of_run
    from autoprune.searching.controller import (
        base_checkpoint_path,
        build_task,
        classification_data,
        load_python_run,
        python_checkpoint,
        slim_base,
    )
    from autoprune.searching.results import read_marker
    from autoprune.searching.space import SearchSpace

    config = resolve_of_run(config, read_marker(run))  # space.round_to: auto -> the step the run searched with
    python = load_python_run(run)
    if python is not None:  # a run of autoprune.search: its model and task were written into the run directory
        base, base_path, task = python_checkpoint(config, python), run.path, python.task
    else:
        base_path = base_checkpoint_path(config)
        if not base_path.is_file():
            raise AutopruneError(f"base checkpoint '{base_path}' of run '{run}' does not exist: finalize prunes the "
                                 f"base the run searched (config key 'base.checkpoint')")
        base = ckpt_io.load(base_path)
        if base.model_spec.arch != config["model"]:
            raise AutopruneError(f"base checkpoint '{base_path}' holds '{base.model_spec.arch}', but run '{run}' "
                                 f"searched '{config['model']}'")
        data = classification_data(config)
        if data is not None:
            base, base_path = slim_base(config, data, base, base_path, echo)  # the base the search pruned
        task = build_task(config, data)
    model = base.build(base_path)
    groups = discover(model, base.example_input, ignore=config["space.ignore"])
    return SearchedBase(base, base_path, task, model, groups, SearchSpace.from_config(config, groups))


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _epochs(n: float) -> str:
    return f"{n:g} epoch" + ("" if n == 1 else "s")


def final_metrics(row: dict[str, Any], pick: str, run: RunDir, config: SearchConfig, base_ckpt: ckpt_io.Checkpoint,
                  result: TrialResult, metric: str, finetune: dict[str, Any], spec: LatencySpec) -> dict[str, Any]:
    """``metrics.json``: export's keys (the final model's figures, the base measured again), ``search`` (the
    trial's row), ``final`` (after the full fine-tune), ``finetune`` (the trial settings and the task's recipe)
    and ``latency`` (how base and final latency were timed)."""
    base, pruned = result.base, result.pruned
    final = {**pruned, metric: pruned[f"val_{metric}"],  # every figure run_trial measured
             "speedup": base["latency_ms"] / pruned["latency_ms"]}
    search = {"trial_id": row["trial_id"], "criterion": row["criterion"],
              **{k: row[k] for k in (metric, f"test_{metric}", *COST_KEYS)},
              "speedup": row["base_latency_ms"] / row["latency_ms"], "finetune_epochs": config["finetune.epochs"],
              "kd": config["finetune.kd"]}
    return {"trial_id": row["trial_id"], "model": config["model"], "pick": pick, "run_dir": str(run),
            "metric": metric, f"test_{metric}": pruned[f"test_{metric}"], f"val_{metric}": pruned[f"val_{metric}"],
            **{k: pruned[k] for k in COST_KEYS},
            "input_shape": ["batch", *base_ckpt.input_shape], "preprocess": base_ckpt.preprocess,
            "base": {metric: base[f"val_{metric}"], f"test_{metric}": base[f"test_{metric}"],
                     **{k: base[k] for k in ("size_bytes", "latency_ms", "params", "macs")}},
            "search": search, "final": final, "finetune": finetune, "latency": asdict(spec)}


def finalized_card(m: dict[str, Any], criterion: str) -> str:
    """The model card: base, the trial at search time, and the finalized model side by side."""
    s, f, ft, lat = m["search"], m["final"], m["finetune"], m["latency"]
    kd = "distilling from the base" if ft["kd"] else "without KD"
    recipe = ", ".join(f"{k} {v}" for k, v in ft.items() if k in ("lr", "batch_size", "kd_alpha", "kd_temperature"))
    return model_card(
        f"Pruned {m['model']} (trial {m['trial_id']}, finalized)",
        f"Structurally pruned with autoprune: channels physically removed by the per-layer policy in `policy.json`\n"
        f"(criterion `{criterion}`), chosen by the search (`{m['pick']}`), then pruned again from the base and\n"
        f"fine-tuned by the {ft['task']} for {_epochs(ft['finetune_epochs'])} {kd}"
        f"{f' ({recipe})' if recipe else ''}, seed {ft['seed']}, on {ft['device']}.\n"
        f"The search had fine-tuned it for {_epochs(s['finetune_epochs'])}{' with KD' if s['kd'] else ''}.",
        [("base", m["base"]), (f"search ({_epochs(s['finetune_epochs'])})", s),
         (f"final ({_epochs(ft['finetune_epochs'])})", f),
         *([(f"uniform {m['against_uniform']['ratio']:g}, same way", m["against_uniform"])]
           if "against_uniform" in m else [])],
        f"Validation {m['metric']} selected the trial; the test split was evaluated once per model. Search-time latency\n"
        "comes from the search's latency meter; base and final latency were measured again in one process,\n"
        f"base and pruned interleaved (batch {lat['batch_size']}, {lat['threads']} thread(s), {lat['device']}).",
        m)
