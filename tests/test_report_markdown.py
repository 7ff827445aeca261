"""The report's text and files: report.md, summary.json, the CLI, the run summary; on S3 too."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from test_report_analysis import write_confirmed, write_results

from tlsearch import report, results, storage
from tlsearch.cli import cli


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return write_results(tmp_path)


def test_an_unconfirmed_report_says_so_and_never_compares_across_fractions(results_dir: Path) -> None:
    out = report.write_report(results_dir)
    assert out.folder == str(results_dir / "new" / "report")
    md = Path(out.markdown).read_text()
    for needle in (
        "## Compute to target, from the search, unconfirmed",
        "| 1 | 80.00% | 100.0 device-s, 8e+09 FLOPs (trial p2, epoch 2) | 240.0 device-s, 2.4e+10 FLOPs "
        "(trial s2, epoch 4) | 2.4x | 3x |",
        "None yet: every comparison below is from the search, unconfirmed",
        "- ASHA (estimate): spent 564.0 device-s of training",
        "saved ~204.0 (26.6%)",
        "steady per-epoch cost",
        "- source model pretraining: unknown",
        "![Pareto front](pareto.png)",
    ):
        assert needle in md, needle
    assert "all fractions" not in md and "any data fraction" not in md
    text = "\n".join(out.lines)
    assert "best: trial p2: pretrained, freeze_depth 0" in text
    assert ("data_fraction 1: pretrained reached 80.00% with 2.4 times less compute (100.0 vs 240.0 device-s, "
            "3 times fewer FLOPs)") in text
    summary = json.loads(Path(out.summary).read_text())
    assert summary["confirmed"] is False and summary["per_data_fraction"] == []
    assert [(r["data_fraction"], r["ratio"], r["basis"]) for r in summary["compute_to_target_unconfirmed"]] == [
        (0.1, 2.4, "from the search, unconfirmed"), (1.0, 2.4, "from the search, unconfirmed")]
    assert summary["best_trial"]["trial_id"] == "p2"
    assert summary["asha"]["estimate"] is True and summary["asha"]["saved_device_s"] == 204.0


def test_confirmed_numbers_head_the_report_and_summary_json(tmp_path: Path) -> None:
    out = report.write_report(write_confirmed(tmp_path, one_arm_fraction=True))
    md = Path(out.markdown).read_text()
    confirmed, unconfirmed = md.index("## Confirmed numbers (tlsearch confirm)"), md.index("## Compute to target")
    assert confirmed < unconfirmed
    row = next(line for line in md.splitlines() if line.startswith("| 0.1 |"))
    assert row.startswith("| 0.1 | 90.0% [") and row.endswith("| **saves** |")
    assert "| 21.0, 23.0, 25.0 | not reached (paid 82.0), 91.0, 100.0 |" in row
    assert "Confirmed with one arm only, nothing to compare: data fraction(s) 0.5." in md
    assert "the source model's pretraining is not included" in md and "](confirmed.png)" in md
    text = "\n".join(out.lines)
    assert "data_fraction 0.1: test_acc pretrained 90.0% [" in text
    assert "reached by 3/3 pretrained and 2/3 scratch runs -> saves" in text
    assert ("measured by confirm: trial t2 (stopped at epoch 2) run to 3 epochs cost 90.0 device-s of training "
            "(mean of 3 runs); the estimate said 35.0") in text
    summary = json.loads(Path(out.summary).read_text())
    (fraction,) = summary["per_data_fraction"]
    assert fraction["verdict"] == "saves" and fraction["ratio"]["low"] > 1
    assert fraction["runs_reached"] == {"pretrained": 3, "scratch": 2}
    assert fraction["scratch"]["to_target"]["scratch-0.1-r0"] is None and fraction["scratch"]["runs"] == 3
    assert summary["verdicts"] == ["saves", "no evidence", "costs more", "scratch never reached"]
    assert summary["costs"]["source_in_ratios"] is False
    assert [m["trial_id"] for m in summary["asha"]["measured_by_confirm"]] == ["t1", "t2"]


def test_the_source_models_cost_has_its_own_line(tmp_path: Path) -> None:
    folder = write_confirmed(tmp_path)
    experiment = results.open(folder).experiments.to_table().to_pylist()[0]
    trials = results.open(folder).trials.to_table().to_pylist()
    epochs = results.open(folder).epochs.to_table().to_pylist()
    results.write_search(folder / "exp", {
        "experiments": results.to_table("experiments", [{**experiment, "source_device_s": 1234.5}]),
        "trials": results.to_table("trials", trials), "epochs": results.to_table("epochs", epochs)})
    text = "\n".join(report.write_report(folder).lines)
    assert "source model pretraining: 1234.5 device-s, paid once and not in the ratios" in text
    assert "search cost: 20.0 device-s training, 4.0 start-up, 0.0 shared feature passes" in text


def test_cli_report(results_dir: Path) -> None:
    res = CliRunner().invoke(cli, ["report", str(results_dir), "--experiment", "old", "--target-acc", "0.55"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "experiment old: 1 trials" in res.output
    assert "scratch reached 55.00% in 2.0 device-s; pretrained: not reached" in res.output
    assert (results_dir / "old" / "report" / "report.md").is_file()
    assert (results_dir / "old" / "report" / "summary.json").is_file()
    assert not (results_dir / "new" / "report").exists()
    for args, needle in ((["--experiment", "nope"], "no experiment 'nope'; valid: new, old"),
                         (["--target-acc", "95"], "got 95; did you mean 0.95?")):
        bad = CliRunner().invoke(cli, ["report", str(results_dir), *args], catch_exceptions=False)
        assert bad.exit_code == 2 and needle in bad.output and len(bad.output.strip().splitlines()) == 1
    assert not (results_dir / "new" / "report").exists()


def test_run_summary_shows_validation_and_test_side_by_side(results_dir: Path) -> None:
    trials = results.open(results_dir).trials.to_table(filter=pc.field("experiment") == "new")
    trials = trials.set_column(trials.schema.get_field_index("test_acc"), "test_acc",
                               pa.array([0.8 if t == "p2" else None for t in trials["trial_id"].to_pylist()]))
    lines = report.summary(trials)
    assert lines[0] == "trials: 6 (3 completed, 2 stopped, 1 error)"
    assert lines[1].startswith("best: trial p2 val_acc 0.9000, test_acc 0.8000 at epoch 4")
    assert lines[-1].split() == ["1", "0.9000", "/", "0.8000", "(", "200.0)", "0.8000", "/", "--", "(", "240.0)"]
    assert report.summary(trials.filter(pc.field("trial_id") == "nope"))[-1] == "no trial reported a result"


def test_a_report_on_s3(tmp_path: Path, s3_uri: str) -> None:
    remote = storage.join(s3_uri, "report-copy")
    storage.upload_dir(write_confirmed(tmp_path), remote)
    out = report.write_report(remote)
    assert out.markdown.startswith("s3://") and "## Confirmed numbers" in (storage.read_text(out.markdown) or "")
    assert json.loads(storage.read_text(out.summary) or "{}")["confirmed"] is True
    assert (storage.read_bytes(out.plots[0]) or b"")[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", ["summary", "write_report", "load_experiment", "build_report", "ReportError"])
def test_the_public_names_are_exported(name: str) -> None:
    assert name in report.__all__ and getattr(report, name) is not None


def test_a_ratio_below_one_reads_as_more_compute_not_less() -> None:
    """Scratch reaching the target cheaper than pretrained: "1.08 times more compute", never "0.924 times less"."""
    from tlsearch.report.analysis import Hit, TargetRow
    from tlsearch.report.markdown import target_sentence

    cheaper = TargetRow(0.01, 0.375, pretrained=Hit(16.7, 1e11), scratch=Hit(15.4, 5.4e11))
    assert target_sentence(cheaper) == ("pretrained reached 37.50% with 1.08 times more compute (16.7 vs 15.4 "
                                        "device-s, 5.4 times fewer FLOPs)")
    dearer = TargetRow(0.1, 0.9, pretrained=Hit(10.0, 4e11), scratch=Hit(24.0, 2e11))
    assert target_sentence(dearer) == ("pretrained reached 90.00% with 2.4 times less compute (10.0 vs 24.0 "
                                       "device-s, 2 times more FLOPs)")
