"""``space.round_to: auto``: the channel step of the latency runtime, measured once per run and kept with it.

The step is measured where the search times its candidates (``autoprune.measure.steps``), when the run starts, and
written to the run's marker (``autoprune-run.json``, keys ``round_to`` and ``small_step``): a resumed search and
``autoprune finalize`` prune with the steps the run searched with, not ones measured again.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from autoprune.config import AUTO, SearchConfig
from autoprune.errors import AutopruneError
from autoprune.measure.steps import StepReport, probe_on_target, probe_step
from autoprune.searching.capacity import latency_device, latency_threads
from autoprune.searching.results import MARKER
from autoprune.searching.storage import RunDir

Echo = Callable[[str], None]
Probe = Callable[[str, int, int, "str | None"], StepReport]


def check_measurable(config: SearchConfig) -> None:
    if latency_device(config) != "cpu":
        raise AutopruneError(f"config key 'space.round_to': auto measures the channel step of a CPU runtime, but "
                             f"candidates are timed on {latency_device(config)}: give the multiple (e.g. 8)")


def resolve_for_run(config: SearchConfig, run: RunDir, marker: dict[str, Any], echo: Echo, resume: bool = False,
                    probe: Probe = probe_on_target) -> SearchConfig:
    """``config`` with ``space.round_to`` an integer: as given, the run's measured steps (``marker``), or measured now
    by ``probe`` on the latency node and written to the marker. A resumed run keeps the steps it searched with: a
    config that names others is refused."""
    measured = "round_to" in marker
    if config["space.round_to"] != AUTO:
        steps = (config["space.round_to"], config["space.small_step"])
        if measured and steps != (marker["round_to"], marker.get("small_step")):
            raise AutopruneError(f"config key 'space.round_to': run '{run}' searched with the measured steps "
                                 f"{marker['round_to']} (below it {marker.get('small_step')}), not {steps[0]} (below "
                                 f"it {steps[1]}); resume it with space.round_to: auto")
        return config
    if resume and not measured:
        raise AutopruneError(f"config key 'space.round_to': run '{run}' was not searched with auto (no measured step "
                             f"in its {MARKER}); resume it with the round_to of its config.yaml")
    if not measured:
        check_measurable(config)
        report = probe(config["latency.runtime"], latency_threads(config), config["latency.batch_size"],
                       config["latency.target"])
        marker.update(round_to=report.step, small_step=report.small_step)
        run.write_text(MARKER, json.dumps(marker) + "\n")
        echo(f"space.round_to auto: {report.line()}")
    else:
        echo(f"space.round_to auto: {marker['round_to']}, below it {marker.get('small_step')}, the channel steps "
             f"measured when the run started ({MARKER})")
    return _with_steps(config, marker)


def resolve_of_run(config: SearchConfig, marker: dict[str, Any]) -> SearchConfig:
    """``config`` (a run's config.yaml) with the step the run searched with."""
    if config["space.round_to"] != AUTO:
        return config
    if marker.get("round_to") is None:
        raise AutopruneError(f"the run's config says space.round_to: auto but its {MARKER} holds no measured step: "
                             f"the search never started")
    return _with_steps(config, marker)


def resolve_here(config: SearchConfig, echo: Echo) -> SearchConfig:
    """``config`` with the step measured in this process (``autoprune space``, ``latency-table``: they time here)."""
    if config["space.round_to"] != AUTO:
        return config
    check_measurable(config)
    report = probe_step(config["latency.runtime"], latency_threads(config), config["latency.batch_size"])
    echo(f"space.round_to auto: {report.line()}")
    return _with_steps(config, {"round_to": report.step, "small_step": report.small_step})


def _with_steps(config: SearchConfig, steps: dict[str, Any]) -> SearchConfig:
    """``config`` with ``space.round_to`` and ``space.small_step`` as measured (``steps``)."""
    small = steps.get("small_step")
    return config.with_value("space.round_to", int(steps["round_to"])).with_value(
        "space.small_step", int(small) if small is not None else None)
