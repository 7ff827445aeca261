"""The exception root of tlsearch.

Every error a user can cause derives from :class:`TLSearchError`. Its message says what was received and what
would have been valid, in one line, so the CLI can print it as is and exit with code 2.
"""

from __future__ import annotations


class TLSearchError(Exception):
    """Root of every tlsearch error caused by input (config, model, data, weights, results)."""


class ConfigError(TLSearchError, ValueError):
    """A configuration value or file is invalid."""


class ModelError(TLSearchError):
    """The model name is unknown or the model cannot be built as asked."""


class WeightsError(TLSearchError):
    """Pretrained weights are missing, unreadable or do not fit the model."""


class DataError(TLSearchError):
    """A dataset is missing, empty, has too few classes or holds an unreadable image."""


class ResultsError(TLSearchError):
    """A results directory or table cannot be written or read."""


class ClusterError(TLSearchError):
    """A cluster address, token, storage path, cluster file or job request is unusable."""
