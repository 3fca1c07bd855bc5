"""Search configuration: YAML validated against a schema of defaults; ``--set key=value`` overrides any key.

Every key has a default below, so a config file states only what differs. An unknown key, a value of
the wrong type, or a bad constraint is an error naming the dotted key.
"""
from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autoprune.errors import AutopruneError
from autoprune.objectives import COSTS, Objective, metric_objective, parse_objectives
from autoprune.searching.registry import SEARCHERS

DEFAULTS: dict[str, Any] = {
    "name": "search",
    # model: a zoo name, 'torchvision:NAME' or a user factory 'package.module:factory'
    "model": "resnet20",
    # task: null (the built-in image classification on 'data') or a user's Task, 'package.module:Class', built with
    # task_args on every worker; its metric must be the one named under 'metric'
    "task": None,
    "task_args": {},
    # the task's figure of merit: what evaluate returns, its direction (max or min); objectives and constraints
    # name it, the front, tables and model cards show it
    "metric": {"name": "accuracy", "mode": "max"},
    # factory: the user's 'package.module:function' returning {'train', 'test'[, 'val', 'num_classes']} Datasets
    # (autoprune/data/factory.py), called with factory_args on every worker and read by a DataLoader with 'workers'
    # processes; dataset then reads 'factory'
    "data": {"dataset": "embedded", "root": None, "val_fraction": 0.1, "seed": 0, "image_size": 32,
             "max_train_samples": None, "factory": None, "factory_args": {}, "workers": 0},
    # sparsity_l1 > 0: fine-tune the base for sparsity_epochs with an L1 penalty on batch-norm scales (network
    # slimming) before the search, at lr * 0.1; saved beside the base and reused
    # weights: a state_dict the user trained (loaded with weights_only into 'model'; nothing is retrained); else
    # checkpoint: an autoprune base checkpoint, trained on the classification data when missing
    "base": {"checkpoint": None, "weights": None, "epochs": 10.0, "lr": 0.1, "batch_size": 128, "sparsity_l1": 0.0,
             "sparsity_epochs": 1.0},
    # round_to: kept channel counts are multiples of it, and below it multiples of small_step (null: none below it);
    # round_to auto: both measured for latency.runtime on the latency node's CPU when the search starts
    # (autoprune/measure/steps.py) and kept in the run directory
    "space": {"ratio": {"low": 0.0, "high": 0.7, "step": 0.1}, "groups": {}, "ignore": [], "round_to": 1,
              "small_step": None, "criteria": ["l1"],
              "reconstruct": False},  # reconstruct: least-squares re-fit of pruned layers' consumers
    # final_epochs: what 'autoprune finalize' fine-tunes the chosen policy for (epochs: each trial's budget);
    # precision (the base's training too): auto is bf16 autocast on a GPU that has it, else fp16 with a gradient
    # scaler, and fp32 on CPUs; or fp32, bf16, fp16
    "finetune": {"epochs": 1.0, "lr": 0.02, "kd": True, "kd_alpha": 0.5, "kd_temperature": 4.0, "steps": 1,
                 "batch_size": 128, "final_epochs": 8.0, "precision": "auto"},
    # two or three of the metric and autoprune.objectives.COSTS; null: [<metric>, size_bytes, latency_ms]
    "objectives": None,
    "constraints": [],
    # staged evaluation: proxy_trials stage-0 candidates (prune + BN recalibration on proxy_batches training batches,
    # accuracy on proxy_samples validation images; scored by resident evaluators, autoprune/searching/stage0) before
    # the fine-tuned ones (nsga2/tpe/gp/random; 0: fine-tune every candidate); sensitivity and greedy always use stage 0.
    # greedy: latency falls by greedy_step x base per iteration (NetAdapt's small steps), the greedy_shortlist best
    # proposals by stage 0 (0: all) fine-tuned short_epochs. seed_from: sensitivity starts nsga2/tpe/gp/random
    # from sensitivity allocations (population - warm_start of them) after the uniform ones.
    "searcher": {"name": "nsga2", "seed": 0, "warm_start": 3, "population": 8, "startup_trials": 6, "grid": 8,
                 "proxy_trials": 0, "proxy_samples": 500, "proxy_batches": 4, "short_epochs": 0.1, "greedy_step": 0.05,
                 "greedy_shortlist": 3,
                 "seed_from": "uniform"},
    "scheduler": "none",  # or "asha": stop weak candidates early on validation accuracy (multi-fidelity)
    "trials": 16,
    # stop the search this many seconds after stage 0 starts (no stage-0 batch and no fine-tune begins later; Ray
    # Tune's time_budget_s gets what stage 0 left); null: no limit
    "time_budget_s": None,
    "concurrency": 2,
    "resources": {"cpu": 1.0, "gpu": 0.0},
    # target: a custom Ray resource naming the node that times candidates (null: the head node); table: a per-layer
    # lookup table from 'autoprune latency-table'; screen_margin: skip candidates predicted to break a latency
    # constraint by more than this fraction (null: never skip); shared_reference: the base's reference latency is the
    # lowest this target has measured for it (kept in $AUTOPRUNE_CACHE_DIR/latency), so searches share one
    # calibration: structures timed across the space before stage 0, to fit the latency model that predicts every
    # stage-0 candidate's latency (fine-tuned candidates are timed too)
    # runtime: what candidates are timed in, so the front is drawn in the runtime you ship: torch (eager), onnxruntime
    # (the ONNX export in fp32) or int8 (the ONNX export quantized by onnxruntime); the last two on the CPU
    "latency": {"device": "auto", "batch_size": 1, "threads": None, "repeats": 100, "reference_repeats": 300,
                "target": None, "table": None, "screen_margin": 0.15, "shared_reference": True, "runtime": "torch",
                "calibration": 8},
    "max_failures": 1,
    # what export and finalize write beside the PyTorch files (autoprune/deploy/artefacts.py): model.onnx (checked in
    # onnxruntime), model.int8.onnx (onnxruntime static quantization calibrated on calibration_batches training
    # batches; a qat_epochs quantization-aware fine-tune when it loses more than int8_max_drop of the metric on the
    # validation split, 0: never), model.shared.npz with share_bits (4 to 8) bits per weight (null: none)
    "deploy": {"onnx": True, "int8": True, "share_bits": None, "qat_epochs": 1.0, "int8_max_drop": 0.01,
               "calibration_batches": 8},
}
AUTO = "auto"
AUTO_OR_INT = {"space.round_to"}  # an integer, or auto (measured)
NULLABLE = {"task": str, "base.weights": str, "objectives": list, "time_budget_s": float, "data.root": str,
            "data.max_train_samples": int, "data.factory": str,
            "base.checkpoint": str, "latency.threads": int, "latency.target": str, "latency.table": str,
            "latency.screen_margin": float, "deploy.share_bits": int, "space.small_step": int}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # autoprune.tasks.training.autocast_dtype
