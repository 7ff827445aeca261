"""One storage layer for every location: local paths and a real S3 endpoint (moto on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tlsearch import results, storage
from tlsearch.errors import ResultsError


def test_join_keeps_a_uris_query_at_the_end() -> None:
    assert storage.join("s3://b/x?endpoint_override=h:1", "y", "z.parquet") == "s3://b/x/y/z.parquet?endpoint_override=h:1"
    assert storage.join("/tmp/r/", "a") == "/tmp/r/a"
    assert storage.child("s3://b/x?scheme=http", "b/x/y/result.json") == "s3://b/x/y/result.json?scheme=http"
    assert storage.child("/tmp/r", "/tmp/r/a") == "/tmp/r/a"


def test_local_writes_are_atomic_and_read_back(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "t.parquet"
    storage.write_table(pa.table({"x": [1, 2]}), target)
    assert storage.is_file(target) and [p.name for p in target.parent.iterdir()] == ["t.parquet"]
    with pytest.raises(RuntimeError), storage.writing(tmp_path / "deep" / "u.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer died")
    assert sorted(p.name for p in target.parent.iterdir()) == ["t.parquet"]  # no partial file, no temp file
    assert storage.read_text(tmp_path / "missing.txt") is None


def test_an_unwritable_local_location_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultsError, match="not writable"):
        storage.check_writable(tmp_path / "file" / "results")


def test_everything_round_trips_through_s3(s3_uri: str, tmp_path: Path) -> None:
    folder = storage.join(s3_uri, "rt")
    storage.write_text(storage.join(folder, "a", "note.txt"), "hello")
    storage.write_table(pa.table({"x": [1]}), storage.join(folder, "a", "t.parquet"))
    assert storage.read_text(storage.join(folder, "a", "note.txt")) == "hello"
    assert [i.base_name for i in storage.list_files(folder)] == ["note.txt", "t.parquet"]
    local = tmp_path / "copy.txt"
    storage.copy_file(storage.join(folder, "a", "note.txt"), local)
    assert local.read_text() == "hello"
    storage.delete_dir(folder)
    assert not storage.exists(storage.join(folder, "a", "note.txt"))


def test_results_open_reads_tables_written_to_s3(s3_uri: str) -> None:
    folder = storage.join(s3_uri, "open")
    rows = [{"experiment": "e", "trial_id": f"t{i}", "init": "pretrained", "best_val_acc": 0.5 + i / 10}
            for i in range(3)]
    tables = {name: results.to_table(name, []) for name in results.SEARCH_TABLES}
    tables["trials"] = results.to_table("trials", rows)
    tables["experiments"] = results.to_table("experiments", [{"experiment": "e"}])
    results.write_search(storage.join(folder, "e"), tables)
    opened = results.open(folder)
    assert opened.trials.count_rows() == 3 and opened.confirm.count_rows() == 0
    assert results.best_trial(opened.trials.to_table().to_pylist())["trial_id"] == "t2"  # type: ignore[index]
    with pytest.raises(ResultsError, match="does not exist"):
        results.open(storage.join(s3_uri, "nothing-here"))
