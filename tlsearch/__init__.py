"""tlsearch: measure what transfer learning saves, with Ray Tune, Optuna, ASHA, Ray Train and timm.

The public API is re-exported here. Names that need torch (``run_search``, ``pretrain``) are imported on first
use, so ``import tlsearch`` stays light in processes that never train (the CLI's help, query, report).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tlsearch._version import __version__
from tlsearch.config import Param, SearchConfig, SpaceConfig, build_config
from tlsearch.errors import ConfigError, DataError, ModelError, ResultsError, TLSearchError, WeightsError

if TYPE_CHECKING:
    from tlsearch.search import Outcome, run_search
    from tlsearch.source import pretrain

_LAZY = {"pretrain": "tlsearch.source", "Outcome": "tlsearch.search", "run_search": "tlsearch.search"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tlsearch' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DataError",
    "ModelError",
    "Outcome",
    "Param",
    "ResultsError",
    "SearchConfig",
    "SpaceConfig",
    "TLSearchError",
    "WeightsError",
    "__version__",
    "build_config",
    "pretrain",
    "run_search",
]
