"""Parquet tables: their schemas, atomic writes, and opening them as pyarrow datasets.

A results directory (a path or a URI, see :mod:`tlsearch.storage`) holds one folder per search
(``<results>/<experiment>/``) with three tables: ``experiment.parquet`` (one row), ``trials.parquet`` (one row
per trial) and ``epochs.parquet`` (one row per trial per epoch, cost cumulative), and ``confirm.parquet`` once
``tlsearch confirm`` ran. Readers always pass the explicit schemas below, so files written by an
older tlsearch with fewer columns still read, the missing columns as nulls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from tlsearch import storage
from tlsearch.config import DIMENSIONS
from tlsearch.errors import ResultsError

TABLES = ("experiments", "trials", "epochs", "confirm")
SEARCH_TABLES = TABLES[:3]  # what every search writes; confirm.parquet comes from `tlsearch confirm`
FILE_NAMES = {"experiments": "experiment.parquet", "trials": "trials.parquet", "epochs": "epochs.parquet",
              "confirm": "confirm.parquet"}

CONFIG_FIELDS = [pa.field(name, pa.type_for_alias(kind)) for name, kind in DIMENSIONS.items()]
# What a trial reports every epoch (validation only: the search never sees the test set).
METRICS = ("val_acc", "val_loss", "train_loss")
COSTS = ("wall_s", "device_s", "samples_seen", "train_flops")
COST_FIELDS = [
    pa.field("wall_s", pa.float64()),  # cumulative wall seconds of training and evaluation (start-up apart)
    pa.field("device_s", pa.float64()),  # wall_s x devices held (CPUs or GPUs of all workers)
    pa.field("samples_seen", pa.int64()),
    pa.field("train_flops", pa.float64()),  # frozen-aware: backward only where parameters train
]
STARTUP_FIELD = pa.field("startup_s", pa.float64())  # trial start to its first training step, device-seconds
SHARED_FIELD = pa.field("shared_device_s", pa.float64())  # its share of passes shared with other trials

EXPERIMENTS = pa.schema([
    pa.field("experiment", pa.string(), nullable=False),
    pa.field("created_at", pa.timestamp("s", tz="UTC")),
    pa.field("model", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("weights", pa.string()),
    pa.field("search_space", pa.string()),  # JSON
    pa.field("config", pa.string()),  # JSON of the whole SearchConfig
    pa.field("seed", pa.int64()),
    pa.field("trials", pa.int32()),
    pa.field("max_epochs", pa.int32()),
    pa.field("grace_period", pa.int32()),
    pa.field("reduction_factor", pa.int32()),
    pa.field("num_groups", pa.int32()),
    pa.field("train_pool_size", pa.int64()),
    pa.field("val_size", pa.int64()),
    pa.field("test_size", pa.int64()),
    pa.field("concurrency", pa.int32()),
    pa.field("wall_s", pa.float64()),
    pa.field("best_trial_id", pa.string()),
    pa.field("best_val_acc", pa.float64()),
    pa.field("best_test_acc", pa.float64()),  # the best trial's best checkpoint on the held-out test set
    pa.field("source_device_s", pa.float64()),  # what pretraining the source model cost (its sidecar), if known
    pa.field("source_train_images", pa.int64()),
    pa.field("tlsearch_version", pa.string()),
    pa.field("ray_version", pa.string()),
    pa.field("torch_version", pa.string()),
    pa.field("timm_version", pa.string()),
    pa.field("optuna_version", pa.string()),
    pa.field("git_commit", pa.string()),
])

TRIALS = pa.schema([
    pa.field("experiment", pa.string(), nullable=False),
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("status", pa.string()),  # completed | stopped (by ASHA) | error | timeout
    *CONFIG_FIELDS,
    pa.field("num_groups", pa.int32()),
    pa.field("train_size", pa.int64()),
    pa.field("trainable_params", pa.int64()),
    pa.field("flops_per_sample", pa.float64()),
    pa.field("feature_cache", pa.string()),  # off | miss (computed the features) | hit (reused them)
    pa.field("data_loading", pa.string()),  # memory (decoded once, object store) | stream (Ray Data)
    pa.field("augment", pa.string()),  # none | light | strong (training images only)
    pa.field("epochs", pa.int32()),
    pa.field("best_val_acc", pa.float64()),
    pa.field("best_epoch", pa.int32()),
    pa.field("last_val_acc", pa.float64()),
    pa.field("last_val_loss", pa.float64()),
    pa.field("last_train_loss", pa.float64()),
    pa.field("test_acc", pa.float64()),  # best_epoch's checkpoint on the test set; null where not evaluated
    pa.field("test_loss", pa.float64()),
    *COST_FIELDS,
    STARTUP_FIELD,
    SHARED_FIELD,
    pa.field("node_id", pa.string()),  # the Ray node of the trial's rank-0 worker (last epoch)
    pa.field("error", pa.string()),
    pa.field("checkpoint_path", pa.string()),
])

EPOCHS = pa.schema([
    pa.field("experiment", pa.string(), nullable=False),
    pa.field("trial_id", pa.string(), nullable=False),
    *CONFIG_FIELDS,
    pa.field("epoch", pa.int32(), nullable=False),
    *(pa.field(name, pa.float64()) for name in METRICS),
    *COST_FIELDS,
    STARTUP_FIELD,
    SHARED_FIELD,
    pa.field("node_id", pa.string()),
])

# tlsearch confirm: the best configuration of every (init, data_fraction) retrained ``repeats`` times to
# max_epochs without early stopping; one row per run per epoch, validation and test every epoch.
CONFIRM = pa.schema([
    pa.field("experiment", pa.string(), nullable=False),
    pa.field("source_trial_id", pa.string()),  # the search trial whose configuration is repeated
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("repeat", pa.int32()),
    pa.field("seed", pa.int64()),
    *CONFIG_FIELDS,
    pa.field("epoch", pa.int32(), nullable=False),
    *(pa.field(name, pa.float64()) for name in METRICS),
    pa.field("test_acc", pa.float64()),
    pa.field("test_loss", pa.float64()),
    *COST_FIELDS,
    STARTUP_FIELD,
    SHARED_FIELD,
    pa.field("node_id", pa.string()),
])

SCHEMAS = {"experiments": EXPERIMENTS, "trials": TRIALS, "epochs": EPOCHS, "confirm": CONFIRM}


def best_trial(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The one rule for "the best trial", used everywhere (experiment row, summary, report, export, confirm).

    The highest ``best_val_acc`` (validation only: never the test set); a tie goes to the cheaper trial (fewer
    ``device_s``), then to the smaller ``trial_id`` so the choice is deterministic. None when no trial reported.
    """
    done = [dict(r) for r in rows if r.get("best_val_acc") is not None]
    if not done:
        return None
    return min(done, key=lambda r: (-float(r["best_val_acc"]), float(r.get("device_s") or 0.0), str(r["trial_id"])))


