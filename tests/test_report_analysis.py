"""The report's numbers against a small hand-made experiment whose answers were worked out by hand."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import factories
import pyarrow as pa
import pytest

from tlsearch import report, results

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


def test_compute_to_target_is_per_fraction_against_scratchs_best_there(results_dir: Path) -> None:
    rep = build(results_dir)
    rows = {row.data_fraction: row for row in rep.to_target}
    assert list(rows) == [0.1, 1.0]  # never a row across fractions
    # 0.1: scratch's best there is 0.40 (s1, epoch 2: 24 device-s); p1 passes it at epoch 1 (10, 3e9)
    assert rows[0.1].target == 0.40
    assert rows[0.1].pretrained == report.Hit(10.0, 3e9, "p1", 1)
    assert rows[0.1].scratch == report.Hit(24.0, 2.4e9, "s1", 2)
    assert rows[0.1].device_ratio == 2.4
    # 1.0: scratch's best is 0.80 (s2, epoch 4: 240, 24e9); p2 at epoch 2 (100, 8e9); e1 and s3 never
    assert rows[1.0].target == 0.80
    assert rows[1.0].pretrained == report.Hit(100.0, 8e9, "p2", 2)
    assert rows[1.0].scratch == report.Hit(240.0, 24e9, "s2", 4)
    assert (rows[1.0].device_ratio, rows[1.0].flops_ratio) == (2.4, 3.0)
    assert rep.unconfirmed and rep.confirmed == []


def test_compute_counts_start_up_and_shared_passes(tmp_path: Path) -> None:
    trial = factories.trial_row("p", init="pretrained", startup_s=7.0, shared_device_s=3.0)
    scratch = factories.trial_row("s", init="scratch", startup_s=7.0, shared_device_s=0.0)
    epochs = factories.curve_rows(trial, [0.9, 0.95]) + factories.curve_rows(scratch, [0.5, 0.9])
    factories.write_search(tmp_path / "exp", factories.experiment_row(source_device_s=50.0), [trial, scratch],
                           epochs)
    rep = build(tmp_path)
    row = rep.to_target[0]
    assert row.pretrained.device_s == 5.0 + 7.0 + 3.0 and row.scratch.device_s == 10.0 + 7.0
    assert rep.costs == report.analysis.Costs(training_s=20.0, startup_s=14.0, shared_s=3.0, source_s=50.0)


def test_compute_to_target_with_a_given_target(results_dir: Path) -> None:
    rep = build(results_dir, 0.85)
    rows = {row.data_fraction: row for row in rep.to_target}
    assert rows[0.1].pretrained == report.Hit() and rows[0.1].scratch == report.Hit()
    assert rows[1.0].pretrained == report.Hit(100.0, 8e9, "p2", 2)
    assert rows[1.0].scratch == report.Hit()
    with pytest.raises(report.ReportError, match="got 85; did you mean 0.85"):
        build(results_dir, 85)


def test_best_accuracy_groups_and_pareto(results_dir: Path) -> None:
    rep = build(results_dir)
    assert rep.best is not None and rep.best["trial_id"] == "p2" and rep.best["best_val_acc"] == 0.90
    assert [(g.init, g.key, g.best_val_acc, g.trials) for g in rep.by_freeze] == [
        ("pretrained", 0, 0.90, 1), ("pretrained", 2, 0.82, 1), ("pretrained", 3, 0.50, 1),
        ("scratch", 0, 0.80, 2), ("scratch", 1, 0.35, 1)]
    assert [(g.init, g.key, g.best_val_acc, g.trials) for g in rep.by_fraction] == [
        ("pretrained", 0.1, 0.82, 1), ("pretrained", 1.0, 0.90, 2), ("scratch", 0.1, 0.40, 1),
        ("scratch", 1.0, 0.80, 2)]
    assert [(p.trial_id, p.device_s, p.val_acc) for p in rep.front] == [
        ("e1", 5.0, 0.50), ("p1", 40.0, 0.82), ("p2", 200.0, 0.90)]
    assert [t["trial_id"] for t in rep.top] == ["p2", "p1", "s2", "e1", "s1"]


def test_asha_savings_use_the_steady_per_epoch_cost(results_dir: Path) -> None:
    s = build(results_dir).savings
    # s1 stopped at epoch 2 after 12 + 12: steady 12 -> 24 + 2 x 12 = 48. s3 stopped at epoch 1 has no steady
    # epoch: the median of scratch at fraction 1.0 (s2: 60 per epoch) -> 55 + 3 x 60 = 235. Others: as spent.
    assert {t.trial_id: t.full_device_s for t in s.trials} == {
        "p1": 40.0, "s1": 48.0, "p2": 200.0, "s2": 240.0, "s3": 235.0, "e1": 5.0}
    assert (s.spent_device_s, s.full_device_s, s.saved_device_s) == (564.0, 768.0, 204.0)
    assert s.confirmed_full_s is None


def test_the_first_epochs_one_off_work_does_not_inflate_the_estimate() -> None:
    curve = [{"device_s": 30.0}, {"device_s": 35.0}, {"device_s": 40.0}]  # 25 s of set-up in epoch 1
    assert report.analysis.steady_epoch_cost(curve) == 5.0
    assert report.analysis.steady_epoch_cost(curve[:1]) is None


def _confirm_rows(tmp_path: Path, scratch_cost: float, pretrained_cost: float) -> Path:
    rows = []
    for r, noise in enumerate((0.9, 1.0, 1.1)):
        rows += factories.confirm_rows("exp", "pretrained", 0.1, r, [0.80, 0.90, 0.92], [0.79, 0.88, 0.90],
                                       pretrained_cost * noise)
        rows += factories.confirm_rows("exp", "scratch", 0.1, r, [0.50, 0.70, 0.80 + r / 100], [0.5, 0.7, 0.8],
                                       scratch_cost * noise)
    trial = factories.trial_row("t1")
    factories.write_search(tmp_path / "exp", factories.experiment_row(max_epochs=3), [trial],
                           factories.curve_rows(trial, [0.5, 0.6]), confirm=rows)
    return tmp_path


def test_confirmed_runs_give_intervals_a_ratio_and_a_verdict(tmp_path: Path) -> None:
    rep = build(_confirm_rows(tmp_path, scratch_cost=30.0, pretrained_cost=10.0))
    (row,) = rep.confirmed
    # target: scratch's mean best val_acc = (0.80 + 0.81 + 0.82) / 3 = 0.81
    assert row.target == pytest.approx(0.81) and row.target_how == "scratch's mean best val_acc"
    # pretrained passes 0.81 at epoch 2 (paid 2 x cost + 1 start-up), scratch at its epoch 3 (only r1, r2 do)
    assert sorted(row.pretrained.to_target) == pytest.approx([19.0, 21.0, 23.0])
    assert sorted(row.scratch.to_target) == pytest.approx([91.0, 100.0])
    assert row.pretrained.test_acc is not None and row.pretrained.test_acc.value == pytest.approx(0.90)
    assert row.ratio is not None and row.ratio.low is not None and row.ratio.low > 1 and row.verdict == "saves"
    assert not rep.unconfirmed


def test_scratch_that_never_reaches_the_target_is_said_so(tmp_path: Path) -> None:
    rep = build(_confirm_rows(tmp_path, scratch_cost=30.0, pretrained_cost=10.0), 0.85)
    assert rep.confirmed[0].verdict == "scratch never reached"
