"""The search controller: base model → search space → searcher → Ray Tune trials → results store → front.

``run_search`` is what ``autoprune search`` runs: locally (Ray starts in-process), under ``ray job
submit`` or in KubeRay (``ray.init()`` picks up ``RAY_ADDRESS``).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from autoprune import devices
from autoprune.config import SearchConfig, violations
from autoprune.data import ClassificationData, DataSpec, load_data
from autoprune.errors import AutopruneError
from autoprune.measure.latency import Meter, ReferenceStore, RemoteMeter, check_target, local_meter
from autoprune.measure.latency_table import LatencyTable, build_table
from autoprune.measure.structure import StructureModel
from autoprune.objectives import values_of
from autoprune.pruning import checkpoint as ckpt_io
from autoprune.pruning.checkpoint import PYTHON
from autoprune.pruning.criteria import LOSS_CRITERIA
from autoprune.pruning.policy import discover
from autoprune.searching import channel_step
from autoprune.searching.base_training import fit, packaged_base, recipe_of
from autoprune.searching.capacity import (
    NODE_JOIN_WAIT_S,
    await_capacity,
    latency_device,
    latency_threads,
    release_gpu_node,
)
from autoprune.searching.feasibility import check_constraints, format_report, space_report
from autoprune.searching.front import Front, format_rows, is_full, write_front
from autoprune.searching.latency_actor import latency_summary, save_latency_state, start_latency_meter
from autoprune.searching.results import MARKER, ResultsStore, read_marker, run_metric, run_objectives
from autoprune.searching.searchers import Outcome, Searcher, make_searcher
from autoprune.searching.searchers.base import EPOCHS_KEY, STAGE_KEY
from autoprune.searching.searchers.journal import JOURNAL_FILE, StudyJournal
from autoprune.searching.searchers.optuna_base import OptunaSearcher
from autoprune.searching.searchers.seeded import SensitivitySeeded
from autoprune.searching.searchers.sensitivity import SensitivitySearcher
from autoprune.searching.searchers.staged import StagedSearcher
from autoprune.searching.space import SearchSpace
from autoprune.searching.stage0.attach import attach_engine, uses_stage0
from autoprune.searching.storage import RunDir, as_run_dir
from autoprune.searching.trial import TrialSettings
from autoprune.tasks.base import Task
from autoprune.tasks.callables import CallableTask, check_serialisable
from autoprune.tasks.classification import ClassificationTask, Recipe
from autoprune.tasks.imported import ImportedTask

PYTHON_MODEL_FILE, PYTHON_TASK_FILE = "base_model.pkl", "task.pkl"  # a run of autoprune.search
MARKER_VERSION = 2  # 2: objectives and the Optuna study (name, journal file) recorded
Echo = Callable[[str], None]


@dataclass
class SearchSummary:
    run_dir: RunDir
    finished: int          # fine-tuned trials that finished (stage-0 evaluations not counted)
    failed: int
    front: Front
    stage0: int = 0        # stage-0 (proxy) evaluations that finished
    budget_reached: bool = False  # time_budget_s ended the search


def default_base_path(config: SearchConfig) -> Path:
    """``runs/bases/<model>_<dataset>.pt``; a factory's name carries its path and a digest of its arguments."""
    data = config["data.dataset"]
    if config["data.factory"] is not None:
        args = json.dumps(config["data.factory_args"], sort_keys=True, default=str)
        data = f"{config['data.factory']}_{hashlib.sha256(args.encode()).hexdigest()[:8]}"
    slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{config['model']}_{data}").strip("_")
    return Path("runs") / "bases" / f"{slug}.pt"


def base_checkpoint_path(config: SearchConfig) -> Path:
    """Where the search's base checkpoint is: ``base.checkpoint``; else, for ``base.weights``, one named after the
    weights' digest, and the default for the model and data otherwise."""
    weights = Path(config["base.weights"]) if config["base.weights"] else None
    return _base_path(config, _digest(weights) if weights is not None and weights.is_file() else None)


def _base_path(config: SearchConfig, weights_digest: str | None) -> Path:
    if config["base.checkpoint"]:
        return Path(config["base.checkpoint"])
    if weights_digest is not None:
        return default_base_path(config).with_name(f"weights-{weights_digest[:16]}.pt")
    return default_base_path(config)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_spec(config: SearchConfig) -> DataSpec:
    """The classification data the config names (a factory's data needs no root: its arguments say where)."""
    root = None if config["data.factory"] else config["data.root"] or os.environ.get("AUTOPRUNE_DATA")
    return DataSpec(config["data.dataset"], root, config["data.val_fraction"], config["data.seed"],
                    config["data.image_size"], max_train_samples=config["data.max_train_samples"],
                    factory=config["data.factory"], factory_args=dict(config["data.factory_args"]),
                    workers=config["data.workers"])


