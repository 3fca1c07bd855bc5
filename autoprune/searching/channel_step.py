"""``space.round_to: auto``: the channel step of the latency runtime, measured once per run and kept with it.

The step is measured where the search times its candidates (``autoprune.measure.steps``), when the run starts, and
written to the run's marker (``autoprune-run.json``, key ``round_to``): a resumed search and ``autoprune finalize``
prune with the step the run searched with, not one measured again.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from autoprune.config import AUTO, SearchConfig
from autoprune.errors import AutopruneError
from autoprune.measure.steps import StepReport, probe_on_target, probe_step
from autoprune.searching.capacity import latency_device
from autoprune.searching.results import MARKER
from autoprune.searching.storage import RunDir

Echo = Callable[[str], None]
Probe = Callable[[str, int, "str | None"], StepReport]
KEY = "round_to"


def latency_threads(config: SearchConfig) -> int:
    """The threads candidates are timed with (``latency.threads``, else ``resources.cpu``)."""
    return int(config["latency.threads"] or max(1, int(config["resources.cpu"])))


def check_measurable(config: SearchConfig) -> None:
    if latency_device(config) != "cpu":
        raise AutopruneError(f"config key 'space.round_to': auto measures the channel step of a CPU runtime, but "
                             f"candidates are timed on {latency_device(config)}: give the multiple (e.g. 8)")


def resolve_for_run(config: SearchConfig, run: RunDir, marker: dict[str, Any], echo: Echo,
                    probe: Probe = probe_on_target) -> SearchConfig:
    """``config`` with ``space.round_to`` an integer: as given, the run's measured step (``marker``), or measured now
    by ``probe`` on the latency node and written to the marker."""
    if config["space.round_to"] != AUTO:
        return config
    step = marker.get(KEY)
    if step is None:
        check_measurable(config)
        report = probe(config["latency.runtime"], latency_threads(config), config["latency.target"])
        step = marker[KEY] = report.step
        run.write_text(MARKER, json.dumps(marker) + "\n")
        echo(f"space.round_to auto: {report.line()}")
    else:
        echo(f"space.round_to auto: {step}, the channel step measured when the run started ({MARKER})")
    return config.with_value("space.round_to", int(step))


def resolve_of_run(config: SearchConfig, marker: dict[str, Any]) -> SearchConfig:
    """``config`` (a run's config.yaml) with the step the run searched with."""
    if config["space.round_to"] != AUTO:
        return config
    if marker.get(KEY) is None:
        raise AutopruneError(f"the run's config says space.round_to: auto but its {MARKER} holds no measured step: "
                             f"the search never started")
    return config.with_value("space.round_to", int(marker[KEY]))


def resolve_here(config: SearchConfig, echo: Echo) -> SearchConfig:
    """``config`` with the step measured in this process (``autoprune space``, ``latency-table``: they time here)."""
    if config["space.round_to"] != AUTO:
        return config
    check_measurable(config)
    report = probe_step(config["latency.runtime"], latency_threads(config))
    echo(f"space.round_to auto: {report.line()}")
    return config.with_value("space.round_to", report.step)
