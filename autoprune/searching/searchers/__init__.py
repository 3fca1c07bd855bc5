"""Searchers that propose per-layer sparsity policies; ``make_searcher(name, space, ...)`` builds one."""
from __future__ import annotations

import importlib
from typing import Any

from autoprune.errors import AutopruneError
from autoprune.searching.registry import SEARCHERS
from autoprune.searching.searchers.base import Outcome, Searcher


def make_searcher(name: str, space: Any, **kwargs: Any) -> Searcher:
    """Instantiate the searcher called ``name`` over ``space``.

    ``kwargs``: ``seed``, ``warm_start``, ``objectives`` (``autoprune.objectives.Objective``s, in order) and
    settings such as ``population``; ``study`` (a ``StudyJournal``) keeps an Optuna-backed searcher's study
    in the run directory, where a resumed search loads it (searchers without a study ignore it).
    """
    if name not in SEARCHERS:
        raise AutopruneError(f"unknown searcher '{name}': use one of {', '.join(SEARCHERS)}")
    module, _, cls = SEARCHERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(space, **kwargs)


__all__ = ["SEARCHERS", "Outcome", "Searcher", "make_searcher"]