def ensure_base(config: SearchConfig, data: ClassificationData | None, task: Task,
                echo: Echo) -> tuple[ckpt_io.Checkpoint, Path]:
    """The search's base checkpoint: from the user's weights (``base.weights``), else the checkpoint, trained on the
    classification data (and saved) first when it does not exist yet.

    With ``base.sparsity_l1`` > 0 the search's base is its sparsity-trained copy (``slim_base``).
    """
    import torch

    from autoprune.models import ModelSpec, build_model
    from autoprune.tasks.training import TrainConfig

    if config["base.weights"]:
        return base_from_weights(config, data, task, echo)
    if data is None:
        raise AutopruneError("config key 'base.weights': a search with a task of your own needs your trained model's "
                             "weights (a state_dict file); autoprune trains bases for the built-in classification only")
    path = _base_path(config, None)
    if path.exists():
        base = ckpt_io.load(path)
        if base.model_spec.arch != config["model"]:
            raise AutopruneError(f"base checkpoint '{path}' holds '{base.model_spec.arch}', "
                                 f"but the config's model is '{config['model']}'")
        trained, wanted = base.data_spec, data.spec
        if (trained.dataset, trained.factory, trained.factory_args) != (wanted.dataset, wanted.factory,
                                                                        wanted.factory_args):
            raise AutopruneError(f"config key 'base.checkpoint': '{path}' was trained on {_data_name(trained)}, "
                                 f"the config's data is {_data_name(wanted)}: name another checkpoint")
        return slim_base(config, data, base, path, echo)
    shipped = packaged_base(config, data.spec)
    if shipped is not None:  # the default base, made by autoprune/searching/make_default_base.py, copied out once
        echo(f"base checkpoint {path} not found: using the base shipped in the package ({shipped.name}, trained the "
             f"same way: {recipe_of(config)})")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped, path)
        return slim_base(config, data, ckpt_io.load(path), path, echo)
    spec = ModelSpec(config["model"], data.num_classes, data.input_shape[0])
    echo(f"base checkpoint {path} not found: training {spec.arch} for {config['base.epochs']} epochs")
    torch.manual_seed(config["data.seed"])
    model = build_model(spec)
    init_search_ray(config)
    fitted = fit(model, data, TrainConfig(epochs=config["base.epochs"], lr=config["base.lr"], seed=config["data.seed"],
                                          precision=config["finetune.precision"]), config["base.batch_size"], echo,
                 want_gpu=config["resources.gpu"] > 0)
    metrics = {**fitted.metrics, "recipe": recipe_of(config)}
    base = ckpt_io.from_model(model, spec, data.spec, data.input_shape, data.preprocess(), metrics)
    ckpt_io.save(base, path)
    echo(f"saved base {path}: val_accuracy {fitted.metrics['val_accuracy']:.4f}")
    return slim_base(config, data, base, path, echo)


def _data_name(spec: DataSpec) -> str:
    return f"'{spec.factory}' {spec.factory_args}" if spec.factory else f"'{spec.dataset}'"


