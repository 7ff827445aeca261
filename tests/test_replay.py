"""ASHA replayed offline on hand-made curves whose decisions were worked out by hand."""

from __future__ import annotations

from pathlib import Path

import factories
import pytest
from click.testing import CliRunner

from tlsearch import storage
from tlsearch.cli import cli
from tlsearch.replay import Curve, ReplayError, load_curves, parse_ints, recorded_outcome, replay, rungs


def curve(tid: str, accs: list[float], status: str = "completed", cost: float = 10.0) -> Curve:
    epochs = list(range(1, len(accs) + 1))
    return Curve(tid, epochs, accs, [cost * e for e in epochs], status)


# max_epochs 8, grace 1, reduction 2 -> rungs 1, 2, 4; a trial continues unless below the median so far.
CURVES = [
    curve("A", [0.50, 0.60, 0.65, 0.70, 0.72, 0.74, 0.75, 0.76]),  # first everywhere: runs to 8 (80 device-s)
    curve("B", [0.40, 0.50, 0.55, 0.60, 0.61, 0.62, 0.63, 0.64]),  # rung 1: 0.40 < median[0.5] -> stop at 1 (10)
    curve("C", [0.60, 0.55, 0.70, 0.80, 0.81, 0.82, 0.83, 0.84]),  # rung 1: 0.60 >= 0.45; rung 2: 0.55 < 0.60 -> 2 (20)
    curve("D", [0.45, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.90]),  # rung 1: 0.45 < median[.5,.4,.6]=0.5 -> 1 (10)
    # rung 1: 0.70 >= 0.475; rung 2: 0.70 >= median[.6,.55]=0.575; rung 4: 0.65 < 0.70 -> stop at 4 (40)
    curve("E", [0.70, 0.70, 0.68, 0.65, 0.95, 0.95, 0.95, 0.99]),
    # the real ASHA stopped F after epoch 2; this setting would let it go on: evaluated up to epoch 2 only (20)
    curve("F", [0.80, 0.80], status="stopped"),
]


def test_rungs() -> None:
    assert rungs(1, 2, 8) == [1, 2, 4]
    assert rungs(1, 3, 8) == [1, 3]
    assert rungs(2, 2, 8) == [2, 4]
    assert rungs(1, 2, 9) == [1, 2, 4, 8]
    assert rungs(3, 2, 3) == []


def test_replay_stops_the_trials_worked_out_by_hand() -> None:
    out = replay(CURVES, grace=1, reduction=2, max_epochs=8)
    assert out.rungs == [1, 2, 4]
    assert out.stopped() == {"B": 1, "C": 2, "D": 1, "E": 4}
    assert [t.stop_epoch for t in out.trials] == [8, 1, 2, 1, 4, 2]
    assert out.cut_short == ["F"]
    assert out.device_s == 80 + 10 + 20 + 10 + 40 + 20
    best = out.best
    assert best is not None and best.trial_id == "F" and best.best_val_acc == 0.80
    # E's 0.99 at epoch 8 and D's 0.90 at epoch 2 are never seen: they were stopped before
    assert {t.trial_id: t.best_val_acc for t in out.trials}["E"] == 0.70


def test_a_lenient_setting_stops_nothing_and_costs_what_was_recorded() -> None:
    out = replay(CURVES, grace=8, reduction=2, max_epochs=8)
    assert out.rungs == [] and out.stopped() == {}
    spent, best = recorded_outcome(CURVES)
    assert out.device_s == spent == 80 * 5 + 20
    assert out.best is not None and out.best.best_val_acc == best == 0.99


def test_reduction_three_keeps_only_the_top_third() -> None:
    # rungs 1, 3; cutoff = 66.67th percentile of the values so far
    out = replay(CURVES, grace=1, reduction=3, max_epochs=8)
    # B: 0.40 < 0.50 -> 1. C: rung1 [.5,.4] p66.7=0.4667 -> go on; rung3 0.70 >= [0.65] -> go on to 8.
    # D: rung1 [.5,.4,.6] p66.7=0.5333 -> 0.45 stops. E: rung1 0.70 >= p66.7[.5,.4,.6,.45]=0.5 ; rung3: 0.68 < p66.7
    # [.65,.70]=0.6833 -> stops at 3. F: rung1 0.80 goes on, no epoch 3 recorded -> cut short at 2.
    assert out.stopped() == {"B": 1, "D": 1, "E": 3}
    assert out.cut_short == ["F"]
    assert out.device_s == 80 + 10 + 80 + 10 + 30 + 20


