"""One storage layer for every location: local paths and a real S3 endpoint (moto on 127.0.0.1)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import factories
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


def test_a_failed_write_to_s3_leaves_nothing(s3_uri: str) -> None:
    target = storage.join(s3_uri, "failed", "t.parquet")
    with pytest.raises(RuntimeError), storage.writing(target) as tmp:
        tmp.write_bytes(b"PAR1 half")
        raise RuntimeError("the writer died")
    assert not storage.exists(target) and not tmp.exists()


def test_results_open_reads_searches_written_to_s3(s3_uri: str) -> None:
    folder = storage.join(s3_uri, "open")
    first = factories.search("first", trials=3, accs=(0.5, 0.8))
    second = factories.search("second", trials=2, created_at=factories.T0 + dt.timedelta(hours=1))
    second.confirm = factories.confirm_rows("second", "scratch", 0.1, 0, [0.4, 0.6], [0.4, 0.5], 3.0)
    factories.write_results(folder, first, second)
    storage.write_text(storage.join(folder, "first", "_ray", "deep", "result.json"), "{}")  # not a table
    opened = results.open(folder)
    assert sorted(opened.experiments.to_table()["experiment"].to_pylist()) == ["first", "second"]
    assert opened.trials.count_rows() == 5 and opened.epochs.count_rows() == 10 and opened.confirm.count_rows() == 2
    assert opened.trials.to_table().schema == results.TRIALS
    one = results.open(storage.join(folder, "first"))  # a single search folder; no confirm.parquet: empty
    assert one.trials.count_rows() == 3 and one.confirm.count_rows() == 0
    assert one.confirm.to_table().schema == results.CONFIRM


def test_results_open_refuses_what_is_not_a_results_folder(s3_uri: str, tmp_path: Path) -> None:
    for missing in (storage.join(s3_uri, "nothing-here"), tmp_path / "missing"):
        with pytest.raises(ResultsError, match=r"does not exist; give the folder") as err:
            results.open(missing)
        assert "\n" not in str(err.value)
    (tmp_path / "file.parquet").write_bytes(b"x")
    with pytest.raises(ResultsError, match="is a file, not a folder"):
        results.open(tmp_path / "file.parquet")
    with pytest.raises(ResultsError, match="no tlsearch tables"):
        results.open(tmp_path)


def test_recorded_results_read_a_tune_folder_on_s3(s3_uri: str) -> None:
    from tlsearch.stopping import recorded_results

    tune_dir = storage.join(s3_uri, "tune")
    lines = [{"trial_id": "a", "epoch": e, "val_acc": e / 10} for e in (1, 2)]
    storage.write_text(storage.join(tune_dir, "trial_a", "result.json"), "".join(json.dumps(x) + "\n" for x in lines))
    # a writer killed mid-line: the cut-short last result is skipped, the complete one kept
    storage.write_text(storage.join(tune_dir, "trial_b", "result.json"), '{"trial_id": "b", "epoch": 1}\n{"tri')
    assert list(recorded_results(tune_dir)) == [*lines, {"trial_id": "b", "epoch": 1}]
    assert list(recorded_results(storage.join(s3_uri, "no-tune-here"))) == []
