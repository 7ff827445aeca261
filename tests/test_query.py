"""``tlsearch query``: SQL through DuckDB, the shorthands built on it, clear errors (exit code 2)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import factories
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from tlsearch import results, storage
from tlsearch.cli import cli
from tlsearch.query import QueryError, build_sql, run_sql

# trial_id, init, freeze_depth, data_fraction, status, best_val_acc, device_s, error
ROWS = [
    ("t1", "pretrained", 0, 0.05, "completed", 0.91, 40.0, None),
    ("t2", "pretrained", 2, 0.1, "completed", 0.88, 20.0, None),
    ("t3", "pretrained", 3, 0.1, "stopped", 0.70, 5.0, None),
    ("t4", "scratch", 0, 0.1, "stopped", 0.40, 10.0, None),
    ("t5", "scratch", 2, 1.0, "completed", 0.85, 90.0, None),
    ("t6", "pretrained", 4, 1.0, "error", None, 1.0, "it's broken"),
]


def write(folder: str | Path, name: str = "exp1") -> None:
    trials, epochs = [], []
    for tid, init, depth, fraction, status, acc, cost, error in ROWS:
        trial = factories.trial_row(tid, name, status=status, init=init, freeze_depth=depth, data_fraction=fraction,
                                    best_val_acc=acc, device_s=cost, error=error)
        trials.append(trial)
        epochs += [{**row, "val_acc": acc, "device_s": cost * row["epoch"]}
                   for row in factories.curve_rows(trial, [0.0, 0.0])]
    experiment = factories.experiment_row(name, created_at=dt.datetime(2025, 2, 1, tzinfo=dt.UTC))
    factories.write_search(folder, experiment, trials, epochs)


@pytest.fixture
def rdir(tmp_path: Path) -> Path:
    write(tmp_path / "res" / "exp1")
    return tmp_path / "res"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["query", *args], catch_exceptions=False)


def ids(rdir: Path, where: str, sort: str = "trial_id") -> list[str]:
    return run_sql(rdir, build_sql("trials", where, "trial_id", sort))["trial_id"].to_pylist()


def test_where_from_the_issue(rdir: Path) -> None:
    assert ids(rdir, "init = 'pretrained' and data_fraction <= 0.1 and freeze_depth >= 2") == ["t2", "t3"]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("status != 'completed'", ["t3", "t4", "t6"]),
        ("status <> 'completed'", ["t3", "t4", "t6"]),
        ("best_val_acc > 0.85", ["t1", "t2"]),
        ("best_val_acc >= 0.85", ["t1", "t2", "t5"]),
        ("device_s < 10", ["t3", "t6"]),
        ("freeze_depth == 0", ["t1", "t4"]),
        ("0.1 >= data_fraction", ["t1", "t2", "t3", "t4"]),  # literal on the left is mirrored
        ("init = 'scratch' or freeze_depth = 4", ["t4", "t5", "t6"]),
        ("not (init = 'scratch' or freeze_depth = 4)", ["t1", "t2", "t3"]),
        ("NOT init = 'pretrained' AND data_fraction = 1", ["t5"]),
        ("(init = 'pretrained' or init = 'scratch') and (freeze_depth < 1)", ["t1", "t4"]),
        ("best_val_acc is null", ["t6"]),
        ("best_val_acc is not null and error is null", ["t1", "t2", "t3", "t4", "t5"]),
        ("trial_id in ('t1', 't5', 'nope')", ["t1", "t5"]),
        ("freeze_depth not in (0, 2)", ["t3", "t6"]),
        ("error = 'it''s broken'", ["t6"]),
        ('"freeze_depth" > 2', ["t3", "t6"]),
        ("freeze_depth > 2.5", ["t3", "t6"]),
        ("data_fraction = 1e-1", ["t2", "t3", "t4"]),
        ("best_val_acc > device_s", []),
        ("experiment = 'exp1' and best_val_acc < 0.5", ["t4"]),
    ],
)
def test_where_expressions(rdir: Path, where: str, expected: list[str]) -> None:
    assert ids(rdir, where) == expected


def test_sql_over_every_table_as_the_issue_asks(rdir: Path) -> None:
    got = run_sql(rdir, "SELECT init, data_fraction, max(best_val_acc) AS best FROM trials GROUP BY ALL "
                        "ORDER BY init, data_fraction")
    assert got.to_pylist()[:2] == [{"init": "pretrained", "data_fraction": 0.05, "best": 0.91},
                                   {"init": "pretrained", "data_fraction": 0.1, "best": 0.88}]
    joined = run_sql(rdir, "SELECT t.trial_id, max(e.epoch) AS last FROM trials t JOIN epochs e USING (trial_id) "
                           "GROUP BY ALL ORDER BY 1")
    assert joined.num_rows == 6 and set(joined["last"].to_pylist()) == {2}
    stamps = run_sql(rdir, "SELECT count(*) AS n FROM experiments WHERE created_at >= '2025-01-31'")
    assert stamps["n"].to_pylist() == [1]
    assert run_sql(rdir, "SELECT count(*) AS n FROM confirm")["n"].to_pylist() == [0]


def test_queries_cannot_touch_files(rdir: Path, tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="disabled"):
        run_sql(rdir, f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'")
    assert not (tmp_path / "x.csv").exists()


def test_default_columns_fit_a_terminal_and_all_shows_every_one(rdir: Path) -> None:
    default = run_sql(rdir, build_sql("trials"))
    assert default.column_names == ["trial_id", "status", "init", "model", "freeze_depth", "head_lr", "backbone_lr",
                                    "data_fraction", "best_val_acc", "test_acc", "device_s"]
    assert run_sql(rdir, build_sql("trials", columns="all")).column_names == results.TRIALS.names
    for table in results.TABLES:
        assert len(run_sql(rdir, build_sql(table)).column_names) <= 11
    res = invoke(str(rdir), "--sort", "trial_id")
    assert max(len(line) for line in res.output.splitlines()) <= 160


def test_cli_default_table_format(rdir: Path) -> None:
    res = invoke(str(rdir), "--columns", "trial_id,init,best_val_acc", "--sort", "trial_id")
    assert res.exit_code == 0
    lines = res.output.splitlines()
    assert lines[0].split() == ["trial_id", "init", "best_val_acc"]
    assert lines[2].split() == ["t1", "pretrained", "0.91"]
    assert lines[7].split() == ["t6", "pretrained", "null"]
    assert lines[-1] == "(6 rows)"


def test_cli_table_option_and_where(rdir: Path) -> None:
    res = invoke(
        str(rdir),
        "--table",
        "epochs",
        "--where",
        "trial_id = 't2'",
        "--columns",
        "trial_id,epoch,device_s",
        "--format",
        "csv",
    )
    assert res.exit_code == 0
    assert res.output.splitlines() == ['"trial_id","epoch","device_s"', '"t2",1,20', '"t2",2,40']
    exp = invoke(str(rdir), "--table", "experiments", "--columns", "experiment,max_epochs", "--format", "json")
    assert json.loads(exp.output) == [{"experiment": "exp1", "max_epochs": 2}]


def test_cli_sort_repeatable_and_comma_separated(rdir: Path) -> None:
    res = invoke(
        str(rdir), "--columns", "trial_id", "--sort", "init:desc", "--sort", "device_s:desc", "--format", "json"
    )
    assert [r["trial_id"] for r in json.loads(res.output)] == ["t5", "t4", "t1", "t2", "t3", "t6"]
    res = invoke(str(rdir), "--columns", "trial_id", "--sort", "init:desc,device_s:asc", "--format", "json")
    assert [r["trial_id"] for r in json.loads(res.output)] == ["t4", "t5", "t6", "t3", "t2", "t1"]
    # nulls go last, whichever the direction
    res = invoke(str(rdir), "--columns", "trial_id", "--sort", "best_val_acc:desc", "--limit", "6", "--format", "csv")
    assert res.output.split()[1:] == ['"t1"', '"t2"', '"t5"', '"t3"', '"t4"', '"t6"']


def test_cli_limit(rdir: Path) -> None:
    res = invoke(str(rdir), "--columns", "trial_id", "--sort", "device_s", "--limit", "2", "--format", "json")
    assert json.loads(res.output) == [{"trial_id": "t6"}, {"trial_id": "t3"}]
    unsorted = invoke(str(rdir), "--columns", "trial_id", "--limit", "3", "--format", "json")
    assert len(json.loads(unsorted.output)) == 3
    none = invoke(str(rdir), "--limit", "0", "--format", "json")
    assert json.loads(none.output) == []


def test_cli_out_and_formats(rdir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sel.parquet"
    res = invoke(str(rdir), "--where", "status = 'completed'", "--columns", "all", "--format", "parquet",
                 "--out", str(out))
    assert res.exit_code == 0
    table = pq.read_table(out)
    assert table.schema.names == results.TRIALS.names
    assert sorted(table["trial_id"].to_pylist()) == ["t1", "t2", "t5"]
    csv_out = tmp_path / "sel.csv"
    res = invoke(
        str(rdir), "--columns", "trial_id", "--where", "device_s > 50", "--format", "csv", "--out", str(csv_out)
    )
    assert res.exit_code == 0 and csv_out.read_text() == '"trial_id"\n"t5"\n'
    json_out = tmp_path / "sel.json"
    invoke(
        str(rdir),
        "--columns",
        "trial_id,data_fraction",
        "--where",
        "trial_id = 't1'",
        "--format",
        "json",
        "--out",
        str(json_out),
    )
    assert json.loads(json_out.read_text()) == [{"trial_id": "t1", "data_fraction": 0.05}]
    txt_out = tmp_path / "sel.txt"
    invoke(str(rdir), "--columns", "trial_id", "--where", "trial_id = 't1'", "--out", str(txt_out))
    assert txt_out.read_text().splitlines()[-1] == "(1 row)"


def test_cli_reads_all_searches_and_older_files(rdir: Path) -> None:
    old = rdir / "old"
    old.mkdir()
    legacy = pa.table({"experiment": ["old"], "trial_id": ["o1"], "status": ["completed"], "init": ["scratch"]})
    pq.write_table(legacy, old / "trials.parquet")  # an older file with only four columns
    res = invoke(
        str(rdir),
        "--where",
        "best_val_acc is null",
        "--columns",
        "experiment,trial_id",
        "--sort",
        "trial_id",
        "--format",
        "json",
    )
    assert json.loads(res.output) == [{"experiment": "old", "trial_id": "o1"}, {"experiment": "exp1", "trial_id": "t6"}]


def _exit2(res: Result, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    for needle in needles:
        assert needle in res.output


def test_cli_bad_sql_exits_2_naming_the_tables_and_columns(rdir: Path, tmp_path: Path) -> None:
    _exit2(invoke(str(rdir), "--where", "init = = 'x'"), "Parser Error", "trials(experiment, trial_id, status")
    _exit2(invoke(str(rdir), "SELECT trial_id FROM trails", "--out", str(tmp_path / "o.csv")), "trails",
           "experiments(experiment, created_at")
    assert not (tmp_path / "o.csv").exists()
    _exit2(invoke(str(rdir), "SELEC 1"), "syntax error", "epochs(experiment, trial_id")
    _exit2(invoke(str(rdir), "SELECT acc FROM trials"), '"acc" not found', "best_val_acc")
    _exit2(invoke(str(rdir), "SELECT 1", "--where", "true"), "either SQL or the shorthands")


def test_cli_unknown_column_exits_2_naming_the_valid_columns(rdir: Path) -> None:
    valid = ", ".join(results.TRIALS.names)
    _exit2(invoke(str(rdir), "--columns", "trial_id,acc"), "unknown column 'acc' in trials", valid)
    _exit2(invoke(str(rdir), "--sort", "acc:desc"), "unknown column 'acc' in trials", valid)


def test_cli_other_bad_input_exits_2(rdir: Path, tmp_path: Path) -> None:
    _exit2(invoke(str(rdir), "--sort", "device_s:down"), "direction must be asc or desc")
    _exit2(invoke(str(rdir), "--format", "parquet"), "--format parquet needs --out FILE")
    _exit2(invoke(str(tmp_path / "nowhere")), "does not exist")
    assert CliRunner().invoke(cli, ["query", str(rdir), "--format", "xml"]).exit_code == 2
    assert not list(tmp_path.glob("*.parquet"))


def test_query_results_written_to_s3(rdir: Path, s3_uri: str) -> None:
    remote = storage.join(s3_uri, "query")
    write(storage.join(remote, "exp1"))
    sql = "SELECT init, data_fraction, max(best_val_acc) AS best FROM trials GROUP BY ALL ORDER BY 1, 2"
    assert run_sql(remote, sql) == run_sql(rdir, sql)
    res = invoke(remote, "SELECT init, data_fraction, max(best_val_acc) FROM trials GROUP BY ALL", "--format", "csv")
    assert sorted(res.output.splitlines()[1:]) == ['"pretrained",0.05,0.91', '"pretrained",0.1,0.88',
                                                   '"pretrained",1,', '"scratch",0.1,0.4', '"scratch",1,0.85']
    _exit2(invoke(remote, "SELECT nope FROM trials"), '"nope" not found', "confirm(experiment, source_trial_id")
    out = storage.join(remote, "sel.csv")
    assert invoke(remote, "--columns", "trial_id", "--where", "device_s > 50", "--format", "csv",
                  "--out", out).exit_code == 0
    assert storage.read_text(out) == '"trial_id"\n"t5"\n'