def test_matches_ray_asha_bracket() -> None:
    asha = pytest.importorskip("ray.tune.schedulers.async_hyperband")  # importing does not start Ray

    class FakeTrial:
        def __init__(self, trial_id: str) -> None:
            self.trial_id = trial_id

    for grace, reduction in [(1, 2), (1, 3), (2, 2)]:
        bracket = asha._Bracket(grace, 8, reduction, 0)
        ray_stops = {}
        for c in CURVES:
            trial = FakeTrial(c.trial_id)
            for epoch, acc in zip(c.epochs, c.val_acc, strict=True):
                if epoch >= 8:
                    break
                if bracket.on_result(trial, epoch, acc) == "STOP":
                    ray_stops[c.trial_id] = epoch
                    break
        assert replay(CURVES, grace, reduction, 8).stopped() == ray_stops, (grace, reduction)


def test_bad_settings_are_explained() -> None:
    with pytest.raises(ReplayError, match="--reduction must be 2 or more, got 1"):
        replay(CURVES, 1, 1, 8)
    with pytest.raises(ReplayError, match="--grace must be 1 or more epochs, got 0"):
        replay(CURVES, 0, 2, 8)
    with pytest.raises(ReplayError, match="whole numbers separated by commas, got '1,x'"):
        parse_ints(["1,x"], "--grace")
    assert parse_ints(["1,2", "2", "4"], "--grace") == [1, 2, 4]


def _write(folder: str | Path) -> str:
    """CURVES as a search ``exp`` under ``folder`` (a path or a URI)."""
    trials, epochs = [], []
    for c in CURVES:
        trial = factories.trial_row(c.trial_id, "exp", status=c.status, epochs=len(c.epochs),
                                    best_val_acc=max(c.val_acc), device_s=c.device_s[-1])
        trials.append(trial)
        epochs += [factories.epoch_row(trial, e, val_acc=a, device_s=d)
                   for e, a, d in zip(c.epochs, c.val_acc, c.device_s, strict=True)]
    experiment = factories.experiment_row("exp", max_epochs=8, grace_period=1, reduction_factor=2)
    return factories.write_search(storage.join(str(folder), "exp"), experiment, trials, epochs)


def test_load_curves_reads_the_tables_back_in_recorded_order(tmp_path: Path) -> None:
    _write(tmp_path)
    info, curves = load_curves(tmp_path)
    assert info["experiment"] == "exp" and info["max_epochs"] == 8
    assert curves == CURVES


def test_load_curves_over_s3(s3_uri: str) -> None:
    remote = storage.join(s3_uri, "replay")
    _write(remote)
    info, curves = load_curves(remote, "exp")
    assert info["experiment"] == "exp" and curves == CURVES


def test_cli_replay_prints_each_setting(tmp_path: Path) -> None:
    _write(tmp_path)
    res = CliRunner().invoke(
        cli, ["replay", str(tmp_path), "--grace", "1,8", "--reduction", "2", "--reduction", "3"], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("replay of exp: 6 trials, max_epochs 8, recorded with grace 1 reduction 2: 420.0")
    rows = {tuple(line.split()[:2]): line.split() for line in lines[2:6]}
    assert rows[("1", "2")][2:5] == ["1,2,4", "180.0", "42.9%"]
    assert rows[("1", "3")][2:5] == ["1,3", "230.0", "54.8%"]
    assert rows[("8", "2")][2:6] == ["(none)", "420.0", "100.0%", "0.9900"]
    assert any(line.startswith("cut short:") for line in lines)


def test_cli_replay_bad_value_exits_2(tmp_path: Path) -> None:
    _write(tmp_path)
    res = CliRunner().invoke(cli, ["replay", str(tmp_path), "--grace", "1", "--reduction", "1"], catch_exceptions=False)
    assert res.exit_code == 2
    assert "--reduction must be 2 or more, got 1" in res.output
