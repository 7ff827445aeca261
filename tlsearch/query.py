"""``tlsearch query``: SQL over the tables, run by DuckDB on the Arrow datasets.

The tables are registered under their names, ``experiments``, ``trials``, ``epochs`` and ``confirm`` (empty until
``tlsearch confirm`` ran), straight from :func:`tlsearch.results.open`, so a results folder on ``s3://`` or
``gs://`` is queried the same way. ``--where``, ``--columns``, ``--sort`` and ``--limit`` are shorthands that build
the SQL; the engine parses the expressions. Queries are read-only: file access is off once the tables are in.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from tlsearch import results, storage
from tlsearch.errors import TLSearchError

FORMATS = ("table", "csv", "json", "parquet")
# What fits a terminal: the columns that matter per table (``--columns all`` shows every one).
DEFAULT_COLUMNS = {
    "trials": ("trial_id", "status", "init", "model", "freeze_depth", "head_lr", "backbone_lr", "data_fraction",
               "best_val_acc", "test_acc", "device_s"),
    "epochs": ("trial_id", "init", "freeze_depth", "data_fraction", "epoch", "val_acc", "val_loss", "train_loss",
               "device_s", "train_flops"),
    "experiments": ("experiment", "created_at", "model", "dataset", "trials", "max_epochs", "best_trial_id",
                    "best_val_acc", "best_test_acc", "wall_s"),
    "confirm": ("run_id", "init", "model", "data_fraction", "repeat", "seed", "epoch", "val_acc", "test_acc",
                "device_s", "startup_s"),
}


class QueryError(TLSearchError, ValueError):
    """SQL, a column list, a sort key or an output option is invalid."""


def tables_help() -> str:
    """The tables and their columns, for error messages."""
    return "; ".join(f"{name}({', '.join(results.SCHEMAS[name].names)})" for name in results.TABLES)


def run_sql(location: str | Path, sql: str) -> pa.Table:
    """Run one SQL statement over the tables of a results folder (path or URI) and return the result."""
    import duckdb

    if not sql.strip():
        raise QueryError("empty SQL; e.g. \"SELECT init, data_fraction, max(best_val_acc) FROM trials GROUP BY ALL\"")
    tables = results.open(location)
    con = duckdb.connect()
    try:
        for name in results.TABLES:
            con.register(name, tables.table(name))
        con.execute("SET enable_external_access = false")
        reader = con.sql(sql)
        if reader is None:
            raise QueryError(f"not a query: {sql.strip()[:80]!r}; give one SELECT over {', '.join(results.TABLES)}")
        return reader.to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(f"{storage.one_line(exc)} (tables and columns: {tables_help()})") from None
    finally:
        con.close()


def build_sql(
    table: str = "trials", where: str | None = None, columns: Sequence[str] | str | None = None,
    sort: Sequence[str] | str | None = None, limit: int | None = None,
) -> str:
    """The SELECT the shorthands stand for; names are checked here, the WHERE text by the engine."""
    if table not in results.TABLES:
        raise QueryError(f"unknown table {table!r}; valid: {', '.join(results.TABLES)}")
    if limit is not None and limit < 0:
        raise QueryError(f"--limit must be 0 or more, got {limit}")
    schema = results.SCHEMAS[table]
    wanted = split_list(columns)
    if wanted == ["all"]:
        wanted = list(schema.names)
    for name in wanted:
        _check_column(name, table)
    select = ", ".join(_quote(c) for c in (wanted or DEFAULT_COLUMNS[table]))
    sql = f"SELECT {select} FROM {table}"
    if where and where.strip():
        sql += f" WHERE {where}"
    keys = []
    for spec in split_list(sort):
        name, _, direction = spec.partition(":")
        direction = direction.lower() or "asc"
        _check_column(name, table)
        if direction not in ("asc", "desc"):
            raise QueryError(f"--sort {spec!r}: direction must be asc or desc")
        keys.append(f"{_quote(name)} {direction.upper()} NULLS LAST")
    if keys:
        sql += " ORDER BY " + ", ".join(keys)
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return sql


def split_list(specs: Sequence[str] | str | None) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` as ``["a", "b", "c"]``."""
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    return [part.strip() for spec in specs for part in spec.split(",") if part.strip()]


def _check_column(name: str, table: str) -> None:
    names = results.SCHEMAS[table].names
    if name not in names:
        raise QueryError(f"unknown column {name!r} in {table}; valid: {', '.join(names)}")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------------- output
def _cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def format_table(data: pa.Table, max_width: int = 60) -> str:
    """Aligned plain text: a header, a rule, the rows, then the row count."""
    header = data.column_names
    rows = [[_cell(v)[:max_width] for v in row.values()] for row in data.to_pylist()]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in data.schema]

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True))
        return "  ".join(padded).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    out.append(f"({data.num_rows} row{'s' if data.num_rows != 1 else ''})")
    return "\n".join(out) + "\n"


def format_json(data: pa.Table) -> str:
    return json.dumps(data.to_pylist(), default=_json_default, indent=1) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def format_csv(data: pa.Table) -> str:
    sink = io.BytesIO()
    pacsv.write_csv(data, sink)
    return sink.getvalue().decode()


def render(data: pa.Table, fmt: str) -> str:
    if fmt == "table":
        return format_table(data)
    if fmt == "csv":
        return format_csv(data)
    if fmt == "json":
        return format_json(data)
    raise QueryError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def write_output(data: pa.Table, fmt: str, out: str | Path | None) -> str | None:
    """Write ``data`` as ``fmt`` to ``out`` (atomically), or return the text for the terminal."""
    if fmt not in FORMATS:
        raise QueryError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "parquet":
        if out is None:
            raise QueryError("--format parquet needs --out FILE (Parquet is binary, not for the terminal)")
        results.write_atomic(data, out)
        return None
    text = render(data, fmt)
    if out is None:
        return text
    storage.write_text(out, text)
    return None
