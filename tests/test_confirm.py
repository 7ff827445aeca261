"""tlsearch confirm: the best configuration of every (init, data_fraction) retrained with several seeds."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tlsearch import pretrain, results
from tlsearch.cli import cli
from tlsearch.confirm import chosen_configs, planned_runs


def _trial(trial_id: str, init: str, fraction: float, acc: float | None, device_s: float = 1.0) -> dict:
    return {"trial_id": trial_id, "init": init, "data_fraction": fraction, "freeze_depth": 0, "head_lr": 1e-3,
            "backbone_lr": 1e-4, "best_val_acc": acc, "device_s": device_s}


def test_the_best_of_every_arm_and_fraction_is_repeated_with_its_own_seeds() -> None:
    trials = [_trial("a", "pretrained", 0.1, 0.8), _trial("b", "pretrained", 0.1, 0.9),
              _trial("c", "scratch", 0.1, 0.5), _trial("d", "scratch", 0.3, None),
              _trial("e", "scratch", 0.3, 0.7, 5.0), _trial("f", "scratch", 0.3, 0.7, 2.0)]
    chosen = chosen_configs(trials)
    assert [t["trial_id"] for t in chosen] == ["b", "c", "f"]  # a tie goes to the cheaper trial
    runs = planned_runs(chosen, repeats=2, seed=7)
    assert [r["run_id"] for r in runs] == ["pretrained-0.1-r0", "pretrained-0.1-r1", "scratch-0.1-r0",
                                           "scratch-0.1-r1", "scratch-0.3-r0", "scratch-0.3-r1"]
    assert [r["seed"] for r in runs[:2]] == [1007, 2007] and runs[0]["source_trial_id"] == "b"
    assert {r["seed"] for r in runs} == {1007, 2007}  # repeat r has one seed across configurations


@pytest.mark.slow
def test_confirm_runs_to_max_epochs_scores_test_every_epoch_and_resumes(tmp_path: Path, ray_2_cpus: None) -> None:
    weights = tmp_path / "source.safetensors"
    pretrain("digits-split", "test_resnet", weights, epochs=1, image_size=16, echo=lambda _: None)
    folder = tmp_path / "results"
    runner = CliRunner()
    search = ["run", "--dataset", "digits-split", "--model", "test_resnet", "--weights", str(weights),
              "--trials", "2", "--max-epochs", "2", "--data-fraction", "0.5", "--name", "c",
              "--results-dir", str(folder)]
    assert runner.invoke(cli, search, catch_exceptions=False).exit_code == 0
    bad = runner.invoke(cli, ["confirm", str(folder), "--repeats", "0"])
    assert bad.exit_code == 2 and "--repeats" in bad.output and not (folder / "c" / "confirm.parquet").exists()
    unknown = runner.invoke(cli, ["confirm", str(folder), "--experiment", "nope"])
    assert unknown.exit_code == 2 and "nope" in unknown.output

    done = runner.invoke(cli, ["confirm", str(folder), "--repeats", "2"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    rows = results.open(folder).confirm.to_table().to_pylist()
    runs = {r["run_id"] for r in rows}
    assert runs == {"pretrained-0.5-r0", "pretrained-0.5-r1", "scratch-0.5-r0", "scratch-0.5-r1"}
    for run in runs:
        mine = sorted((r for r in rows if r["run_id"] == run), key=lambda r: r["epoch"])
        assert [r["epoch"] for r in mine] == [1, 2]  # to max_epochs: no early stopping
        assert all(r["test_acc"] is not None and 0 <= r["test_acc"] <= 1 for r in mine)
        assert mine[0]["device_s"] < mine[1]["device_s"] and mine[0]["startup_s"] > 0
    assert len({r["seed"] for r in rows}) == 2

    again = runner.invoke(cli, ["confirm", str(folder), "--repeats", "2"], catch_exceptions=False)
    assert again.exit_code == 0 and "resuming" in again.output
    assert pq.read_table(folder / "c" / "confirm.parquet").num_rows == len(rows)
    changed = runner.invoke(cli, ["confirm", str(folder), "--repeats", "3"])
    assert changed.exit_code == 2 and "--restart" in changed.output
