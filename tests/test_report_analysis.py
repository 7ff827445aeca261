"""The report's numbers against a small hand-made experiment whose answers were worked out by hand."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import factories
import pytest

from tlsearch import report

# trial: (init, freeze_depth, data_fraction, status, val_acc per epoch, device_s per epoch, train_flops per epoch)
TRIALS = {
    "p1": ("pretrained", 2, 0.1, "completed", [0.60, 0.75, 0.80, 0.82], 10.0, 3e9),
    "s1": ("scratch", 0, 0.1, "stopped", [0.30, 0.40], 12.0, 1.2e9),
    "p2": ("pretrained", 0, 1.0, "completed", [0.70, 0.85, 0.88, 0.90], 50.0, 4e9),
    "s2": ("scratch", 0, 1.0, "completed", [0.40, 0.60, 0.70, 0.80], 60.0, 6e9),
    "s3": ("scratch", 1, 1.0, "stopped", [0.35], 55.0, 5.5e9),
    "e1": ("pretrained", 3, 1.0, "error", [0.50], 5.0, 0.5e9),
}
NEW = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)


def write_experiment(folder: Path, name: str, created: dt.datetime, trials: dict = TRIALS,
                     max_epochs: int = 4) -> None:
    """A search whose trials spend a steady cost per epoch, with no start-up or shared passes to add."""
    trial_rows, epoch_rows = [], []
    for tid, (init, depth, fraction, status, accs, cost, flops) in trials.items():
        best = max(accs)
        trial = factories.trial_row(
            tid, name, status=status, init=init, freeze_depth=depth, data_fraction=fraction, epochs=len(accs),
            best_val_acc=best, best_epoch=accs.index(best) + 1, last_val_acc=accs[-1], device_s=cost * len(accs),
            train_flops=flops * len(accs), startup_s=0.0, error="boom" if status == "error" else None)
        trial_rows.append(trial)
        epoch_rows += [{**r, "train_flops": flops * r["epoch"]} for r in factories.curve_rows(trial, accs, cost)]
    experiment = factories.experiment_row(name, created_at=created, model="resnet10t", dataset="digits",
                                          max_epochs=max_epochs, trials=len(trials))
    factories.write_search(folder / name, experiment, trial_rows, epoch_rows)


def write_results(folder: Path) -> Path:
    """Two searches: "old" (one scratch trial) and, a month later, "new" (the six trials above)."""
    write_experiment(folder, "old", NEW - dt.timedelta(days=30),
                     {"o1": ("scratch", 0, 1.0, "completed", [0.5, 0.6], 1.0, 1e9)}, max_epochs=2)
    write_experiment(folder, "new", NEW)
    return folder


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return write_results(tmp_path)


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
    assert rows[0.1].compute_ratio == 2.4
    # 1.0: scratch's best is 0.80 (s2, epoch 4: 240, 24e9); p2 at epoch 2 (100, 8e9); e1 and s3 never
    assert rows[1.0].target == 0.80
    assert rows[1.0].pretrained == report.Hit(100.0, 8e9, "p2", 2)
    assert rows[1.0].scratch == report.Hit(240.0, 24e9, "s2", 4)
    assert (rows[1.0].compute_ratio, rows[1.0].flops_ratio) == (2.4, 3.0)
    assert rep.unconfirmed and rep.confirmed == []


def test_compute_counts_start_up_and_shared_passes(tmp_path: Path) -> None:
    trial = factories.trial_row("p", init="pretrained", startup_s=7.0, shared_device_s=3.0)
    scratch = factories.trial_row("s", init="scratch", startup_s=7.0, shared_device_s=0.0)
    epochs = factories.curve_rows(trial, [0.9, 0.95]) + factories.curve_rows(scratch, [0.5, 0.9])
    factories.write_search(tmp_path / "exp", factories.experiment_row(source_device_s=50.0), [trial, scratch],
                           epochs)
    rep = build(tmp_path)
    row = rep.to_target[0]
    assert row.pretrained.compute_s == 5.0 + 7.0 + 3.0 and row.scratch.compute_s == 10.0 + 7.0
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
    assert [(p.trial_id, p.compute_s, p.val_acc) for p in rep.front] == [
        ("e1", 5.0, 0.50), ("p1", 40.0, 0.82), ("p2", 200.0, 0.90)]
    assert [t["trial_id"] for t in rep.top] == ["p2", "p1", "s2", "e1", "s1"]


def test_asha_savings_use_the_steady_per_epoch_cost(results_dir: Path) -> None:
    s = build(results_dir).savings
    # s1 stopped at epoch 2 after 12 + 12: steady 12 -> 24 + 2 x 12 = 48. s3 stopped at epoch 1 has no steady
    # epoch: the median of scratch at fraction 1.0 (s2: 60 per epoch) -> 55 + 3 x 60 = 235. Others: as spent.
    assert {t.trial_id: t.full_device_s for t in s.trials} == {
        "p1": 40.0, "s1": 48.0, "p2": 200.0, "s2": 240.0, "s3": 235.0, "e1": 5.0}
    assert (s.spent_device_s, s.full_device_s, s.saved_device_s) == (564.0, 768.0, 204.0)
    assert s.measured == []


def test_the_first_epochs_one_off_work_does_not_inflate_the_estimate() -> None:
    curve = [{"device_s": 30.0}, {"device_s": 35.0}, {"device_s": 40.0}]  # 25 s of set-up in epoch 1
    assert report.analysis.steady_epoch_cost(curve) == 5.0
    assert report.analysis.steady_epoch_cost(curve[:1]) is None


def write_confirmed(tmp_path: Path, one_arm_fraction: bool = False) -> Path:
    """A search of two trials (t1 pretrained, t2 scratch, stopped) and 3 confirmation runs of each.

    Pretrained runs cost 9, 10, 11 device-s an epoch plus 1 start-up and 2 of frozen-feature passes and pass
    0.81 at epoch 2; scratch runs cost 27, 30, 33 an epoch plus 1 start-up, best val_acc 0.79, 0.82, 0.83.
    """
    rows = []
    for r, noise in enumerate((0.9, 1.0, 1.1)):
        rows += [{**row, "source_trial_id": "t1", "shared_device_s": 2.0} for row in factories.confirm_rows(
            "exp", "pretrained", 0.1, r, [0.80, 0.90, 0.92], [0.79, 0.88, 0.90], 10.0 * noise)]
        rows += [{**row, "source_trial_id": "t2"} for row in factories.confirm_rows(
            "exp", "scratch", 0.1, r, [0.50, 0.70, (0.79, 0.82, 0.83)[r]], [0.5, 0.7, 0.8], 30.0 * noise)]
    if one_arm_fraction:
        rows += factories.confirm_rows("exp", "pretrained", 0.5, 0, [0.9, 0.95, 0.96], [0.9, 0.94, 0.95], 20.0)
    t1 = factories.trial_row("t1")
    t2 = factories.trial_row("t2", init="scratch", status="stopped")
    epochs = factories.curve_rows(t1, [0.5, 0.6]) + factories.curve_rows(t2, [0.4, 0.5], first_epoch_extra=20.0)
    factories.write_search(tmp_path / "exp", factories.experiment_row(max_epochs=3), [t1, t2], epochs, rows)
    return tmp_path


def test_confirmed_runs_give_intervals_a_ratio_and_a_verdict(tmp_path: Path) -> None:
    rep = build(write_confirmed(tmp_path))
    (row,) = rep.confirmed
    assert row.target == pytest.approx((0.79 + 0.82 + 0.83) / 3) and row.target_how == "scratch's mean best val_acc"
    # what each run paid by its first epoch at the target: training + start-up + shared passes
    assert list(row.pretrained.to_target.values()) == pytest.approx([18 + 3, 20 + 3, 22 + 3])
    assert row.scratch.to_target == {"scratch-0.1-r0": None, "scratch-0.1-r1": pytest.approx(91.0),
                                     "scratch-0.1-r2": pytest.approx(100.0)}
    assert row.scratch.paid["scratch-0.1-r0"] == pytest.approx(82.0) and row.scratch.reached == 2
    assert row.pretrained.test_acc is not None and row.pretrained.test_acc.value == pytest.approx(0.90)
    assert row.scratch.test_acc is not None and row.scratch.test_acc.value == pytest.approx(0.8)
    # the run that never got there counts what it paid, a lower bound: the ratio can only be understated
    assert row.ratio is not None and row.ratio.value == pytest.approx((82 * 91 * 100 / (21 * 23 * 25)) ** (1 / 3))
    assert row.ratio.low is not None and row.ratio.low > 1 and row.verdict == "saves"
    assert not rep.unconfirmed


def test_a_given_target_scratch_never_reached(tmp_path: Path) -> None:
    (row,) = build(write_confirmed(tmp_path), 0.85).confirmed
    assert (row.target, row.target_how) == (0.85, "given with --target-acc")
    assert row.scratch.reached == 0 and row.pretrained.reached == 3
    assert (row.verdict, row.ratio) == ("scratch never reached", None)


def test_confirm_measures_what_the_asha_estimate_guessed(tmp_path: Path) -> None:
    s = build(write_confirmed(tmp_path)).savings
    # t2 stopped at epoch 2 (25, 30: steady 5) -> 30 + 5 = 35 estimated; its runs to 3 epochs: 81, 90, 99
    assert [(m.trial_id, m.status, m.epochs, m.estimated_device_s, m.runs) for m in s.measured] == [
        ("t1", "completed", 2, 10.0, 3), ("t2", "stopped", 2, 35.0, 3)]
    assert [m.measured_device_s for m in s.measured] == pytest.approx([30.0, 90.0])


def test_a_fraction_confirmed_for_one_arm_only_is_not_compared(tmp_path: Path) -> None:
    rep = build(write_confirmed(tmp_path, one_arm_fraction=True))
    assert [r.data_fraction for r in rep.confirmed] == [0.1]