RUNTIMES = ("torch", "onnxruntime", "int8")  # latency.runtime: autoprune/measure/runtimes.py
SHARE_BITS = range(4, 9)  # deploy.share_bits: 16 to 256 shared values per layer (autoprune/deploy/sharing.py)
SEEDABLE = ("nsga2", "tpe", "gp", "random")  # searchers that start from warm-start points (Optuna-backed)
PATH_KEYS = ("data.root", "base.checkpoint", "base.weights", "latency.table")
# space.groups: group name -> {low, high, step}; task_args, data.factory_args: anything
FREE_FORM = {"space.groups", "task_args", "data.factory_args"}

_CONSTRAINT = re.compile(
    r"^\s*(?P<metric>\w+)\s*(?P<op><=|>=)\s*(?:(?P<base>base)\s*(?:(?P<sign>[-+*])\s*(?P<delta>[0-9.eE+-]+))?"
    r"|(?P<value>[-+]?[0-9.]+(?:[eE][-+]?\d+)?))\s*$"
)


@dataclass(frozen=True)
class Constraint:
    """``metric <= bound`` or ``metric >= bound``; the bound may be relative to the base model."""

    text: str
    metric: str
    op: str
    value: float | None = None
    sign: str | None = None
    delta: float = 0.0

    @classmethod
    def parse(cls, text: str, key: str, metric: str = "accuracy") -> "Constraint":
        """``metric``: the task's metric, constrainable besides the costs (on validation, never test)."""
        m = _CONSTRAINT.match(str(text))
        if not m:
            raise AutopruneError(f"{key}: cannot parse constraint '{text}' (e.g. 'latency_ms <= 2.0', "
                                 f"'{metric} >= base - 0.01')")
        if m["metric"] not in (metric, *COSTS):
            raise AutopruneError(f"{key}: unknown metric '{m['metric']}' in constraint '{text}': use one of "
                                 f"{', '.join((metric, *COSTS))}")
        if m["base"]:
            return cls(str(text), m["metric"], m["op"], None, m["sign"], float(m["delta"] or 0.0))
        return cls(str(text), m["metric"], m["op"], float(m["value"]))

    def bound(self, base: dict[str, float]) -> float:
        if self.value is not None:
            return self.value
        b = float(base[self.metric])
        return {"-": b - self.delta, "+": b + self.delta, "*": b * self.delta, None: b}[self.sign]

    def violation(self, metrics: dict[str, float], base: dict[str, float]) -> float:
        """Optuna's convention: <= 0 when satisfied, the amount of violation otherwise."""
        v, bound = float(metrics[self.metric]), self.bound(base)
        return v - bound if self.op == "<=" else bound - v


