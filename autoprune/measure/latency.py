"""Latency that compares across trials: one measurement path per target, apart from training.

Trials never time themselves. A search starts one ``LatencyMeter`` per target: a Ray actor, placed on the
node that advertises the custom resource ``latency.target`` when one is named. The meter times the base
model alone once, before any trial runs (the reference). Afterwards it times each candidate interleaved
with the base, round by round, and reports ``median(candidate_i / base_i) x reference``: load that slows
both models alike cancels in the ratio, so a candidate timed while other trials fine-tune on the same
cores gets the figure it would get on an idle machine. The actor runs one measurement at a time, and
results are cached by structure (channel counts per group): latency does not depend on the weights, so a
structure is timed once, right after pruning, and never again.

The meter also predicts a structure's latency before anything is pruned, with a ``LatencyModel``
(``autoprune/measure/predictor.py``) fitted on every structure measured so far (the base first). Each
measurement records the prediction made just before it, so a run reports its predicted-vs-measured error.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ContextManager, Protocol

import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.measure.gate import MeasurementGate
from autoprune.measure.latency_table import LatencyTable
from autoprune.measure.metrics import MIN_REPEATS, measure_latency
from autoprune.measure.predictor import LatencyModel, loo_errors, median_or_none
from autoprune.measure.runtimes import in_runtime
from autoprune.measure.spec import LatencySpec
from autoprune.measure.structure import Channels, StructureModel, structure_key
from autoprune.pruning.policy import PrunableGroup


@dataclass(frozen=True)
class LatencyReport:
    """One structure's latency on the target, as comparable across trials as the target allows."""

    latency_ms: float      # ratio x reference: what the front compares
    iqr_ms: float          # interquartile range of the per-round ratios, x reference
    ratio: float           # median over rounds of candidate / base, timed back to back
    raw_ms: float          # the candidate's median in this measurement (under whatever load there was)
    raw_base_ms: float     # the base's median in the same rounds
    reference_ms: float    # the base timed alone before the search
    predicted_ms: float    # the meter's prediction just before measuring
    cached: bool = False   # the structure had been timed before: no new measurement

    def metrics(self) -> dict[str, Any]:
        """Columns for trials.parquet."""
        return {"latency_ms": self.latency_ms, "latency_iqr_ms": self.iqr_ms, "latency_ratio": self.ratio,
                "latency_raw_ms": self.raw_ms, "latency_raw_base_ms": self.raw_base_ms,
                "latency_predicted_ms": self.predicted_ms, "latency_cached": self.cached}


