"""tlsearch: measure what transfer learning saves, with Ray Tune, Optuna, ASHA, Ray Train and timm."""

from tlsearch.config import Param, SearchConfig, SpaceConfig, build_config
from tlsearch.errors import ConfigError, DataError, ModelError, ResultsError, TLSearchError, WeightsError
from tlsearch.pretrain import pretrain
from tlsearch.search import Outcome, run_search

__version__ = "0.1.0"

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
    "build_config",
    "pretrain",
    "run_search",
]
