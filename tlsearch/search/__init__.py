"""A search along its seams: ``prepare`` (before Ray), ``session`` (where it runs), ``trial`` (one Train run),
``tables`` (ResultGrid to Parquet rows), ``export`` (the best model), ``resume`` and ``run`` (the loop).

Names are imported on first use: a trial's Tune function imports ``tlsearch.search.trial`` and must not pay for
``prepare`` and ``run`` (torch, timm, the data readers), which only the driver needs. The function ``prepare`` is
not re-exported: once its module is imported, ``tlsearch.search.prepare`` names the module; import it from there.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tlsearch.search.prepare import Plan
    from tlsearch.search.run import Outcome, run_search
    from tlsearch.search.session import Resources, plan_resources, start_ray

_HOMES = {"Plan": "prepare", "Outcome": "run", "run_search": "run", "Resources": "session",
          "plan_resources": "session", "start_ray": "session"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"tlsearch.search.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'tlsearch.search' has no attribute {name!r}")


__all__ = ["Outcome", "Plan", "Resources", "plan_resources", "run_search", "start_ray"]
