"""The report's numbers against a small hand-made experiment whose answers were worked out by hand."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from tlsearch import report, results
from tlsearch.cli import cli

# trial: (init, freeze_depth, data_fraction, status, val_acc per epoch, device_s per epoch, train_flops per epoch)
TRIALS = {
    "p1": ("pretrained", 2, 0.1, "completed", [0.60, 0.75, 0.80, 0.82], [10, 20, 30, 40], [3e9, 6e9, 9e9, 12e9]),
    "s1": ("scratch", 0, 0.1, "stopped", [0.30, 0.40], [12, 24], [1.2e9, 2.4e9]),
    "p2": ("pretrained", 0, 1.0, "completed", [0.70, 0.85, 0.88, 0.90], [50, 100, 150, 200], [4e9, 8e9, 12e9, 16e9]),
    "s2": ("scratch", 0, 1.0, "completed", [0.40, 0.60, 0.70, 0.80], [60, 120, 180, 240], [6e9, 12e9, 18e9, 24e9]),
    "s3": ("scratch", 1, 1.0, "stopped", [0.35], [55], [5.5e9]),
    "e1": ("pretrained", 3, 1.0, "error", [0.50], [5], [0.5e9]),
}
NEW = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)


def tables(name: str, created: dt.datetime, trials: dict = TRIALS, max_epochs: int = 4) -> dict[str, pa.Table]:
    trial_rows, epoch_rows = [], []
    for tid, (init, depth, fraction, status, accs, costs, flops) in trials.items():
        hp = {"init": init, "freeze_depth": depth, "head_lr": 1e-3, "backbone_lr": 1e-4, "data_fraction": fraction}
        for epoch, (acc, cost, flop) in enumerate(zip(accs, costs, flops, strict=True), start=1):
            epoch_rows.append(
                {
                    "experiment": name,
                    "trial_id": tid,
                    **hp,
                    "epoch": epoch,
                    "val_acc": acc,
                    "device_s": float(cost),
                    "wall_s": cost / 2,
                    "train_flops": flop,
                }
            )
        best = max(accs)
        trial_rows.append(
            {
                "experiment": name,
                "trial_id": tid,
                "status": status,
                **hp,
                "epochs": len(accs),
                "best_val_acc": best,
                "best_epoch": accs.index(best) + 1,
                "last_val_acc": accs[-1],
                "device_s": float(costs[-1]),
                "wall_s": costs[-1] / 2,
                "train_flops": flops[-1],
                "train_size": int(1000 * fraction),
                "error": "boom" if status == "error" else None,
            }
        )
    experiment = {
        "experiment": name,
        "created_at": created,
        "model": "resnet10t",
        "dataset": "digits",
        "max_epochs": max_epochs,
        "grace_period": 1,
        "reduction_factor": 2,
        "trials": len(trials),
    }
    return {
        "experiments": results.to_table("experiments", [experiment]),
        "trials": results.to_table("trials", trial_rows),
        "epochs": results.to_table("epochs", epoch_rows),
    }


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    older = {"o1": ("scratch", 0, 1.0, "completed", [0.5, 0.6], [1, 2], [1e9, 2e9])}
    results.write_search(tmp_path / "old", tables("old", NEW - dt.timedelta(days=30), older, max_epochs=2))
    results.write_search(tmp_path / "new", tables("new", NEW))
    return tmp_path


def build(results_dir: Path, target: float | None = None) -> report.Report:
    return report.build_report(report.load_experiment(results_dir), target)


def test_newest_experiment_is_the_default(results_dir: Path) -> None:
    assert report.load_experiment(results_dir).name == "new"
    assert report.load_experiment(results_dir, "old").name == "old"
    with pytest.raises(report.ReportError, match="no experiment 'nope'; valid: new, old"):
        report.load_experiment(results_dir, "nope")


def test_compute_to_target_with_the_default_target(results_dir: Path) -> None:
    rep = build(results_dir)
    assert rep.target == 0.80  # the best scratch val_acc (s2, epoch 4)
    rows = {row.data_fraction: row for row in rep.to_target}
    assert list(rows) == [0.1, 1.0, None]
    # fraction 0.1: p1 first reaches 0.80 at epoch 3 (30 device-s, 9e9 FLOPs); s1 never does
    assert rows[0.1].pretrained == report.Hit(30.0, 9e9, "p1", 3)
    assert rows[0.1].scratch == report.Hit()
    assert rows[0.1].device_ratio is None
    assert report.ratio_text(rows[0.1].device_ratio, rows[0.1].pretrained, rows[0.1].scratch) == "scratch not reached"
    # fraction 1.0: p2 at epoch 2 (100, 8e9); s2 at epoch 4 (240, 24e9); e1 and s3 never
    assert rows[1.0].pretrained == report.Hit(100.0, 8e9, "p2", 2)
    assert rows[1.0].scratch == report.Hit(240.0, 24e9, "s2", 4)
    assert rows[1.0].device_ratio == 2.4
    assert rows[1.0].flops_ratio == 3.0
    # all fractions: least device-s from p1 (30), least FLOPs from p2 (8e9), taken independently
    assert rows[None].pretrained == report.Hit(30.0, 8e9, "p1", 3)
    assert rows[None].device_ratio == 8.0
    assert rows[None].flops_ratio == 3.0
    assert rep.data_needed == {"pretrained": 0.1, "scratch": 1.0}


def test_compute_to_target_with_a_given_target(results_dir: Path) -> None:
    rep = build(results_dir, 0.85)
    rows = {row.data_fraction: row for row in rep.to_target}
    assert rows[0.1].pretrained == report.Hit() and rows[0.1].scratch == report.Hit()
    assert rows[1.0].pretrained == report.Hit(100.0, 8e9, "p2", 2)
    assert rows[1.0].scratch == report.Hit()
    assert rep.data_needed == {"pretrained": 1.0, "scratch": None}
    with pytest.raises(report.ReportError, match="got 85; did you mean 0.85"):
        build(results_dir, 85)


def test_best_accuracy_groups_and_pareto(results_dir: Path) -> None:
    rep = build(results_dir)
    assert rep.best is not None and rep.best["trial_id"] == "p2" and rep.best["best_val_acc"] == 0.90
    assert [(g.init, g.key, g.best_val_acc, g.trials) for g in rep.by_freeze] == [
        ("pretrained", 0, 0.90, 1),
        ("pretrained", 2, 0.82, 1),
        ("pretrained", 3, 0.50, 1),
        ("scratch", 0, 0.80, 2),
        ("scratch", 1, 0.35, 1),
    ]
    assert [(g.init, g.key, g.best_val_acc, g.trials) for g in rep.by_fraction] == [
        ("pretrained", 0.1, 0.82, 1),
        ("pretrained", 1.0, 0.90, 2),
        ("scratch", 0.1, 0.40, 1),
        ("scratch", 1.0, 0.80, 2),
    ]
    assert [(p.trial_id, p.device_s, p.val_acc) for p in rep.front] == [
        ("e1", 5.0, 0.50),
        ("p1", 40.0, 0.82),
        ("p2", 200.0, 0.90),
    ]
    assert [t["trial_id"] for t in rep.top] == ["p2", "p1", "s2", "e1", "s1"]


def test_asha_savings_extrapolate_stopped_trials_only(results_dir: Path) -> None:
    s = build(results_dir).savings
    # stopped: s1 24 device-s at epoch 2 -> 48; s3 55 at epoch 1 -> 220; the error trial e1 counts its 5
    assert {t.trial_id: t.full_device_s for t in s.trials} == {
        "p1": 40.0,
        "s1": 48.0,
        "p2": 200.0,
        "s2": 240.0,
        "s3": 220.0,
        "e1": 5.0,
    }
    assert s.spent_device_s == 564.0
    assert s.full_device_s == 753.0
    assert s.saved_device_s == 189.0
    assert s.saved_share == 189.0 / 753.0
    assert s.spent_train_flops == pytest.approx(60.4e9, rel=1e-12)
    assert s.full_train_flops == pytest.approx(79.3e9, rel=1e-12)


def test_write_report_files_and_headline(results_dir: Path) -> None:
    out = report.write_report(results_dir)
    assert out.folder == results_dir / "new" / "report"
    assert len(out.plots) == 6
    for png in out.plots:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    md = out.markdown.read_text()
    for needle in (
        "## Compute to target",
        "| 1 | 100.0 device-s, 8e+09 FLOPs (trial p2, epoch 2) | 240.0 device-s, "
        "2.4e+10 FLOPs (trial s2, epoch 4) | 2.4x | 3x |",
        "| 0.1 | 30.0 device-s",
        "not reached",
        "| spent | 564.0 |",
        "| saved | 189.0 (25.1%) |",
        "extrapolated linearly",
        "How:",
        "![Pareto front](pareto.png)",
    ):
        assert needle in md, needle
    text = "\n".join(out.lines)
    assert "best: trial p2: pretrained, freeze_depth 0" in text
    assert "target val_acc 80.00% (default: the best val_acc any scratch trial reached)" in text
    assert (
        "data_fraction 1: pretrained reached 80.00% with 2.4 times less compute (100.0 vs 240.0 device-s, "
        "3x fewer FLOPs)"
    ) in text
    assert "data_fraction 0.1: pretrained reached 80.00% in 30.0 device-s; scratch: not reached" in text
    assert "any data fraction: pretrained reached 80.00% with 8 times less compute" in text
    assert "least labelled data to reach the target: pretrained data_fraction 0.1, scratch data_fraction 1" in text
    assert "saved 189.0 (25.1%)" in text


def test_cli_report(results_dir: Path) -> None:
    res = CliRunner().invoke(
        cli, ["report", str(results_dir), "--experiment", "old", "--target-acc", "0.55"], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    assert "experiment old: 1 trials" in res.output
    assert "scratch reached 55.00% in 2.0 device-s; pretrained: not reached" in res.output
    assert (results_dir / "old" / "report" / "report.md").is_file()
    assert not (results_dir / "new" / "report").exists()
    bad = CliRunner().invoke(cli, ["report", str(results_dir), "--experiment", "nope"], catch_exceptions=False)
    assert bad.exit_code == 2 and "no experiment 'nope'; valid: new, old" in bad.output


def test_summary_still_works(results_dir: Path) -> None:
    trials = results.open(results_dir).trials.to_table(filter=pa.compute.field("experiment") == "new")
    lines = report.summary(trials)
    assert lines[0] == "trials: 6 (3 completed, 2 stopped, 1 error)"
    assert lines[1].startswith("best: trial p2 val_acc 0.9000 at epoch 4")
