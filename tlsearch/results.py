"""Parquet tables: their schemas, atomic writes, and opening them as pyarrow datasets.

A results directory holds one folder per search (``<results>/<experiment>/``) with three tables:
``experiment.parquet`` (one row), ``trials.parquet`` (one row per trial) and ``epochs.parquet`` (one row per
trial per epoch, cost cumulative). Readers always pass the explicit schemas below, so files written by an
older tlsearch with fewer columns still read, the missing columns as nulls.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from tlsearch._io import replacing
from tlsearch.errors import ResultsError

TABLES = ("experiments", "trials", "epochs")
FILE_NAMES = {"experiments": "experiment.parquet", "trials": "trials.parquet", "epochs": "epochs.parquet"}

CONFIG_FIELDS = [
    pa.field("init", pa.string()),
    pa.field("freeze_depth", pa.int32()),
    pa.field("head_lr", pa.float64()),
    pa.field("backbone_lr", pa.float64()),
    pa.field("data_fraction", pa.float64()),
]
COST_FIELDS = [
    pa.field("wall_s", pa.float64()),
    pa.field("device_s", pa.float64()),
    pa.field("samples_seen", pa.int64()),
    pa.field("train_flops", pa.float64()),
]

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
    pa.field("concurrency", pa.int32()),
    pa.field("wall_s", pa.float64()),
    pa.field("best_trial_id", pa.string()),
    pa.field("best_val_acc", pa.float64()),
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
    pa.field("status", pa.string()),  # completed | stopped (by ASHA) | error
    *CONFIG_FIELDS,
    pa.field("num_groups", pa.int32()),
    pa.field("train_size", pa.int64()),
    pa.field("trainable_params", pa.int64()),
    pa.field("flops_per_sample", pa.float64()),
    pa.field("feature_cache", pa.string()),  # off | miss (computed the features) | hit (reused them)
    pa.field("epochs", pa.int32()),
    pa.field("best_val_acc", pa.float64()),
    pa.field("best_epoch", pa.int32()),
    pa.field("last_val_acc", pa.float64()),
    pa.field("last_val_loss", pa.float64()),
    pa.field("last_train_loss", pa.float64()),
    *COST_FIELDS,
    pa.field("node_id", pa.string()),  # the Ray node of the trial's rank-0 worker (last epoch)
    pa.field("error", pa.string()),
    pa.field("checkpoint_path", pa.string()),
])

EPOCHS = pa.schema([
    pa.field("experiment", pa.string(), nullable=False),
    pa.field("trial_id", pa.string(), nullable=False),
    *CONFIG_FIELDS,
    pa.field("epoch", pa.int32(), nullable=False),
    pa.field("val_acc", pa.float64()),
    pa.field("val_loss", pa.float64()),
    pa.field("train_loss", pa.float64()),
    *COST_FIELDS,
    pa.field("node_id", pa.string()),
])

SCHEMAS = {"experiments": EXPERIMENTS, "trials": TRIALS, "epochs": EPOCHS}


def to_table(name: str, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts) as a table of the named schema; missing keys become nulls, extra keys are an error."""
    schema = SCHEMAS[name]
    rows = list(rows)
    extra = {k for row in rows for k in row} - set(schema.names)
    if extra:
        raise ResultsError(f"{name}: unknown column(s) {sorted(extra)}; valid: {schema.names}")
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def write_atomic(table: pa.Table, path: str | Path) -> Path:
    """Write ``table`` to ``path`` so that no reader ever sees a partial file under the final name.

    A temporary file in the same folder is written, flushed to disk, read back and checked, then renamed.
    """
    path = Path(path)
    try:
        with replacing(path) as tmp:
            with pa.OSFile(str(tmp), "wb") as sink:
                pq.write_table(table, sink)
            with builtins.open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            written = pq.read_metadata(tmp)
            if written.num_rows != table.num_rows or pq.read_schema(tmp).names != table.schema.names:
                raise ResultsError(f"{path}: the written file does not read back as written")
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def write_search(folder: str | Path, tables: Mapping[str, pa.Table]) -> dict[str, Path]:
    """Write one search's three tables into its folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {name: write_atomic(tables[name], folder / FILE_NAMES[name]) for name in TABLES}


@dataclass(frozen=True)
class ResultSet:
    """The three tables of a results directory (or of one search folder) as pyarrow datasets."""

    experiments: pads.Dataset
    trials: pads.Dataset
    epochs: pads.Dataset

    def table(self, name: str) -> pads.Dataset:
        if name not in TABLES:
            raise ResultsError(f"unknown table {name!r}; valid: {', '.join(TABLES)}")
        return getattr(self, name)


def files(path: str | Path, name: str) -> list[str]:
    """The Parquet files of table ``name`` under a results directory or a single search folder."""
    path = Path(path)
    file_name = FILE_NAMES[name]
    if (path / file_name).is_file():
        return [str(path / file_name)]
    return sorted(str(p) for p in path.glob(f"*/{file_name}"))


def open(path: str | Path) -> ResultSet:  # noqa: A001 - mirrors pyarrow.dataset naming: tlsearch.results.open
    """Open a results directory: every search's tables, read with the explicit schemas."""
    path = Path(path)
    if not path.is_dir():
        raise ResultsError(f"results directory {path} does not exist")
    found = {name: files(path, name) for name in TABLES}
    if not any(found.values()):
        raise ResultsError(f"no tlsearch tables under {path}; expected <experiment>/trials.parquet and friends")
    try:
        sets = {name: pads.dataset(found[name], schema=SCHEMAS[name], format="parquet") for name in TABLES}
    except (pa.ArrowInvalid, OSError) as exc:
        raise ResultsError(f"cannot read the tables under {path}: {exc}") from None
    return ResultSet(**sets)