class ReferenceStore:
    """Each target's reference base latencies, kept across searches in a directory on the target
    (``$AUTOPRUNE_CACHE_DIR/latency`` as the process starting the search sees it, default
    ``~/.cache/autoprune/latency``, ``~`` expanded on the target): one JSON file per signature (base layer shapes,
    timing settings, host). A search's reference is the lowest median measured so far: a quiet measurement is what
    describes the model, and every search on that target then shares it."""

    def __init__(self, directory: str | Path) -> None:
        self.path = str(directory)  # expanded where it is used: the latency actor's node

    @property
    def directory(self) -> Path:
        return Path(self.path).expanduser()

    @classmethod
    def default(cls) -> "ReferenceStore":
        """The store ``$AUTOPRUNE_CACHE_DIR`` (read here, in the process that starts the meter) names."""
        import os

        return cls(str(Path(os.environ.get("AUTOPRUNE_CACHE_DIR", "~/.cache/autoprune")) / "latency"))

    @classmethod
    def when(cls, shared: bool) -> "ReferenceStore | None":
        """The default store if references are ``shared`` across searches (``latency.shared_reference``), else None."""
        return cls.default() if shared else None

    def settle(self, signature: str, measured: LatencyReport) -> LatencyReport:
        """The reference to use: ``measured`` if it is the lowest seen (then stored), else the stored one."""
        path = self.directory / f"{signature}.json"
        try:
            stored = LatencyReport(**json.loads(path.read_text())["reference"])
        except (OSError, ValueError, KeyError, TypeError):
            stored = None
        if stored is not None and stored.latency_ms <= measured.latency_ms:
            return stored
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{time.time_ns()}.tmp")
            tmp.write_text(json.dumps({"reference": asdict(measured),
                                       "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}))
            tmp.replace(path)
        except OSError as e:
            raise AutopruneError(f"cannot write the shared latency reference in {self.directory}: "
                                 f"{e.strerror or e}; set AUTOPRUNE_CACHE_DIR to a directory writable on the "
                                 f"latency node, or latency.shared_reference: false") from None
        return measured


class Meter(Protocol):
    """What a trial needs from a latency target."""

    def reference(self) -> LatencyReport: ...

    def measure(self, candidate: nn.Module, channels: Channels) -> LatencyReport: ...


class LatencyMeter:
    """Times candidates against one base model on one target; cached by structure. Run it as a Ray actor
    (``start_meter``) so every trial of a search shares it, or in-process for a single candidate."""

    def __init__(self, base: nn.Module, spec: LatencySpec, structure: StructureModel,
                 table: LatencyTable | None = None, store: ReferenceStore | None = None,
                 gate: str | None = None) -> None:
        self.spec = spec
        self.gate = MeasurementGate(gate) if gate else None  # pauses training steps on this node while timing
        self.store = store  # the base's reference shared across searches on this target (None: this meter's own)
        self.base_name = type(base).__name__
        self.base = self._runnable(base)
        self.structure = structure
        self.table = table
        self._reference: LatencyReport | None = None
        self._measured_reference: float | None = None  # this meter's own timing of the base (the store may know a lower)
        self._cache: dict[str, LatencyReport] = {}
        self.model = LatencyModel(structure, table)
        self._observed: list[tuple[dict[str, int], float]] = []  # (structure, latency_ms), the base first
        self._errors: list[float] = []                   # relative prediction errors of measured structures
        self._hits = 0

    def _observe(self, channels: Channels, latency_ms: float, first: bool = False) -> None:
        entry = ({k: int(v) for k, v in channels.items()}, latency_ms)
        self._observed.insert(0, entry) if first else self._observed.append(entry)
        self.model.fit(self._observed)

    def reference(self) -> LatencyReport:
        """The base model timed alone (once, the first time it is asked for). With a reference store, the
        lowest median this target has measured for this base and these settings (the least disturbed)."""
        if self._reference is None:
            repeats = max(self.spec.reference_repeats, MIN_REPEATS)
            with self._exclusive():
                lat = measure_latency({"base": self.base}, self.spec.input_shape, batch_size=self.spec.batch_size,
                                      threads=self.spec.threads, device=self.spec.device, warmup=self.spec.warmup,
                                      repeats=repeats)["base"]
            measured = LatencyReport(lat.median_ms, lat.iqr_ms, 1.0, lat.median_ms, lat.median_ms, lat.median_ms,
                                     lat.median_ms)
            self._measured_reference = measured.latency_ms
            self._reference = self.store.settle(self._signature(), measured) if self.store else measured
            self._observe(self.structure.group_channels, self._reference.latency_ms, first=True)
        return self._reference

    def _signature(self) -> str:
        """What the reference depends on: the base's layer shapes, the timing settings and the host."""
        import hashlib
        import socket

        layers = [layer.config(1.0, 1.0) for layer in self.structure.layers]
        text = json.dumps([self.base_name, layers, asdict(self.spec), socket.gethostname()], default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def predict(self, channels: Channels) -> float:
        """Predicted latency (ms) of a structure, before it is pruned or measured."""
        self.reference()
        return self.model.predict(channels)

    def predictor(self) -> LatencyModel:
        """The latency model as fitted now (a copy the caller can predict with, locally)."""
        self.reference()
        return self.model

    def lookup(self, channels: Channels) -> LatencyReport | None:
        """The cached report of a structure timed before, or None."""
        hit = self._cache.get(structure_key(channels))
        if hit is None:
            return None
        self._hits += 1
        return LatencyReport(**{**asdict(hit), "cached": True})

    def measure(self, candidate: nn.Module, channels: Channels) -> LatencyReport:
        """Time ``candidate`` interleaved with the base; a structure timed before is answered from the cache."""
        cached = self.lookup(channels)
        if cached is not None:
            return cached
        reference = self.reference()
        predicted = self.predict(channels)
        if dict(channels) == self.structure.group_channels:  # the base's own structure: ratio 1 by definition
            report = LatencyReport(**{**asdict(reference), "predicted_ms": predicted})
        else:
            ratios, lat = self._ratios(self._runnable(candidate))
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            ratio = statistics.median(ratios)
            report = LatencyReport(ratio * reference.latency_ms, (q3 - q1) * reference.latency_ms, ratio,
                                   lat["candidate"], lat["base"], reference.latency_ms, predicted)
        self._cache[structure_key(channels)] = report
        self._observe(channels, report.latency_ms)
        self._errors.append(abs(predicted - report.latency_ms) / report.latency_ms)
        return report

    def _runnable(self, model: nn.Module) -> nn.Module:
        """``model`` in the runtime the target times: on its device for torch, exported for onnxruntime and int8."""
        if self.spec.runtime == "torch":
            return model.to(self.spec.device).eval()
        return in_runtime(model, self.spec.runtime, self.spec.input_shape, self.spec.threads)  # exports a copy

    def _exclusive(self) -> ContextManager[None]:
        return self.gate.measuring() if self.gate is not None else nullcontext()

    def _ratios(self, candidate: nn.Module) -> tuple[list[float], dict[str, float]]:
        """Per-round candidate / base ratios, timed back to back, in chunks of ``spec.repeats`` rounds until the
        median ratio is known to +-1.5 % (95 %; a robust standard error) or ``spec.max_rounds`` are spent."""
        ratios: list[float] = []
        medians: dict[str, list[float]] = {"base": [], "candidate": []}
        while True:
            with self._exclusive():
                lat = measure_latency({"base": self.base, "candidate": candidate}, self.spec.input_shape,
                                      batch_size=self.spec.batch_size, threads=self.spec.threads,
                                      device=self.spec.device, warmup=self.spec.warmup if not ratios else 2,
                                      repeats=self.spec.repeats)
            ratios += [c / b for c, b in zip(lat["candidate"].samples_ms, lat["base"].samples_ms)]
            for name in medians:
                medians[name].append(lat[name].median_ms)
            q1, median, q3 = statistics.quantiles(ratios, n=4)
            half_width = 1.96 * 1.2533 * (q3 - q1) / 1.349 / math.sqrt(len(ratios))
            if half_width <= 0.015 * median or len(ratios) >= self.spec.max_rounds:
                return ratios, {name: statistics.median(v) for name, v in medians.items()}

    def state(self) -> dict[str, Any]:
        """The reference and every timed structure, to persist in the run directory (``latency.json``)."""
        return {"spec": asdict(self.spec), "reference": asdict(self._reference) if self._reference else None,
                "measured_reference_ms": self._measured_reference, "cache": {k: asdict(v) for k, v in self._cache.items()}}

    def restore(self, state: dict[str, Any]) -> bool:
        """Continue from a saved ``state`` (a resumed search keeps its reference and its cache, so its figures
        stay comparable with those taken before); ignored, returning False, when it was taken with other
        settings."""
        if state.get("spec") != json.loads(json.dumps(asdict(self.spec))) or not state.get("reference"):
            return False
        self._reference = LatencyReport(**state["reference"])
        self._cache = {k: LatencyReport(**v) for k, v in state["cache"].items()}
        self._observed = [(dict(self.structure.group_channels), self._reference.latency_ms)]
        self._observed += [(json.loads(k), v.latency_ms) for k, v in self._cache.items()]
        self.model.fit(self._observed)
        return True

    def summary(self) -> dict[str, Any]:
        """What the meter did: structures timed, cache hits, the reference, and the predictor's error on the
        structures it measured: each predicted just before it was measured (``prediction_error``, the median
        relative error) and each left out of a fit on all the others (``loo_error``)."""
        ref = self._reference.latency_ms if self._reference else None
        return {"measured": len(self._cache), "cache_hits": self._hits, "reference_ms": ref,
                "measured_reference_ms": self._measured_reference,
                "prediction_error": median_or_none(self._errors), "predicted": len(self._errors),
                "loo_error": median_or_none(loo_errors(self.structure, self.table, self._observed)),
                "predictor": ("lookup table + " if self.table is not None else "") + self.model.fitted_on,
                "node": _node_id(), "device": self.spec.device, "threads": self.spec.threads,
                "runtime": self.spec.runtime}


def _node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def node_resources(node_id: str | None) -> dict[str, float]:
    """The resources a node of the connected Ray cluster advertises."""
    import ray

    return next((dict(n["Resources"]) for n in ray.nodes() if n["NodeID"] == node_id), {})


def _cpu_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).cpu()


class RemoteMeter:
    """A trial's view of the search's latency actor: one round trip per question."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def reference(self) -> LatencyReport:
        import ray

        return ray.get(self.handle.reference.remote())

    def measure(self, candidate: nn.Module, channels: Channels) -> LatencyReport:
        import ray

        cached = ray.get(self.handle.lookup.remote(dict(channels)))
        if cached is not None:
            return cached
        return ray.get(self.handle.measure.remote(_cpu_copy(candidate), dict(channels)))


def check_target(target: str | None) -> None:
    """A named target must be a custom resource some node of the connected Ray cluster advertises."""
    import ray

    if target and ray.cluster_resources().get(target, 0) <= 0:
        raise AutopruneError(f"config key 'latency.target': no node of the Ray cluster advertises the resource "
                             f"'{target}' (start one with: ray start --resources='{{\"{target}\": 1}}')")


def target_placement(target: str | None, node: str | None = None) -> dict[str, Any]:
    """Ray options that place a task or actor where candidates are timed: the node advertising ``target``, else
    ``node``, else the head node, where no trial trains (hard affinity: Ray's soft affinity placed it on workers)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check_target(target)
    if target:
        return {"resources": {target: 1}}
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node or _head_node_id(), soft=False)}


def start_meter(base: nn.Module, spec: LatencySpec, structure: StructureModel, table: LatencyTable | None,
                target: str | None, state: dict[str, Any] | None = None,
                store: ReferenceStore | None = None, gate: str | None = None,
                node: str | None = None) -> tuple[Any, bool]:
    """Start the search's latency actor (on the node advertising ``target`` when one is named, else on ``node``,
    else on the head node, which outlives any worker; hard affinity: Ray's soft affinity placed it on workers),
    restore a saved ``state`` if it fits, else time the reference, before any trial runs. Returns the handle and
    whether the state was restored.

    On CUDA the actor asks Ray for no GPU (a fraction would take a trial's share) and times on the node's first
    device, which Ray 2.60 leaves visible to it; trials on that node pause while it times (the gate)."""
    import ray

    options: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 1, **target_placement(target, node)}
    if spec.device.startswith("cuda"):
        options["runtime_env"] = {"env_vars": {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}}  # keep the GPU visible
        probe = {k: v for k, v in options.items() if k in ("resources", "scheduling_strategy", "runtime_env")}
        where, available = ray.get(ray.remote(_cuda_here).options(num_cpus=0, **probe).remote())
        if not available:
            raise AutopruneError(f"config key 'latency.device': candidates are timed on CUDA, but torch on {where} "
                                 f"has no CUDA device: set latency.device: cpu, or install a CUDA build of torch there")
    handle: Any = ray.remote(LatencyMeter).options(**options).remote(_cpu_copy(base), spec, structure, table,
                                                                     store, gate)
    restored = bool(state) and bool(ray.get(handle.restore.remote(state)))
    ray.get(handle.reference.remote())
    return handle, restored


def _cuda_here() -> tuple[str, bool]:
    import socket

    return socket.gethostname(), torch.cuda.is_available()


def _head_node_id() -> str:
    """The live head node's id."""
    import ray

    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return str(node["NodeID"])
    raise AutopruneError("the Ray cluster has no live head node to run the latency actor on")


def local_meter(base: nn.Module, example_input: torch.Tensor, groups: list[PrunableGroup], spec: LatencySpec,
                table: LatencyTable | None = None, store: ReferenceStore | None = None) -> LatencyMeter:
    """An in-process meter (single candidates, ``autoprune space``)."""
    return LatencyMeter(_cpu_copy(base), spec, StructureModel.from_model(base, example_input, groups), table,
                        store)