def base_from_weights(config: SearchConfig, data: ClassificationData | None, task: Task,
                      echo: Echo) -> tuple[ckpt_io.Checkpoint, Path]:
    """``model`` with the user's ``base.weights`` (a state_dict, loaded with ``weights_only``; every key must fit),
    saved as the run's base checkpoint (``base.checkpoint``, else one named after the weights' digest)."""
    import torch

    from autoprune.models import ModelSpec, build_model

    weights = Path(config["base.weights"])
    if data is None and config["base.sparsity_l1"] > 0:
        raise AutopruneError("config key 'base.sparsity_l1': sparsity training is the built-in classification "
                             "task's; train your model with the L1 penalty yourself")
    if not weights.is_file():
        raise AutopruneError(f"config key 'base.weights': '{weights}' does not exist")
    digest = _digest(weights)
    path = _base_path(config, digest)
    if path.exists():
        base = ckpt_io.load(path)
        if base.metrics.get("weights_sha256") == digest and base.model_spec.arch == config["model"]:
            return slim_base(config, data, base, path, echo) if data is not None else (base, path)
    spec = (ModelSpec(config["model"], data.num_classes, data.input_shape[0]) if data is not None
            else ModelSpec(config["model"]))
    model = build_model(spec)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unreadable file: one line naming it)
        raise AutopruneError(f"config key 'base.weights': '{weights}' is not a readable state_dict: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AutopruneError(f"config key 'base.weights': '{weights}' is not a state_dict (a mapping of names to "
                             f"tensors)")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = f"misses '{missing[0]}'" if missing else f"has unexpected '{unexpected[0]}'"
        raise AutopruneError(f"config key 'base.weights': '{weights}' does not fit model '{config['model']}': it "
                             f"{what} ({len(missing)} missing, {len(unexpected)} unexpected)")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise AutopruneError(f"config key 'base.weights': '{weights}' does not fit model '{config['model']}': "
                             f"{str(e).strip().splitlines()[-1].strip()}") from None
    model.eval()
    name = task.metric.name
    metrics = {f"val_{name}": task.evaluate(model, "val"), f"test_{name}": task.evaluate(model, "test"),
               "weights": str(weights), "weights_sha256": digest}
    example = task.example_input()
    base = ckpt_io.from_model(model, spec, data.spec if data is not None else data_spec(config),
                              tuple(example.shape[1:]), data.preprocess() if data is not None else {}, metrics)
    ckpt_io.save(base, path)
    echo(f"base from weights {weights}: val_{name} {metrics[f'val_{name}']:.4f} (saved as {path})")
    return slim_base(config, data, base, path, echo) if data is not None else (base, path)


def slim_base(config: SearchConfig, data: ClassificationData, base: ckpt_io.Checkpoint, path: Path,
              echo: Echo) -> tuple[ckpt_io.Checkpoint, Path]:
    """Network slimming's sparsity training of the base, when ``base.sparsity_l1`` > 0 (else the base as it is).

    The base is fine-tuned for ``base.sparsity_epochs`` at ``base.lr * 0.1`` with an L1 penalty of
    ``base.sparsity_l1`` on its batch-norm scales, so that ``bn_scale`` separates the channels it can
    drop; the result is saved beside the base as ``<base>.slim-<l1>-<epochs>ep.pt`` and reused while it
    is newer than the base.
    """
    from autoprune.tasks.training import TrainConfig, small_bn_scales

    l1, epochs = config["base.sparsity_l1"], config["base.sparsity_epochs"]
    if l1 <= 0:
        return base, path
    slim_path = path.with_name(f"{path.stem}.slim-{l1:g}-{epochs:g}ep{path.suffix}")
    if slim_path.exists() and slim_path.stat().st_mtime >= path.stat().st_mtime:
        echo(f"base: {slim_path}, sparsity-trained with L1 {l1:g} on batch-norm scales (reused)")
        return ckpt_io.load(slim_path), slim_path
    model = base.build(path)
    before = small_bn_scales(model)
    echo(f"sparsity training: {path} for {epochs:g} epochs with L1 {l1:g} on batch-norm scales, "
         f"lr {config['base.lr'] * 0.1:g}")
    init_search_ray(config)
    fitted = fit(model, data, TrainConfig(epochs=epochs, lr=config["base.lr"] * 0.1, seed=config["data.seed"],
                                          sparsity_l1=l1, precision=config["finetune.precision"]),
                 config["base.batch_size"], echo, want_gpu=config["resources.gpu"] > 0, what="sparsity",
                 loader_seed=config["data.seed"])
    metrics = {**fitted.metrics, "sparsity_l1": l1, "sparsity_epochs": epochs, "sparsity_trained_from": str(path)}
    slim = ckpt_io.from_model(model, base.model_spec, base.data_spec, base.input_shape, base.preprocess, metrics)
    ckpt_io.save(slim, slim_path)
    echo(f"saved {slim_path}: val_accuracy {metrics['val_accuracy']:.4f} (base "
         f"{base.metrics.get('val_accuracy', float('nan')):.4f}), batch-norm scales below 1e-2: "
         f"{before:.0%} -> {small_bn_scales(model):.0%}; the search prunes it")
    return slim, slim_path


def structure_base(config: SearchConfig, echo: Echo) -> tuple[Any, Any]:
    """The base model when only its structure matters (MACs, size, latency), with an example input: the checkpoint
    when there is one, else the untrained architecture, which has the same structure and needs no training."""
    import torch

    from autoprune.models import ModelSpec, build_model

    path = base_checkpoint_path(config)
    if path.exists():
        base = ckpt_io.load(path)
        return base.build(path), base.example_input
    echo(f"base checkpoint {path} not found: using the untrained {config['model']} (same structure)")
    data = classification_data(config)
    if data is None:
        example = build_task(config, None).example_input()
        return build_model(ModelSpec(config["model"])).eval(), torch.zeros_like(example)
    return (build_model(ModelSpec(config["model"], data.num_classes, data.input_shape[0])).eval(),
            torch.zeros(1, *data.input_shape))


def space_command(config: SearchConfig, echo: Echo) -> None:
    """``autoprune space``: the space's corners measured in-process; an unmeetable constraint is an error."""
    model, example = structure_base(config, echo)
    config = channel_step.resolve_here(config, echo)
    groups = discover(model, example, ignore=config["space.ignore"])
    space = SearchSpace.from_config(config, groups)
    settings = trial_settings(config)
    devices.check_local_latency(settings.latency_device, "'autoprune space'", config["latency.device"])
    table = LatencyTable.load(config["latency.table"]) if config["latency.table"] else None
    meter = local_meter(model, example, groups, settings.latency_spec(tuple(example.shape[1:])), table,
                        ReferenceStore.when(config["latency.shared_reference"]))
    echo(f"{config['model']}: {len(groups)} prunable groups, ratios "
         f"{min(p.low for p in space.params)}..{max(p.high for p in space.params)}, {settings.threads} thread(s), "
         f"latency on {settings.latency_device}")
    feasible(model, example, space, config, meter, echo)


def latency_table_command(config: SearchConfig, out: str, echo: Echo) -> None:
    """``autoprune latency-table``: time every layer at the space's ratios on the target; write JSON to ``out``."""
    model, example = structure_base(config, echo)
    config = channel_step.resolve_here(config, echo)
    groups = discover(model, example, ignore=config["space.ignore"])
    space = SearchSpace.from_config(config, groups)
    fractions = sorted({round(1.0 - r, 4) for p in space.params for r in p.grid()})
    structure = StructureModel.from_model(model, example, groups)
    spec = trial_settings(config).latency_spec(tuple(example.shape[1:]))
    start = time.perf_counter()
    if config["latency.target"]:
        import ray

        from autoprune.searching.tuning import init_ray

        init_ray(1)
        check_target(config["latency.target"])
        task = ray.remote(build_table).options(num_cpus=0, resources={config["latency.target"]: 1})
        table = ray.get(task.remote(structure, spec, fractions))
    else:
        devices.check_local_latency(spec.device, "'autoprune latency-table' without latency.target",
                                    config["latency.device"])
        table = build_table(structure, spec, fractions)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(table.to_json() + "\n")
    echo(f"latency table: {len(structure.layers)} layers x {len(fractions)}x{len(fractions)} kept fractions, "
         f"built on {table.built_on} in {time.perf_counter() - start:.1f} s -> {out}\n"
         f"use it with: --set latency.table={out}")


def trial_settings(config: SearchConfig) -> TrialSettings:
    """How the config's candidates are pruned, fine-tuned and timed; each trains on the device Ray gave it
    (``device='auto'``, decided on the worker) and is timed on ``latency.device``."""
    return TrialSettings(finetune_epochs=config["finetune.epochs"], kd=config["finetune.kd"],
                         steps=config["finetune.steps"], latency_batch_size=config["latency.batch_size"],
                         latency_repeats=config["latency.repeats"],
                         latency_reference_repeats=config["latency.reference_repeats"],
                         reconstruct=config["space.reconstruct"], threads=latency_threads(config),
                         device="auto", latency_device=latency_device(config),
                         latency_runtime=config["latency.runtime"], seed=config["searcher.seed"])


def recipe(config: SearchConfig) -> Recipe:
    """The classification task's fine-tuning recipe from the config's ``finetune`` keys."""
    return Recipe(lr=config["finetune.lr"], batch_size=config["finetune.batch_size"],
                  kd_alpha=config["finetune.kd_alpha"], kd_temperature=config["finetune.kd_temperature"],
                  seed=config["searcher.seed"], proxy_samples=config["searcher.proxy_samples"],
                  precision=config["finetune.precision"])


def classification_data(config: SearchConfig) -> ClassificationData | None:
    """The image data of the built-in classification task; None for a task of the user's (it loads its own)."""
    return load_data(data_spec(config)) if config["task"] is None else None


def check_criteria(config: SearchConfig, task: Task) -> None:
    """The gradient criteria (taylor, hessian) differentiate the task's loss: the task must have one."""
    bad = [c for c in config["space.criteria"] if c in LOSS_CRITERIA]
    if bad and not task.has_loss:
        raise AutopruneError(f"config key 'space.criteria': '{bad[0]}' ranks channels by gradients of the task's "
                             f"loss, which {task.describe()['task']} does not define (Task.loss; loss= in "
                             f"autoprune.search): use magnitude, activation or bn_scale criteria")


def build_task(config: SearchConfig, data: ClassificationData | None) -> Task:
    """The task every candidate of the search is fine-tuned and evaluated on (``data``: the classification data,
    None for a task given by import path); it must report the config's metric."""
    if config["task"] is not None:
        task: Task = ImportedTask(config["task"], config["task_args"])
    else:
        assert data is not None, "the built-in classification task needs its data"
        task = ClassificationTask(data, recipe(config))
    check_criteria(config, task)
    check_task_metric(config, task)
    return task


def check_task_metric(config: SearchConfig, task: Task) -> None:
    """The task must report the metric the config names (objectives and constraints are written in it)."""
    if (task.metric.name, task.metric.mode) != (config["metric.name"], config["metric.mode"]):
        raise AutopruneError(f"config key 'metric': the {type(task).__name__} reports {task.metric.name} "
                             f"({task.metric.mode}), not {config['metric.name']} ({config['metric.mode']})")


def feasible(base_model: Any, example_input: Any, space: SearchSpace, config: SearchConfig, meter: Meter,
             echo: Echo) -> None:
    """Print what the space can reach; refuse a constraint it cannot meet before any trial runs."""
    rows = space_report(base_model, example_input, space, meter)
    echo(f"search space (latency in {config['latency.runtime']} at batch {config['latency.batch_size']}):\n"
         f"{format_report(rows)}")
    runtime = config["latency.runtime"]
    hint = (f"; {runtime} runs channel counts that are not multiples of its step slowly: try space.round_to: auto"
            if runtime != "torch" and config["space.round_to"] == 1 else "")
    check_constraints(rows, config.constraints, hint)


@dataclass
class PythonRun:
    """A base model and a task given as Python objects (``autoprune.search``)."""

    model: Any
    task: Task


def pickle_python_run(python: PythonRun) -> tuple[bytes, bytes]:
    """The model and the task pickled as they travel to the workers (cloudpickle); a callable of the task that
    cannot travel is named."""
    from ray import cloudpickle

    try:
        return cloudpickle.dumps(python.model), cloudpickle.dumps(python.task)
    except Exception:
        if isinstance(python.task, CallableTask):
            check_serialisable(python.task)  # names the callable at fault
        raise


def python_base(run: RunDir, config: SearchConfig, python: PythonRun, pickled: tuple[bytes, bytes],
                echo: Echo) -> tuple[ckpt_io.Checkpoint, str]:
    """The base checkpoint of a model given in Python, and its digest. The model and the task (``pickled``) are
    written to the run directory, so that ``export`` and ``finalize`` can rebuild and evaluate from it."""
    model_bytes, task_bytes = pickled
    run.write_bytes(PYTHON_MODEL_FILE, model_bytes)
    run.write_bytes(PYTHON_TASK_FILE, task_bytes)
    base = python_checkpoint(config, python)
    name = python.task.metric.name
    echo(f"base {type(python.model).__name__} given in Python: val_{name} {base.metrics[f'val_{name}']:.4f}"
         + ("" if python.task.trains else "; no finetune given: candidates are evaluated after batch-norm "
                                           "recalibration on the calibration batches, without training"))
    return base, hashlib.sha256(model_bytes).hexdigest()


def python_checkpoint(config: SearchConfig, python: PythonRun) -> ckpt_io.Checkpoint:
    """A base checkpoint around a model given in Python (architecture 'python:module.Class'), with its metric."""
    from autoprune.models import ModelSpec

    model, task = python.model.cpu().eval(), python.task
    name = task.metric.name
    metrics = {f"val_{name}": task.evaluate(model, "val"), f"test_{name}": task.evaluate(model, "test")}
    spec = ModelSpec(f"{PYTHON}{type(model).__module__}.{type(model).__qualname__}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return ckpt_io.Checkpoint(spec, data_spec(config), tuple(task.example_input().shape[1:]), {}, state, metrics,
                              None, model)


def load_python_run(run: RunDir) -> PythonRun | None:
    """The model and task a run of ``autoprune.search`` wrote (None for a run from a config). They are pickles:
    open run directories only from sources you trust."""
    import pickle

    files = read_marker(run).get("python")
    if not files:
        return None
    try:
        return PythonRun(pickle.loads(run.read_bytes(files["model"])), pickle.loads(run.read_bytes(files["task"])))
    except Exception as e:  # noqa: BLE001  (an import error of the user's code, a missing file: one line)
        raise AutopruneError(f"run '{run}' holds a model and task given in Python that cannot be loaded here: "
                             f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                             ) from None


def check_resumable(run_dir: str | Path | RunDir) -> None:
    """Tune's state is a pickle: resume only directories autoprune created (they hold the marker file)."""
    run = as_run_dir(run_dir)
    if not run.exists(MARKER):
        raise AutopruneError(f"--resume: '{run}' is not an autoprune run directory (no {MARKER})")


def prepare_run_dir(run: RunDir, config: SearchConfig, resume: bool, python: bool = False) -> dict[str, Any]:
    """A new run directory gets ``config.yaml`` and the marker; a resumed one is checked. Returns the marker.

    The marker, ``autoprune-run.json``, records the task's metric and the objectives (a resumed search keeps them),
    the Optuna study (``study``: its name in ``journal``, ``optuna.journal``; only Optuna-backed searchers
    write it), and for a run of ``autoprune.search`` (``python``) the files that hold its model and task.
    """
    names = [o.name for o in config.objectives]
    metric = {"name": config["metric.name"], "mode": config["metric.mode"]}
    if resume:
        check_resumable(run)
        marker = read_marker(run)
        if run_metric(run) != config.metric:
            raise AutopruneError(f"config key 'metric': run '{run}' searched {run_metric(run).name} "
                                 f"({run_metric(run).direction}), not {metric['name']} ({config.metric.direction})")
        searched = [o.name for o in run_objectives(run)]
        if searched != names:
            raise AutopruneError(f"config key 'objectives': run '{run}' searched {searched}, not {names}; a resumed "
                                 f"search keeps its objectives")
        if marker.get("version", 1) < 2:  # its trials are replayed into a new study in the run directory
            marker = {**marker, "version": MARKER_VERSION, "objectives": names, "metric": metric,
                      "study": config["name"], "journal": JOURNAL_FILE}
            run.write_text(MARKER, json.dumps(marker) + "\n")
        return marker
    if not run.is_empty():
        raise AutopruneError(f"run directory '{run}' is not empty: pass --resume to continue it, or another --out")
    run.write_text("config.yaml", config.to_yaml())
    marker = {"format": "autoprune-run", "version": MARKER_VERSION, "config": config.path,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "metric": metric, "objectives": names,
              "study": config["name"], "journal": JOURNAL_FILE,
              **({"python": {"model": PYTHON_MODEL_FILE, "task": PYTHON_TASK_FILE}} if python else {})}
    run.write_text(MARKER, json.dumps(marker) + "\n")
    return marker


def run_search(config: SearchConfig, run_dir: str | Path | RunDir, *, resume: bool = False,
               echo: Echo = print, python: PythonRun | None = None) -> SearchSummary:
    """Run (or resume) the search described by ``config`` into ``run_dir`` (a path or a filesystem URI); ``python``:
    the base model and task given as Python objects (``autoprune.search``) instead of by the config."""
    run_dir = as_run_dir(run_dir)
    data = None
    if python is not None:
        python = PythonRun(copy.deepcopy(python.model).cpu().eval(), python.task)  # the user's model stays as it is
        check_criteria(config, python.task)
        check_task_metric(config, python.task)
        pickled = pickle_python_run(python)  # before the run directory and any trial
        task: Task = python.task
    else:  # read before Ray connects: in a Ray Job the package's files are a working_dir copy Ray may remove then
        data = classification_data(config)
        task = build_task(config, data)
    init_search_ray(config)  # what the cluster can give is checked before anything is trained or written
    for note in await_capacity(config, echo, NODE_JOIN_WAIT_S if os.environ.get("RAY_ADDRESS") else 0.0):
        echo(note)
    marker = prepare_run_dir(run_dir, config, resume, python is not None)
    config = channel_step.resolve_for_run(config, run_dir, marker, echo, resume)
    if python is not None:
        base, base_digest = python_base(run_dir, config, python, pickled, echo)
    else:
        base, base_path = ensure_base(config, data, task, echo)
        base_digest = _digest(base_path)
    base_model = base.build()
    groups = discover(base_model, base.example_input, ignore=config["space.ignore"])
    space = SearchSpace.from_config(config, groups)
    store = ResultsStore(run_dir, space.groups, config["metric.name"])
    done = store.rows  # finished, failed, or stopped early by the scheduler (interrupted ones are not recorded)
    evaluated = [r for r in done if counts_as_trial(r)]
    remaining = config["trials"] - len(evaluated)
    echo(f"search '{config['name']}': {len(space.params)} groups, searcher {config['searcher.name']}, "
         f"{remaining} trials to run ({len(evaluated)} already finished), {config['concurrency']} at a time "
         f"-> {run_dir}")
    budget_reached = False
    if remaining > 0:
        absolute = config.with_absolute_paths()  # resolved before the working directory changes
        with stable_working_directory(run_dir):
            budget_reached = _search(absolute, run_dir, marker, task, base, base_digest,
                                     base_model, groups, space, store, done, remaining, echo)
        if budget_reached:
            echo(f"time budget of {config['time_budget_s']:g} s reached (time_budget_s): trials still running were "
                 f"stopped and not recorded; --resume continues the search with a new budget")
    correlation = proxy_correlation(store.rows, config["metric.name"])
    if correlation is not None:
        echo(f"stage-0 proxy vs fine-tuned {config['metric.name']}: Spearman {correlation[0]:.2f} over "
             f"{correlation[1]} trials")
    front = write_front(run_dir) if store.rows else Front([], 0.0, None)
    finished = sum(r["status"] == "ok" and counts_as_trial(r) for r in store.rows)
    stage0 = sum(r["status"] == "ok" and r.get("stage") == "proxy" for r in store.rows)
    if finished and not front.rows:
        echo("no trial met every constraint: the front is empty")
    return SearchSummary(run_dir, finished, sum(r["status"] == "failed" for r in store.rows), front, stage0,
                         budget_reached)


@contextmanager
def stable_working_directory(run_dir: RunDir) -> Iterator[None]:
    """Run from a directory that stays: inside a Ray Job the driver's working directory is a runtime-env copy
    that Ray may garbage-collect once the driver connects, and Tune, Optuna and pathlib ask for the cwd."""
    try:
        previous: str | None = os.getcwd()
    except FileNotFoundError:
        previous = None
    os.chdir(run_dir.path if run_dir.is_local else tempfile.gettempdir())
    try:
        yield
    finally:
        if previous and os.path.isdir(previous):
            os.chdir(previous)


def _search(config: SearchConfig, run_dir: RunDir, marker: dict[str, Any], task: Task, base: Any,
            base_digest: str, base_model: Any, groups: list[Any], space: SearchSpace, store: ResultsStore,
            done: list[dict[str, Any]], remaining: int, echo: Echo) -> bool:
    """Ray up, the latency actor and the feasibility check, the searcher (replayed), then the Tune trials.
    Returns whether the time budget ended them."""
    import ray

    from autoprune.searching.tuning import run_tune

    gate_name = "run-" + hashlib.sha256(run_dir.uri.encode()).hexdigest()[:16]
    settings = dataclasses.replace(trial_settings(config), gate=gate_name)
    structure = StructureModel.from_model(base_model, base.example_input, groups)
    meter, requested = start_latency_meter(config, run_dir, base_model, base.input_shape, structure, settings, echo)
    engine = None
    try:
        feasible(base_model, base.example_input, space, config, RemoteMeter(meter), echo)
        searcher = build_searcher(config, space, run_dir, marker, meter, structure,
                                  curves_key(config, base_digest, settings))
        if not searcher.resumed:  # a study loaded from the run directory already holds them
            for row in done:
                searcher.replay(space_point(row, space), outcome_of_row(row, config))
        if uses_stage0(config):  # stage-0 candidates go to resident evaluators, fine-tunes to Ray Tune
            engine = attach_engine(config, searcher, store, base_model, task, space, structure, meter,
                                   settings.threads, echo)
        left = engine.time_left() if engine is not None else config["time_budget_s"]
        budget_reached = left is not None and left <= 0  # stage 0 spent it: no fine-tune starts
        if not budget_reached:
            budget_reached = run_tune(config, run_dir, base, task, space, engine or searcher, store, settings,
                                      remaining, echo, meter, left)
        if engine is None and searcher.stop_reason:  # the engine says it when it happens
            echo(searcher.stop_reason)
    finally:
        if engine is not None:
            engine.close()
        save_latency_state(run_dir, meter, echo)
        if requested:
            release_gpu_node()
    echo(latency_summary(ray.get(meter.summary.remote())))
    return budget_reached


def init_search_ray(config: SearchConfig) -> None:
    """Ray for the search: the cluster named by ``RAY_ADDRESS``, else a local instance with room for every trial."""
    from autoprune.searching.tuning import init_ray

    init_ray(max(os.cpu_count() or 1, config["concurrency"] * config["resources.cpu"]))


def counts_as_trial(row: dict[str, Any]) -> bool:
    """Rows that spend the trial budget: full-budget trials (not stage-0 or short evaluations, not skipped ones)."""
    return row["status"] != "skipped" and is_full(row)


def proxy_correlation(rows: list[dict[str, Any]], metric: str) -> tuple[float, int] | None:
    """Spearman rank correlation of the stage-0 proxy with the fine-tuned ``metric`` over finished full trials."""
    from scipy.stats import spearmanr

    pairs = [(r[f"proxy_{metric}"], r[metric]) for r in rows if r["status"] == "ok" and counts_as_trial(r)
             and r.get(f"proxy_{metric}") is not None]
    if len(pairs) < 3 or len({p for p, _ in pairs}) < 2 or len({a for _, a in pairs}) < 2:
        return None
    return float(spearmanr([p for p, _ in pairs], [a for _, a in pairs]).statistic), len(pairs)


def curves_key(config: SearchConfig, base_digest: str, settings: TrialSettings) -> str:
    """What a sensitivity searcher's stage-0 curves depend on (beyond the space): the base's bytes, the data, the
    proxy and the latency settings. Equal keys share curves across run directories."""
    digest = hashlib.sha256(base_digest.encode())
    data = {k: v for k, v in config["data"].items() if k != "workers"}  # how many loader processes: not what is read
    digest.update(json.dumps([data, config["searcher.proxy_samples"], settings.reconstruct,
                              config["searcher.proxy_batches"], settings.latency_batch_size, settings.threads,
                              settings.latency_device, config["latency.target"], settings.seed]
                             + ([settings.latency_runtime] if settings.latency_runtime != "torch" else []),
                             sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]


def build_searcher(config: SearchConfig, space: SearchSpace, run_dir: RunDir, marker: dict[str, Any],
                   meter: Any, structure: StructureModel, cache_key: str) -> Searcher:
    """The configured searcher; Optuna-backed ones staged when ``searcher.proxy_trials`` > 0 and seeded with
    sensitivity allocations when ``searcher.seed_from`` is ``sensitivity``."""
    import ray

    from autoprune.searching.feasibility import STATIC

    reference = ray.get(meter.reference.remote()).latency_ms

    def predict_latency(channels: dict[str, int]) -> float:
        return float(ray.get(meter.predict.remote(channels)))

    searcher = make_searcher(config["searcher.name"], space, seed=config["searcher.seed"],
                             warm_start=config["searcher.warm_start"], population=config["searcher.population"],
                             startup_trials=config["searcher.startup_trials"], grid=config["searcher.grid"],
                             objectives=config.objectives, study=StudyJournal(run_dir, marker["study"]),
                             run_dir=run_dir, short_epochs=config["searcher.short_epochs"],
                             greedy_step=config["searcher.greedy_step"], base_latency_ms=reference,
                             greedy_shortlist=config["searcher.greedy_shortlist"],
                             constraints=config.constraints, trials=config["trials"], cache_key=cache_key,
                             predict_latency=predict_latency, predict_macs=structure.macs)
    then: Searcher = searcher
    if config["searcher.proxy_trials"] > 0 and isinstance(searcher, OptunaSearcher):
        structural = frozenset(c.text for c in config.constraints if c.metric in STATIC)
        then = StagedSearcher(searcher, config["searcher.proxy_trials"], structural)
    seeds = config["searcher.population"] - config["searcher.warm_start"]
    if config["searcher.seed_from"] == "sensitivity" and seeds > 0:
        sensitivity = SensitivitySearcher(space, seed=config["searcher.seed"], objectives=config.objectives,
                                          run_dir=run_dir, base_latency_ms=reference, constraints=config.constraints,
                                          trials=seeds, cache_key=cache_key, predict_latency=predict_latency,
                                          predict_macs=structure.macs)
        return SensitivitySeeded(sensitivity, searcher, then)
    return then


def space_point(row: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    point: dict[str, Any] = {g: row[f"ratio:{g}"] for g in space.groups}
    point["criterion"] = row["criterion"]
    if not is_full(row):  # a stage-0 or short evaluation of a staged searcher
        point[STAGE_KEY] = row["stage"]
        if row.get("epochs") is not None and row["stage"] == "short":
            point[EPOCHS_KEY] = row["epochs"]
    return point


def outcome_of_row(row: dict[str, Any], config: SearchConfig) -> Outcome:
    if row["status"] != "ok":
        return Outcome("stopped" if row["status"] == "stopped" else "failed")
    return Outcome("ok", values_of(row, config.objectives), violations(config.constraints, row))


def summary_table(run_dir: RunDir) -> str:
    from autoprune.searching.results import FRONT_FILE, read_trials

    return format_rows(read_trials(run_dir, FRONT_FILE).to_pylist(), run_metric(run_dir).name)