def to_table(name: str, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts) as a table of the named schema; missing keys become nulls, extra keys are an error."""
    schema = SCHEMAS[name]
    rows = list(rows)
    extra = {k for row in rows for k in row} - set(schema.names)
    if extra:
        raise ResultsError(f"{name}: unknown column(s) {sorted(extra)}; valid: {schema.names}")
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def write_atomic(table: pa.Table, uri: str | Path) -> str:
    """Write ``table`` as Parquet to a path or URI so that no reader ever sees a partial file (see storage)."""
    return storage.write_table(table, uri)


def write_search(folder: str | Path, tables: Mapping[str, pa.Table]) -> dict[str, str]:
    """Write one search's three tables into its folder (a path, or a URI such as s3://bucket/results/name)."""
    return {name: write_atomic(tables[name], storage.join(folder, FILE_NAMES[name])) for name in SEARCH_TABLES}


@dataclass(frozen=True)
class ResultSet:
    """The tables of a results directory (or of one search folder) as pyarrow datasets."""

    experiments: pads.Dataset
    trials: pads.Dataset
    epochs: pads.Dataset
    confirm: pads.Dataset  # empty until `tlsearch confirm` ran

    def table(self, name: str) -> pads.Dataset:
        if name not in TABLES:
            raise ResultsError(f"unknown table {name!r}; valid: {', '.join(TABLES)}")
        return getattr(self, name)


def files(location: str | Path, name: str) -> list[str]:
    """The Parquet files of table ``name`` under a results directory or a single search folder (paths in its
    filesystem: what ``storage.filesystem(location)`` opens).

    Only ``<location>/<file>`` or ``<location>/<experiment>/<file>`` count: one listing per folder, never a walk
    through Ray's state and checkpoints (thousands of objects on a bucket).
    """
    file_name = FILE_NAMES[name]
    own = [i.path for i in storage.list_files(location, recursive=False) if i.base_name == file_name]
    if own:
        return own
    return [i.path for folder in storage.list_dirs(location)
            for i in storage.list_files(storage.join(location, folder), recursive=False) if i.base_name == file_name]


def open(location: str | Path) -> ResultSet:  # noqa: A001 - mirrors pyarrow.dataset naming: tlsearch.results.open
    """Open a results directory (a path or a URI: s3://, gs://): every search's tables, with the explicit schemas.

    A table no search has written yet (``confirm`` before ``tlsearch confirm``) opens as an empty dataset.
    """
    fs, _ = storage.filesystem(location)
    kind = storage.info(location).type
    if kind != pafs.FileType.Directory:
        what = "does not exist" if kind == pafs.FileType.NotFound else "is a file, not a folder"
        raise ResultsError(f"results directory {location} {what}; give the folder `tlsearch run` wrote to")
    found = {name: files(location, name) for name in TABLES}
    if not any(found.values()):
        raise ResultsError(f"no tlsearch tables under {location}; expected <experiment>/trials.parquet and friends")
    try:
        sets = {name: pads.dataset(found[name], schema=SCHEMAS[name], format="parquet", filesystem=fs)
                for name in TABLES}
    except (pa.ArrowInvalid, OSError) as exc:
        raise ResultsError(f"cannot read the tables under {location}: {storage.one_line(exc)}") from None
    return ResultSet(**sets)


def best_per_arm_and_fraction(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`best_trial` of every (init, data_fraction), in that order (arms by name, fractions ascending)."""
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((str(row.get("init")), float(row.get("data_fraction") or 0.0)), []).append(row)
    best = [best_trial(group) for _, group in sorted(groups.items())]
    return [b for b in best if b is not None]
