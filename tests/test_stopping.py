"""When to stop, without a search: ASHA's rungs per arm and after a restore, pruning told to Optuna, deadlines."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from ray.tune.schedulers import TrialScheduler

from tlsearch.config import SpaceConfig
from tlsearch.space import DefineByRun
from tlsearch.stopping import PruningOptunaSearch, ResumableASHA, TrialTimeout, fit_with_deadline


def _asha(tune_dir: Path, **kwargs: Any) -> ResumableASHA:
    asha = ResumableASHA(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2, tune_dir=str(tune_dir),
                         **kwargs)
    asha.set_search_properties("val_acc", "max")
    return asha


def _trial(trial_id: str, init: str = "pretrained", data_fraction: float = 0.1) -> Any:
    return SimpleNamespace(trial_id=trial_id, config={"init": init, "data_fraction": data_fraction})


def _feed(asha: ResumableASHA, trial: Any, *accs: float) -> list[str]:
    asha.on_trial_add(None, trial)
    return [asha.on_trial_result(None, trial, {"epoch": e, "val_acc": a}) for e, a in enumerate(accs, 1)]


def test_a_slow_arm_is_ranked_only_against_its_own_trials(tmp_path: Path) -> None:
    asha = _asha(tmp_path)
    for i, acc in enumerate((0.90, 0.92, 0.91)):
        _feed(asha, _trial(f"p{i}"), acc)
    # Scratch at epoch 1 is far below every pretrained trial, but first of its own arm: it goes on.
    assert _feed(asha, _trial("s0", "scratch"), 0.30) == [TrialScheduler.CONTINUE]
    # A worse scratch trial is compared with scratch only, and stopped at the first rung.
    assert _feed(asha, _trial("s1", "scratch"), 0.10) == [TrialScheduler.STOP]
    # In one shared bracket (the old behaviour) the first scratch trial would have been stopped.
    shared = _asha(tmp_path, group_by=())
    for i, acc in enumerate((0.90, 0.92, 0.91)):
        _feed(shared, _trial(f"p{i}"), acc)
    assert _feed(shared, _trial("s0", "scratch"), 0.30) == [TrialScheduler.STOP]


def test_groups_can_include_the_data_fraction(tmp_path: Path) -> None:
    asha = _asha(tmp_path, group_by=("init", "data_fraction"))
    for i, acc in enumerate((0.90, 0.92)):
        _feed(asha, _trial(f"a{i}", data_fraction=0.3), acc)
    assert _feed(asha, _trial("b", data_fraction=0.01), 0.50) == [TrialScheduler.CONTINUE]
    assert _feed(asha, _trial("c", data_fraction=0.3), 0.50) == [TrialScheduler.STOP]


def test_restored_asha_rebuilds_each_arms_rungs_from_the_recorded_results(tmp_path: Path) -> None:
    for trial_id, init, acc in (("p0", "pretrained", 0.9), ("p1", "pretrained", 0.95), ("s0", "scratch", 0.4)):
        folder = tmp_path / f"run_trial_{trial_id}"
        folder.mkdir()
        line = {"trial_id": trial_id, "epoch": 1, "val_acc": acc, "config": {"init": init}}
        (folder / "result.json").write_text(json.dumps(line) + "\n")
    asha = _asha(tmp_path)
    assert _feed(asha, _trial("p2"), 0.5) == [TrialScheduler.STOP]  # below the restored pretrained rung
    assert asha.seeded_results == 3
    assert _feed(asha, _trial("s1", "scratch"), 0.6) == [TrialScheduler.CONTINUE]  # above the scratch rung
    fresh = _asha(tmp_path / "nothing-here")
    assert _feed(fresh, _trial("p2"), 0.5) == [TrialScheduler.CONTINUE] and fresh.seeded_results == 0


def test_trials_asha_stopped_are_pruned_in_optuna_and_finished_ones_complete() -> None:
    search = PruningOptunaSearch(space=DefineByRun(SpaceConfig().with_freeze_range(4)), metric="val_acc",
                                 mode="max", max_epochs=4, sampler=optuna.samplers.RandomSampler(seed=0))
    for trial_id in ("stopped", "finished", "failed"):
        assert search.suggest(trial_id) is not None
    search.on_trial_complete("stopped", {"epoch": 2, "val_acc": 0.5})
    search.on_trial_complete("finished", {"epoch": 4, "val_acc": 0.8})
    search.on_trial_complete("failed", None, error=True)
    states = [t.state for t in search._ot_study.trials]  # type: ignore[union-attr]
    assert states == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE,
                      optuna.trial.TrialState.FAIL]


def test_a_trial_past_its_deadline_is_ended_and_others_return_or_raise() -> None:
    started = time.perf_counter()
    with pytest.raises(TrialTimeout, match="deadline of 0.2 s"):
        fit_with_deadline(lambda: time.sleep(30), 0.2)
    assert time.perf_counter() - started < 5
    assert fit_with_deadline(lambda: 7, 5.0) == 7
    assert fit_with_deadline(lambda: 8, None) == 8
    with pytest.raises(ZeroDivisionError):
        fit_with_deadline(lambda: 1 / 0, 5.0)
