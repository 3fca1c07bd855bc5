"""User code named by import path, ``package.module:name`` (models, tasks, data factories)."""
from __future__ import annotations

import importlib
from typing import Any

from autoprune.errors import AutopruneError


def resolve(path: str, what: str) -> Any:
    """The object at ``path``; ``what`` names it in errors (e.g. "config key 'task'")."""
    module_name, sep, name = str(path).partition(":")
    if not sep or not module_name or not name:
        raise AutopruneError(f"{what}: '{path}' is not 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise AutopruneError(f"{what}: cannot import module '{module_name}' ({e}); install it or add its directory "
                             f"to PYTHONPATH") from None
    if not hasattr(module, name):
        raise AutopruneError(f"{what}: '{name}' not found in module '{module_name}'")
    return getattr(module, name)
