"""The search's latency actor: started (continuing the run's ``latency.json``), saved, summarised."""
from __future__ import annotations

import json
from typing import Any, Callable

from autoprune.config import SearchConfig
from autoprune.errors import AutopruneError
from autoprune.measure.latency import ReferenceStore, node_resources, start_meter
from autoprune.measure.latency_table import LatencyTable
from autoprune.measure.runtimes import in_runtime
from autoprune.measure.structure import StructureModel
from autoprune.searching.capacity import release_gpu_node, wait_for_gpu_node
from autoprune.searching.storage import RunDir
from autoprune.searching.trial import TrialSettings

Echo = Callable[[str], None]
LATENCY_FILE = "latency.json"  # the latency actor's reference and timed structures, so --resume continues them


def start_latency_meter(config: SearchConfig, run_dir: RunDir, base_model: Any, input_shape: tuple[int, ...],
                        structure: StructureModel, settings: TrialSettings, echo: Echo) -> tuple[Any, bool]:
    """The search's latency actor on ``latency.target`` (the head node when null; a GPU node to time on CUDA),
    continuing the run directory's ``latency.json`` (reference and timed structures) when it was taken with the
    same settings; and whether the autoscaler was asked for its GPU node (``release_gpu_node`` when done)."""
    table = LatencyTable.load(config["latency.table"]) if config["latency.table"] else None
    spec = settings.latency_spec(input_shape)
    if spec.runtime != "torch":  # the actor converts every candidate: refuse a model it cannot convert, here
        try:
            in_runtime(base_model, spec.runtime, input_shape, spec.threads)
        except AutopruneError as e:
            raise AutopruneError(f"config key 'latency.runtime': {spec.runtime} times the model's ONNX export, "
                                 f"but {e}") from None
    state = json.loads(run_dir.read_text(LATENCY_FILE)) if run_dir.exists(LATENCY_FILE) else None
    node, requested = None, False
    if spec.device == "cuda" and not config["latency.target"]:  # a GPU node, the head if it has one
        node, requested = wait_for_gpu_node(config, echo)
    try:
        meter, restored = start_meter(base_model, spec, structure, table, config["latency.target"], state,
                                      ReferenceStore.when(config["latency.shared_reference"]), settings.gate,
                                      node)
    except BaseException:
        if requested:
            release_gpu_node()
        raise
    if state is not None:
        echo(f"latency: continuing {LATENCY_FILE} (same reference and cache)" if restored else
             f"latency: {LATENCY_FILE} was timed with other settings: timing afresh")
    return meter, requested


def save_latency_state(run_dir: RunDir, meter: Any, echo: Echo) -> None:
    """Write the actor's reference and cache to ``latency.json``; a dead actor is reported, not raised (this runs
    while the search stops, whatever stopped it)."""
    import ray

    try:
        state = ray.get(meter.state.remote())
    except ray.exceptions.RayError as e:
        echo(f"latency: {LATENCY_FILE} not updated, the latency actor is gone: {str(e).splitlines()[0]}")
        return
    run_dir.write_text(LATENCY_FILE, json.dumps(state) + "\n")


def latency_summary(summary: dict[str, Any]) -> str:
    custom = sorted(k for k in node_resources(summary["node"]) if k not in ("CPU", "GPU", "memory", "object_store_memory")
                    and not k.startswith("node:") and not k.startswith("accelerator_type"))

    def pct(error: float | None) -> str:
        return f"{100 * error:.1f} %" if error is not None else "n/a"

    return (f"latency: {summary['measured']} structures timed, {summary['cache_hits']} answered from the cache, on "
            f"node {str(summary['node'])[:12]} (resources: {', '.join(custom) or 'none custom'}; {summary['device']}, "
            f"{summary['threads']} thread(s), {summary['runtime']}); reference base {summary['reference_ms']:.3f} ms "
            f"(timed this run: {summary['measured_reference_ms'] or float('nan'):.3f} ms)\n"
            f"latency predictor ({summary['predictor']}, {summary['runtime']}): median absolute error "
            f"{pct(summary['prediction_error'])} over {summary['predicted']} structures predicted before they were "
            f"timed; {pct(summary['loo_error'])} leaving each timed structure out of the fit")
