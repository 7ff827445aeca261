"""``tlsearch query``: filter, sort and export the Parquet tables with pyarrow expressions.

The WHERE text is parsed by a small recursive-descent parser (no ``eval``) into a
:class:`pyarrow.compute.Expression`, which the pyarrow dataset scanner applies while reading. Grammar::

    expr      := and_expr ("or" and_expr)*
    and_expr  := not_expr ("and" not_expr)*
    not_expr  := "not" not_expr | "(" expr ")" | predicate
    predicate := operand OP operand                        OP: = == != <> < <= > >=
               | column "is" ["not"] "null"
               | column ["not"] "in" "(" literal ("," literal)* ")"
    operand   := column | literal
    literal   := 'string' | number | true | false | null

Keywords are case-insensitive; a column may be written bare or in double quotes.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tlsearch import results
from tlsearch.errors import TLSearchError
from tlsearch.storage import replacing

FORMATS = ("table", "csv", "json", "parquet")
COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
KEYWORDS = {"and", "or", "not", "is", "null", "in", "true", "false"}
_MIRROR = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "=", "==": "==", "!=": "!=", "<>": "<>"}


class QueryError(TLSearchError, ValueError):
    """A WHERE expression, column list, sort key or output option is invalid."""


# ---------------------------------------------------------------------------------------------- tokenizer
@dataclass(frozen=True)
class Token:
    kind: str  # ident | string | number | op | lparen | rparen | comma | keyword | end
    text: str
    pos: int
    value: Any = None


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<qident>"[^"]+")
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<op><=|>=|==|!=|<>|=|<|>)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            got = text[pos : pos + 10]
            raise QueryError(f"cannot parse WHERE {text!r}: unexpected {got!r} at character {pos}")
        kind = match.lastgroup or ""
        raw = match.group()
        if kind == "string":
            tokens.append(Token("string", raw, pos, raw[1:-1].replace("''", "'")))
        elif kind == "qident":
            tokens.append(Token("ident", raw, pos, raw[1:-1]))
        elif kind == "number":
            number = float(raw) if any(c in raw for c in ".eE") else int(raw)
            tokens.append(Token("number", raw, pos, number))
        elif kind == "ident" and raw.lower() in KEYWORDS:
            tokens.append(Token("keyword", raw, pos, raw.lower()))
        elif kind == "ident":
            tokens.append(Token("ident", raw, pos, raw))
        elif kind != "ws":
            tokens.append(Token(kind, raw, pos, raw))
        pos = match.end()
    tokens.append(Token("end", "end of expression", len(text)))
    return tokens


# ------------------------------------------------------------------------------------------------ parser
@dataclass(frozen=True)
class _Column:
    name: str


@dataclass(frozen=True)
class _Literal:
    value: Any  # str | int | float | bool | None


class _Parser:
    def __init__(self, text: str, schema: pa.Schema) -> None:
        self.text = text
        self.schema = schema
        self.tokens = tokenize(text)
        self.i = 0

    # -- helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def at_keyword(self, *words: str) -> bool:
        return self.tok.kind == "keyword" and self.tok.value in words

    def expect_keyword(self, word: str) -> None:
        if not self.at_keyword(word):
            self.fail(f"expected {word.upper()!r}")
        self.advance()

    def expect(self, kind: str, what: str) -> Token:
        if self.tok.kind != kind:
            self.fail(f"expected {what}")
        return self.advance()

    def fail(self, message: str) -> None:
        raise QueryError(
            f"cannot parse WHERE {self.text!r}: {message} at character {self.tok.pos}, got {self.tok.text!r}"
        )

    # -- grammar
    def parse(self) -> pc.Expression:
        if self.tok.kind == "end":
            raise QueryError("empty WHERE expression; e.g. \"init = 'pretrained' and data_fraction <= 0.1\"")
        expr = self.or_expr()
        if self.tok.kind != "end":
            self.fail("expected AND, OR or the end")
        return expr

    def or_expr(self) -> pc.Expression:
        expr = self.and_expr()
        while self.at_keyword("or"):
            self.advance()
            expr = expr | self.and_expr()
        return expr

    def and_expr(self) -> pc.Expression:
        expr = self.not_expr()
        while self.at_keyword("and"):
            self.advance()
            expr = expr & self.not_expr()
        return expr

    def not_expr(self) -> pc.Expression:
        if self.at_keyword("not"):
            self.advance()
            return ~self.not_expr()
        if self.tok.kind == "lparen":
            self.advance()
            expr = self.or_expr()
            self.expect("rparen", "')'")
            return expr
        return self.predicate()

    def operand(self) -> _Column | _Literal:
        token = self.tok
        if token.kind == "ident":
            self.advance()
            return _Column(self.column(token.value))
        return self.literal()

    def literal(self) -> _Literal:
        token = self.tok
        if token.kind in ("string", "number"):
            self.advance()
            return _Literal(token.value)
        if self.at_keyword("true", "false"):
            self.advance()
            return _Literal(token.value == "true")
        if self.at_keyword("null"):
            self.advance()
            return _Literal(None)
        self.fail("expected a column name or a literal ('text', 12, 0.5, true, false, null)")
        raise AssertionError("unreachable")

    def column(self, name: str) -> str:
        if name not in self.schema.names:
            raise QueryError(f"unknown column {name!r} in WHERE; valid columns: {valid(self.schema)}")
        return name

    def predicate(self) -> pc.Expression:
        left = self.operand()
        if self.at_keyword("is"):
            self.advance()
            negate = self.at_keyword("not")
            if negate:
                self.advance()
            self.expect_keyword("null")
            field = self.as_field(left, "IS NULL")
            return field.is_valid() if negate else field.is_null()
        if self.at_keyword("not", "in"):
            negate = self.at_keyword("not")
            if negate:
                self.advance()
            self.expect_keyword("in")
            expr = self.in_list(left)
            return ~expr if negate else expr
        if self.tok.kind != "op":
            self.fail("expected a comparison (= != < <= > >=), IS [NOT] NULL or [NOT] IN (...)")
        op = self.advance().text
        right = self.operand()
        return self.comparison(left, op, right)

    def as_field(self, operand: _Column | _Literal, what: str) -> pc.Expression:
        if not isinstance(operand, _Column):
            self.fail(f"{what} needs a column on its left, not the literal {operand.value!r}")
            raise AssertionError("unreachable")
        return pc.field(operand.name)

    def in_list(self, left: _Column | _Literal) -> pc.Expression:
        field = self.as_field(left, "IN")
        assert isinstance(left, _Column)
        self.expect("lparen", "'(' after IN")
        values = [self.literal().value]
        while self.tok.kind == "comma":
            self.advance()
            values.append(self.literal().value)
        self.expect("rparen", "')' closing the IN list")
        kind = self.schema.field(left.name).type
        scalars = [coerce(v, kind, left.name) for v in values if v is not None]
        expr = field.isin(pa.array([s.as_py() for s in scalars], type=kind))
        return expr | field.is_null() if None in values else expr

    def comparison(self, left: _Column | _Literal, op: str, right: _Column | _Literal) -> pc.Expression:
        if isinstance(left, _Literal) and isinstance(right, _Column):
            left, right, op = right, left, _MIRROR[op]
        if isinstance(left, _Literal):
            self.fail(f"{op} needs at least one column")
        assert isinstance(left, _Column)
        function = COMPARISONS[op]
        if isinstance(right, _Column):
            check_comparable(self.schema, left.name, right.name)
            return function(pc.field(left.name), pc.field(right.name))
        if right.value is None:
            raise QueryError(f"'{left.name} {op} null' is never true; write '{left.name} is [not] null'")
        scalar = coerce(right.value, self.schema.field(left.name).type, left.name)
        return function(pc.field(left.name), pc.scalar(scalar))


def coerce(value: Any, kind: pa.DataType, column: str) -> pa.Scalar:
    """The literal as a scalar of the column's type, or a QueryError saying why it does not fit."""
    try:
        if pa.types.is_timestamp(kind) and isinstance(value, str):
            moment = dt.datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
            return pa.scalar(moment).cast(kind)
        if (pa.types.is_string(kind) or pa.types.is_large_string(kind)) and not isinstance(value, str):
            raise TypeError
        if (pa.types.is_integer(kind) or pa.types.is_floating(kind)) and isinstance(value, str | bool):
            raise TypeError
        if pa.types.is_boolean(kind) and not isinstance(value, bool):
            raise TypeError
        if pa.types.is_integer(kind) and isinstance(value, float):
            return pa.scalar(value, pa.float64())
        return pa.scalar(value).cast(kind)
    except (TypeError, ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise QueryError(f"cannot compare column {column!r} ({kind}) with {value!r}") from None


def check_comparable(schema: pa.Schema, a: str, b: str) -> None:
    ta, tb = schema.field(a).type, schema.field(b).type

    def numeric(t: pa.DataType) -> bool:
        return bool(pa.types.is_integer(t) or pa.types.is_floating(t))

    if ta != tb and not (numeric(ta) and numeric(tb)):
        raise QueryError(f"cannot compare column {a!r} ({ta}) with column {b!r} ({tb})")


def valid(schema: pa.Schema) -> str:
    return ", ".join(schema.names)


def parse_where(text: str, schema: pa.Schema) -> pc.Expression:
    """Parse a WHERE text into a pyarrow expression over ``schema``'s columns."""
    return _Parser(text, schema).parse()


# ------------------------------------------------------------------------------------------ columns, sort
def parse_columns(specs: Sequence[str] | str | None, schema: pa.Schema) -> list[str]:
    names = split_list(specs)
    unknown = [n for n in names if n not in schema.names]
    if unknown:
        names_text = ", ".join(unknown)
        raise QueryError(f"unknown column(s) {names_text} in --columns; valid columns: {valid(schema)}")
    return names or list(schema.names)


def parse_sort(specs: Sequence[str] | str | None, schema: pa.Schema) -> list[tuple[str, str, str]]:
    """``col`` or ``col:asc`` / ``col:desc`` items (repeated or comma separated) as pyarrow sort keys."""
    keys = []
    for item in split_list(specs):
        name, _, direction = item.partition(":")
        direction = direction.strip().lower() or "asc"
        if name.strip() not in schema.names:
            raise QueryError(f"unknown column {name.strip()!r} in --sort; valid columns: {valid(schema)}")
        if direction not in ("asc", "desc"):
            raise QueryError(f"--sort {item!r}: the direction must be asc or desc, got {direction!r}")
        keys.append((name.strip(), "ascending" if direction == "asc" else "descending", "at_end"))
    return keys


def split_list(specs: Sequence[str] | str | None) -> list[str]:
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    return [part.strip() for spec in specs for part in spec.split(",") if part.strip()]


# ------------------------------------------------------------------------------------------------- query
def run_query(
    path: str | Path,
    table: str = "trials",
    where: str | None = None,
    columns: Sequence[str] | str | None = None,
    sort: Sequence[str] | str | None = None,
    limit: int | None = None,
) -> pa.Table:
    """Read one table of a results directory, filtered, sorted, projected and cut to ``limit`` rows."""
    if table not in results.TABLES:
        raise QueryError(f"unknown table {table!r}; valid: {', '.join(results.TABLES)}")
    if limit is not None and limit < 0:
        raise QueryError(f"--limit must be 0 or more, got {limit}")
    dataset = results.open(path).table(table)
    schema = results.SCHEMAS[table]
    selected = parse_columns(columns, schema)
    keys = parse_sort(sort, schema)
    expression = parse_where(where, schema) if where and where.strip() else None
    needed = list(dict.fromkeys(selected + [key[0] for key in keys]))
    try:
        if keys:
            data = dataset.to_table(columns=needed, filter=expression)
            data = data.take(pc.sort_indices(data, sort_keys=keys))
            if limit is not None:
                data = data.slice(0, limit)
        elif limit is not None:
            data = dataset.head(limit, columns=needed, filter=expression) if limit else schema.empty_table()
        else:
            data = dataset.to_table(columns=needed, filter=expression)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise QueryError(f"cannot evaluate WHERE {where!r}: {str(exc).splitlines()[0]}") from None
    return data.select(selected)


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
    path = Path(out)
    try:
        with replacing(path) as tmp:
            tmp.write_text(text)
    except OSError as exc:
        raise QueryError(f"cannot write {path}: {exc.strerror or exc}") from None
    return None
