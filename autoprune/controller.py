"""The search controller: base model → search space → searcher → Ray Tune trials → results store → front.

``run_search`` is what ``autoprune search`` runs: locally (Ray starts in-process), under ``ray job
submit`` or in KubeRay (``ray.init()`` picks up ``RAY_ADDRESS``).
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from autoprune import checkpoint as ckpt_io
from autoprune.config import SearchConfig, violations
from autoprune.data import DataSpec, ImageData, load_data
from autoprune.errors import AutopruneError
from autoprune.front import Front, format_rows, write_front
from autoprune.policy import discover
from autoprune.results import ResultsStore
from autoprune.searchers import Outcome, make_searcher
from autoprune.space import SearchSpace
from autoprune.storage import RunDir, as_run_dir
from autoprune.trial import TrialSettings

MARKER = "autoprune-run.json"
Echo = Callable[[str], None]


@dataclass
class SearchSummary:
    run_dir: RunDir
    finished: int
    failed: int
    front: Front


def default_base_path(config: SearchConfig) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{config['model']}_{config['data.dataset']}").strip("_")
    return Path("runs") / "bases" / f"{slug}.pt"


def data_spec(config: SearchConfig) -> DataSpec:
    root = config["data.root"] or os.environ.get("AUTOPRUNE_DATA")
    return DataSpec(config["data.dataset"], root, config["data.val_fraction"], config["data.seed"],
                    config["data.image_size"], max_train_samples=config["data.max_train_samples"])


def ensure_base(config: SearchConfig, data: ImageData, echo: Echo) -> tuple[ckpt_io.Checkpoint, Path]:
    """Load the base checkpoint, training (and saving) it first when it does not exist yet."""
    import torch

    from autoprune.models import ModelSpec, build_model
    from autoprune.train import TrainConfig, evaluate, train

    path = Path(config["base.checkpoint"] or default_base_path(config))
    if path.exists():
        base = ckpt_io.load(path)
        if base.model_spec.arch != config["model"]:
            raise AutopruneError(f"base checkpoint '{path}' holds '{base.model_spec.arch}', "
                                 f"but the config's model is '{config['model']}'")
        return base, path
    spec = ModelSpec(config["model"], data.num_classes, data.input_shape[0])
    echo(f"base checkpoint {path} not found: training {spec.arch} for {config['base.epochs']} epochs")
    torch.manual_seed(config["data.seed"])
    model = build_model(spec)
    loader = data.loader("train", config["base.batch_size"], shuffle=True, augment=True)
    start = time.perf_counter()
    train(model, loader, TrainConfig(epochs=config["base.epochs"], lr=config["base.lr"], seed=config["data.seed"]),
          on_epoch=lambda epoch, loss: echo(f"  base epoch {epoch}: loss {loss:.4f}"))
    metrics = {"val_accuracy": evaluate(model, data.loader("val", 256)),
               "test_accuracy": evaluate(model, data.loader("test", 256)),
               "train_seconds": round(time.perf_counter() - start, 1)}
    base = ckpt_io.from_model(model, spec, data.spec, data.input_shape, data.preprocess(), metrics)
    ckpt_io.save(base, path)
    echo(f"saved base {path}: val_accuracy {metrics['val_accuracy']:.4f}")
    return base, path


def trial_settings(config: SearchConfig) -> TrialSettings:
    import torch

    gpu = config["resources.gpu"] > 0 and torch.cuda.is_available()
    device = config["latency.device"]
    device = ("cuda" if gpu else "cpu") if device == "auto" else device
    threads = max(1, int(config["resources.cpu"]))
    return TrialSettings(finetune_epochs=config["finetune.epochs"], lr=config["finetune.lr"], kd=config["finetune.kd"],
                         kd_alpha=config["finetune.kd_alpha"], kd_temperature=config["finetune.kd_temperature"],
                         steps=config["finetune.steps"], batch_size=config["finetune.batch_size"],
                         latency_batch_size=config["latency.batch_size"], latency_repeats=config["latency.repeats"],
                         threads=config["latency.threads"] or threads, device=device, seed=config["searcher.seed"])


def check_resumable(run_dir: str | Path | RunDir) -> None:
    """Tune's state is a pickle: resume only directories autoprune created (they hold the marker file)."""
    run = as_run_dir(run_dir)
    if not run.exists(MARKER):
        raise AutopruneError(f"--resume: '{run}' is not an autoprune run directory (no {MARKER})")


def prepare_run_dir(run: RunDir, config: SearchConfig, resume: bool) -> None:
    if resume:
        check_resumable(run)
        return
    if not run.is_empty():
        raise AutopruneError(f"run directory '{run}' is not empty: pass --resume to continue it, or another --out")
    run.write_text("config.yaml", config.to_yaml())
    run.write_text(MARKER, json.dumps({"format": "autoprune-run", "version": 1, "config": config.path,
                                       "created": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def run_search(config: SearchConfig, run_dir: str | Path | RunDir, *, resume: bool = False,
               echo: Echo = print) -> SearchSummary:
    """Run (or resume) the search described by ``config`` into ``run_dir`` (a path or a filesystem URI)."""
    run_dir = as_run_dir(run_dir)
    prepare_run_dir(run_dir, config, resume)
    data = load_data(data_spec(config))
    base, base_path = ensure_base(config, data, echo)
    groups = discover(base.build(base_path), base.example_input, ignore=config["space.ignore"])
    space = SearchSpace.from_config(config, groups)
    store = ResultsStore(run_dir, space.groups)
    searcher = make_searcher(config["searcher.name"], space, seed=config["searcher.seed"],
                             warm_start=config["searcher.warm_start"], population=config["searcher.population"],
                             startup_trials=config["searcher.startup_trials"], grid=config["searcher.grid"])
    done = store.rows  # finished, failed, or stopped early by the scheduler (interrupted ones are not recorded)
    for row in done:
        searcher.replay(space_point(row, space), outcome_of_row(row, config))
    remaining = config["trials"] - len(done)
    echo(f"search '{config['name']}': {len(space.params)} groups, searcher {config['searcher.name']}, "
         f"{remaining} trials to run ({len(done)} already finished), {config['concurrency']} at a time -> {run_dir}")
    if remaining > 0:
        from autoprune.tuning import run_tune

        run_tune(config, run_dir, base, data, space, searcher, store, trial_settings(config), remaining, echo)
    front = write_front(run_dir) if store.rows else Front([], 0.0, None)
    finished = sum(r["status"] == "ok" for r in store.rows)
    if finished and not front.rows:
        echo("no trial met every constraint: the front is empty")
    return SearchSummary(run_dir, finished, sum(r["status"] == "failed" for r in store.rows), front)


def space_point(row: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    point: dict[str, Any] = {g: row[f"ratio:{g}"] for g in space.groups}
    point["criterion"] = row["criterion"]
    return point


def outcome_of_row(row: dict[str, Any], config: SearchConfig) -> Outcome:
    if row["status"] != "ok":
        return Outcome("stopped" if row["status"] == "stopped" else "failed")
    return Outcome("ok", (row["accuracy"], row["size_bytes"], row["latency_ms"]), violations(config.constraints, row))


def summary_table(run_dir: RunDir) -> str:
    from autoprune.results import FRONT_FILE, read_trials

    return format_rows(read_trials(run_dir, FRONT_FILE).to_pylist())
