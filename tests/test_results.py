"""The Parquet tables: schema round-trip, append across searches, older files, atomic writes under SIGKILL."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import factories
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tlsearch import results
from tlsearch.errors import ResultsError

T0 = factories.T0


def search_tables(name: str, created: dt.datetime, trials: int = 2) -> dict[str, pa.Table]:
    return factories.search(name, trials=trials, created_at=created).tables()


def test_schema_round_trip(tmp_path: Path) -> None:
    tables = search_tables("s1", T0)
    written = results.write_search(tmp_path / "s1", tables)
    assert sorted(Path(p).name for p in written.values()) == ["epochs.parquet", "experiment.parquet",
                                                              "trials.parquet"]
    opened = results.open(tmp_path)
    assert opened.confirm.count_rows() == 0  # no confirmation yet: an empty table of the right schema
    for name in results.SEARCH_TABLES:
        back = opened.table(name).to_table()
        assert back.schema == results.SCHEMAS[name]
        assert back.to_pylist() == tables[name].to_pylist()
    # a single search folder opens too
    assert results.open(tmp_path / "s1").trials.count_rows() == 2


def test_open_returns_pyarrow_datasets(tmp_path: Path) -> None:
    import pyarrow.dataset as pads

    results.write_search(tmp_path / "s1", search_tables("s1", T0))
    opened = results.open(tmp_path)
    assert isinstance(opened, results.ResultSet)
    assert all(isinstance(opened.table(n), pads.Dataset) for n in results.TABLES)
    with pytest.raises(ResultsError, match="valid: experiments, trials, epochs"):
        opened.table("runs")


def test_append_of_two_searches(tmp_path: Path) -> None:
    results.write_search(tmp_path / "first", search_tables("first", T0, trials=2))
    results.write_search(tmp_path / "second", search_tables("second", T0 + dt.timedelta(hours=1), trials=3))
    opened = results.open(tmp_path)
    assert sorted(opened.experiments.to_table()["experiment"].to_pylist()) == ["first", "second"]
    assert opened.trials.count_rows() == 5
    assert opened.epochs.count_rows() == 10
    ids = opened.trials.to_table()["trial_id"].to_pylist()
    assert len(set(ids)) == 5


def test_reader_fills_nulls_for_a_column_an_older_file_lacks(tmp_path: Path) -> None:
    new, older = factories.search("new", created_at=T0 + dt.timedelta(days=1)), factories.search("old")
    for trial in new.trials + older.trials:
        trial["checkpoint_path"] = f"/ckpt/{trial['trial_id']}"
    factories.write_results(tmp_path, new)
    old = older.tables()
    old_folder = tmp_path / "old"
    old_folder.mkdir()
    # an older tlsearch wrote no train_flops and no checkpoint_path in trials, no train_flops in epochs
    pq.write_table(old["trials"].drop_columns(["train_flops", "checkpoint_path"]), old_folder / "trials.parquet")
    pq.write_table(old["epochs"].drop_columns(["train_flops"]), old_folder / "epochs.parquet")
    pq.write_table(old["experiments"].drop_columns(["git_commit"]), old_folder / "experiment.parquet")
    assert "train_flops" not in pq.read_schema(old_folder / "trials.parquet").names

    opened = results.open(tmp_path)
    trials = opened.trials.to_table()
    assert trials.schema == results.TRIALS
    by_exp = {e: [r for r in trials.to_pylist() if r["experiment"] == e] for e in ("old", "new")}
    assert [r["train_flops"] for r in by_exp["old"]] == [None, None]
    assert [r["checkpoint_path"] for r in by_exp["old"]] == [None, None]
    assert [r["train_flops"] for r in by_exp["new"]] == [2e8, 2e8]
    assert [r["checkpoint_path"] for r in by_exp["new"]] == ["/ckpt/new_00000", "/ckpt/new_00001"]
    assert opened.epochs.to_table(filter=pa.compute.field("train_flops").is_null()).num_rows == 4
    assert opened.experiments.to_table()["git_commit"].null_count == 2


def test_to_table_rejects_unknown_columns() -> None:
    with pytest.raises(ResultsError, match=r"unknown column\(s\) \['colour'\]; valid: \['experiment'"):
        results.to_table("trials", [{"experiment": "x", "trial_id": "t", "colour": "red"}])


def test_open_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="does not exist"):
        results.open(tmp_path / "missing")
    with pytest.raises(ResultsError, match="no tlsearch tables"):
        results.open(tmp_path)


def test_write_atomic_leaves_only_the_final_file(tmp_path: Path) -> None:
    table = pa.table({"x": [1, 2, 3]})
    results.write_atomic(table, tmp_path / "t.parquet")
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]
    assert pq.read_table(tmp_path / "t.parquet").equals(table)


def test_readers_ignore_temporary_files(tmp_path: Path) -> None:
    results.write_search(tmp_path / "s1", search_tables("s1", T0))
    (tmp_path / "s1" / ".trials.parquet.0123.tmp").write_bytes(b"PAR1 partial")
    assert results.files(tmp_path, "trials") == [str(tmp_path / "s1" / "trials.parquet")]
    assert results.open(tmp_path).trials.count_rows() == 2


ROWS = 1_500_000
WRITER = textwrap.dedent(
    f"""
    import sys
    import numpy as np
    import pyarrow as pa
    from tlsearch import results

    rng = np.random.default_rng(0)
    table = pa.table({{"i": np.arange({ROWS}), "x": rng.random({ROWS}), "y": rng.random({ROWS})}})
    print("ready", flush=True)
    while True:
        results.write_atomic(table, sys.argv[1])
    """
)


def _kill_while_writing(target: Path, wait_for_final: bool) -> bool:
    """Start a writer looping over write_atomic, SIGKILL it while a temporary file exists; True if it did."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while wait_for_final and not target.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        # now wait for the next write to be in progress
        while time.monotonic() < deadline:
            if any(p.name.endswith(".tmp") for p in target.parent.iterdir()):
                break
            time.sleep(0.001)
        time.sleep(0.02)
        mid_write = any(p.name.endswith(".tmp") for p in target.parent.iterdir())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        return mid_write
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("wait_for_final", [False, True], ids=["first-write", "later-write"])
def test_sigkill_in_the_middle_of_a_write_leaves_no_partial_file(tmp_path: Path, wait_for_final: bool) -> None:
    target = tmp_path / "big.parquet"
    mid_write = _kill_while_writing(target, wait_for_final)
    assert mid_write, "the writer was not killed in the middle of a write; the test proved nothing"
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers  # the killed write's temporary file, never under the final name
    if wait_for_final:
        assert target.exists()
    if target.exists():
        table = pq.read_table(target)
        assert table.num_rows == ROWS
        assert table.column("i")[ROWS - 1].as_py() == ROWS - 1
