"""The report's text and files: report.md, the PNGs, summary.json, the CLI, the run summary; on S3 too."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from test_report_analysis import _confirm_rows, results_dir  # noqa: F401 - the shared fixture

from tlsearch import report, results, storage
from tlsearch.cli import cli


def test_write_report_files_and_headline(results_dir: Path) -> None:  # noqa: F811
    out = report.write_report(results_dir)
    assert out.folder == str(results_dir / "new" / "report")
    assert len(out.plots) == 6
    for png in out.plots:
        data = Path(png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    md = Path(out.markdown).read_text()
    for needle in (
        "## Compute to target, from the search, unconfirmed",
        "| 1 | 80.00% | 100.0 device-s, 8e+09 FLOPs (trial p2, epoch 2) | 240.0 device-s, 2.4e+10 FLOPs "
        "(trial s2, epoch 4) | 2.4x | 3x |",
        "None yet: every comparison below is from the search, unconfirmed",
        "ASHA (estimate): spent 564.0 device-s of training",
        "saved ~204.0 (26.6%)",
        "steady per-epoch cost",
        "![Pareto front](pareto.png)",
    ):
        assert needle in md, needle
    assert "all fractions" not in md and "any data fraction" not in md
    text = "\n".join(out.lines)
    assert "best: trial p2: pretrained, freeze_depth 0" in text
    assert ("data_fraction 1: pretrained reached 80.00% with 2.4 times less compute (100.0 vs 240.0 device-s, "
            "3x fewer FLOPs)") in text
    assert "source model pretraining: unknown" in text
    summary = json.loads(Path(out.summary).read_text())
    assert summary["confirmed"] is False and summary["per_data_fraction"] == []
    assert [r["data_fraction"] for r in summary["compute_to_target_unconfirmed"]] == [0.1, 1.0]


def test_confirmed_numbers_head_the_report_and_summary_json(tmp_path: Path) -> None:
    out = report.write_report(_confirm_rows(tmp_path, scratch_cost=30.0, pretrained_cost=10.0))
    md = Path(out.markdown).read_text()
    assert "## Confirmed numbers (tlsearch confirm)" in md and "| **saves** |" in md
    assert "data_fraction 0.1: test_acc pretrained 90.0% [" in "\n".join(out.lines)
    (row,) = json.loads(Path(out.summary).read_text())["per_data_fraction"]
    assert row["verdict"] == "saves" and row["ratio"]["low"] > 1 and row["scratch"]["runs"] == 3
    assert "measured by confirm" in "\n".join(out.lines)


def test_cli_report(results_dir: Path) -> None:  # noqa: F811
    res = CliRunner().invoke(cli, ["report", str(results_dir), "--experiment", "old", "--target-acc", "0.55"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "experiment old: 1 trials" in res.output
    assert "scratch reached 55.00% in 2.0 device-s; pretrained: not reached" in res.output
    assert (results_dir / "old" / "report" / "report.md").is_file()
    assert not (results_dir / "new" / "report").exists()
    for args, needle in ((["--experiment", "nope"], "no experiment 'nope'; valid: new, old"),
                         (["--target-acc", "95"], "did you mean 0.95")):
        bad = CliRunner().invoke(cli, ["report", str(results_dir), *args], catch_exceptions=False)
        assert bad.exit_code == 2 and needle in bad.output and len(bad.output.strip().splitlines()) == 1
    assert not (results_dir / "new" / "report").exists()


def test_run_summary_shows_validation_and_test_side_by_side(results_dir: Path) -> None:  # noqa: F811
    trials = results.open(results_dir).trials.to_table(filter=pa.compute.field("experiment") == "new")
    trials = trials.set_column(trials.schema.get_field_index("test_acc"), "test_acc",
                               pa.array([0.8 if t == "p2" else None for t in trials["trial_id"].to_pylist()]))
    lines = report.summary(trials)
    assert lines[0] == "trials: 6 (3 completed, 2 stopped, 1 error)"
    assert lines[1].startswith("best: trial p2 val_acc 0.9000, test_acc 0.8000 at epoch 4")
    assert lines[-1].split() == ["1", "0.9000", "/", "0.8000", "(", "200.0)", "0.8000", "/", "--", "(", "240.0)"]


def test_a_report_on_s3(results_dir: Path, s3_uri: str) -> None:  # noqa: F811
    remote = storage.join(s3_uri, "report-copy")
    storage.upload_dir(results_dir, remote)
    out = report.write_report(remote, "new")
    assert out.markdown.startswith("s3://") and "## Compute to target" in (storage.read_text(out.markdown) or "")
    assert (storage.read_bytes(out.plots[0]) or b"")[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", ["summary", "write_report", "load_experiment", "build_report"])
def test_the_public_names_are_exported(name: str) -> None:
    assert name in report.__all__ and callable(getattr(report, name))