def violations(constraints: list[Constraint], metrics: dict[str, Any]) -> dict[str, float]:
    """Each constraint's violation for a trial whose ``metrics`` carry ``base_<metric>`` values too."""
    base = {c.metric: float(metrics[f"base_{c.metric}"]) for c in constraints
            if metrics.get(f"base_{c.metric}") is not None}
    return {c.text: c.violation(metrics, base) for c in constraints}


@dataclass
class SearchConfig:
    """A validated search configuration; ``raw`` holds every key with defaults filled in."""

    raw: dict[str, Any]
    path: str | None = None

    def __getitem__(self, dotted: str) -> Any:
        node: Any = self.raw
        for part in dotted.split("."):
            node = node[part]
        return node

    @property
    def metric(self) -> Objective:
        """The task's metric, as an objective."""
        return metric_objective(self.raw["metric"]["name"], self.raw["metric"]["mode"])

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return parse_objectives(self.raw["objectives"], metric=self.metric)

    @property
    def constraints(self) -> list[Constraint]:
        return [Constraint.parse(c, f"constraints[{i}]", self.metric.name)
                for i, c in enumerate(self.raw["constraints"])]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False)

    def with_value(self, dotted: str, value: Any) -> "SearchConfig":
        """A copy with one key set (checked as ``--set`` is)."""
        raw = copy.deepcopy(self.raw)
        _set(raw, dotted, value)
        config = SearchConfig(raw, self.path)
        _validate(config)
        return config

    def with_absolute_paths(self) -> "SearchConfig":
        """A copy whose local file paths (data root, base checkpoint, latency table) are absolute, for code that
        runs from another working directory; URIs are kept."""
        raw = copy.deepcopy(self.raw)
        for dotted in PATH_KEYS:
            *parents, leaf = dotted.split(".")
            node = raw
            for part in parents:
                node = node[part]
            if node[leaf] and "://" not in str(node[leaf]):
                node[leaf] = str(Path(node[leaf]).expanduser().resolve())
        return SearchConfig(raw, self.path)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> SearchConfig:
    """Read ``path`` (or only the defaults), apply ``key=value`` overrides, validate."""
    doc: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise AutopruneError(f"config file '{p}' does not exist")
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise AutopruneError(f"config file '{p}' is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
        if not isinstance(doc, dict):
            raise AutopruneError(f"config file '{p}' must be a mapping of keys to values")
    raw = _merge(copy.deepcopy(DEFAULTS), doc, "")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AutopruneError(f"--set expects key=value, got '{item}'")
        _set(raw, key.strip(), yaml.safe_load(value))
    config = SearchConfig(raw, str(path) if path else None)
    _validate(config)
    return config


def _merge(defaults: dict[str, Any], doc: dict[str, Any], prefix: str) -> dict[str, Any]:
    for key, value in doc.items():
        _set(defaults, f"{prefix}{key}", value)
    return defaults


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set one dotted key in ``raw`` (the whole config), checking it against ``DEFAULTS``."""
    parts = dotted.split(".")
    node, default = raw, DEFAULTS
    for i, part in enumerate(parts[:-1]):
        if not isinstance(default, dict) or part not in default:
            raise AutopruneError(f"unknown config key '{'.'.join(parts[:i + 1])}'")
        node, default = node[part], default[part]
        if ".".join(parts[: i + 1]) in FREE_FORM:  # space.groups.<group name with dots>[.low|.high|.step]
            rest = parts[i + 1:]
            if rest[-1] in ("low", "high", "step") and len(rest) > 1:
                node.setdefault(".".join(rest[:-1]), {})[rest[-1]] = value
            else:
                node[".".join(rest)] = value
            return
    last = parts[-1]
    if not isinstance(default, dict) or last not in default:
        raise AutopruneError(f"unknown config key '{dotted}'")
    if isinstance(default[last], dict) and dotted not in FREE_FORM:
        if not isinstance(value, dict):
            raise AutopruneError(f"config key '{dotted}' must be a mapping, got {value!r}")
        for k, v in value.items():
            _set(raw, f"{dotted}.{k}", v)
    else:
        node[last] = _check_type(dotted, value, default[last])


def _check_type(key: str, value: Any, default: Any) -> Any:
    if value is None and key in NULLABLE:
        return None
    if key in AUTO_OR_INT and value == AUTO:
        return value
    expected = NULLABLE.get(key, type(default))
    if expected is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if expected is bool and not isinstance(value, bool) or expected is not bool and isinstance(value, bool):
        raise AutopruneError(f"config key '{key}' must be {expected.__name__}, got {value!r}")
    if not isinstance(value, expected):
        raise AutopruneError(f"config key '{key}' must be {expected.__name__}, got {value!r}")
    return value


def _validate(c: SearchConfig) -> None:
    from autoprune.data import DATASETS
    from autoprune.pruning.policy import CRITERIA

    if c["data.dataset"] not in DATASETS:
        raise AutopruneError(f"config key 'data.dataset': unknown dataset '{c['data.dataset']}', use one of "
                             f"{', '.join(DATASETS)}")
    if c["data.factory"] is not None:
        if c["data.dataset"] not in ("embedded", "factory"):  # embedded: the default, not a choice
            raise AutopruneError(f"config key 'data.factory': give it or data.dataset "
                                 f"('{c['data.dataset']}'), not both")
        if c["task"] is not None:
            raise AutopruneError("config key 'data.factory': a task of your own ('task') loads its own data")
        c.raw["data"]["dataset"] = "factory"
    elif c["data.dataset"] == "factory":
        raise AutopruneError("config key 'data.factory': dataset 'factory' needs data.factory, "
                             "'package.module:function'")
    if c["data.workers"] < 0:
        raise AutopruneError(f"config key 'data.workers' must be >= 0, got {c['data.workers']}")
    for key in ("space.criteria",):
        if not c[key]:
            raise AutopruneError(f"config key '{key}' must list at least one criterion")
        for name in c[key]:
            if name not in CRITERIA:
                raise AutopruneError(f"config key '{key}': unknown criterion '{name}', use one of {', '.join(CRITERIA)}")
    ranges = {"space.ratio": c["space.ratio"], **{f"space.groups.{g}": r for g, r in c["space.groups"].items()}}
    for key, r in ranges.items():
        if not isinstance(r, dict) or set(r) - {"low", "high", "step"}:
            raise AutopruneError(f"config key '{key}' must be a mapping with low, high and step")
        low, high = r.get("low", c["space.ratio.low"]), r.get("high", c["space.ratio.high"])
        step = r.get("step", c["space.ratio.step"])
        if not (0.0 <= low <= high < 1.0) or step <= 0:
            raise AutopruneError(f"config key '{key}': need 0 <= low <= high < 1 and step > 0, "
                                 f"got low={low} high={high} step={step}")
    for key in ("searcher.proxy_trials", "latency.calibration"):
        if c[key] < 0:
            raise AutopruneError(f"config key '{key}' must be >= 0, got {c[key]}")
    if not 0 < c["searcher.greedy_step"] < 1 or c["searcher.short_epochs"] < 0 or c["searcher.greedy_shortlist"] < 0:
        raise AutopruneError("config key 'searcher': need 0 < greedy_step < 1, short_epochs >= 0 and "
                             "greedy_shortlist >= 0")
    if c["searcher.name"] not in SEARCHERS:
        raise AutopruneError(f"config key 'searcher.name': unknown searcher '{c['searcher.name']}', use one of "
                             f"{', '.join(SEARCHERS)}")
    small, round_to = c["space.small_step"], c["space.round_to"]
    if small is not None and (round_to == AUTO or not 1 <= small < round_to or round_to % small):
        raise AutopruneError(f"config key 'space.small_step' must be a divisor of space.round_to below it (or null; "
                             f"round_to auto measures both), got {small}")
    for key in ("trials", "concurrency", "space.round_to", "finetune.steps", "latency.repeats", "searcher.proxy_samples",
                "searcher.proxy_batches"):
        if c[key] != AUTO and c[key] < 1:
            raise AutopruneError(f"config key '{key}' must be >= 1, got {c[key]}")
    for key in ("base.sparsity_l1", "base.sparsity_epochs"):
        if c[key] < 0:
            raise AutopruneError(f"config key '{key}' must be >= 0, got {c[key]}")
    if c["resources.cpu"] <= 0 or c["resources.gpu"] < 0:
        raise AutopruneError("config key 'resources': cpu must be > 0 and gpu >= 0")
    c.metric  # noqa: B018  (a name and a direction, or an error naming them)
    c.objectives  # noqa: B018  (parse now, naming the key)
    if c["searcher.seed_from"] not in ("uniform", "sensitivity"):
        raise AutopruneError(f"config key 'searcher.seed_from' must be uniform or sensitivity, "
                             f"got '{c['searcher.seed_from']}'")
    if c["searcher.seed_from"] == "sensitivity" and c["searcher.name"] not in SEEDABLE:
        raise AutopruneError(f"config key 'searcher.seed_from': sensitivity seeds nsga2, tpe, gp or random, "
                             f"not '{c['searcher.name']}'")
    if c["time_budget_s"] is not None and not (math.isfinite(c["time_budget_s"]) and c["time_budget_s"] > 0):
        raise AutopruneError(f"config key 'time_budget_s' must be > 0 seconds or null, got {c['time_budget_s']}")
    if c["scheduler"] not in ("none", "asha"):
        raise AutopruneError(f"config key 'scheduler' must be none or asha, got '{c['scheduler']}'")
    if c["finetune.precision"] not in PRECISIONS:
        raise AutopruneError(f"config key 'finetune.precision' must be one of {', '.join(PRECISIONS)}, "
                             f"got '{c['finetune.precision']}'")
    if c["latency.device"] not in ("auto", "cpu", "cuda"):
        raise AutopruneError(f"config key 'latency.device' must be auto, cpu or cuda, got '{c['latency.device']}'")
    if c["latency.runtime"] not in RUNTIMES:
        raise AutopruneError(f"config key 'latency.runtime' must be one of {', '.join(RUNTIMES)}, "
                             f"got '{c['latency.runtime']}'")
    if c["latency.runtime"] != "torch":
        if c["latency.device"] == "cuda":
            raise AutopruneError(f"config key 'latency.runtime': {c['latency.runtime']} times on the CPU "
                                 f"(onnxruntime's CPU provider); set latency.device: cpu or latency.runtime: torch")
        if c["latency.table"]:
            raise AutopruneError(f"config key 'latency.table': the per-layer table times eager torch layers; with "
                                 f"latency.runtime {c['latency.runtime']} leave it out (MACs predict latency)")
    _ = c.constraints  # parse every constraint now, naming the bad one
    problem = deploy_problem(c["deploy"])
    if problem:
        raise AutopruneError(f"config key 'deploy': {problem}")


def share_bits_problem(bits: Any) -> str | None:
    """What is wrong with a weight-sharing width (``deploy.share_bits``), or None."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SHARE_BITS:
        return f"must be {SHARE_BITS.start} to {SHARE_BITS.stop - 1} bits per weight, got {bits!r}"
    return None


def deploy_problem(deploy: dict[str, Any]) -> str | None:
    """What is wrong with the ``deploy`` options (config keys or ``autoprune.DeployOptions``), or None."""
    bits_problem = share_bits_problem(deploy["share_bits"]) if deploy["share_bits"] is not None else None
    if bits_problem:
        return f"share_bits {bits_problem} (or null: no sharing)"
    if deploy["qat_epochs"] < 0 or deploy["int8_max_drop"] < 0 or deploy["calibration_batches"] < 1:
        return "need qat_epochs >= 0, int8_max_drop >= 0 and calibration_batches >= 1"
    if deploy["int8"] and not deploy["onnx"]:
        return "int8 quantizes the ONNX export: with onnx off, turn int8 off too"
    return None
