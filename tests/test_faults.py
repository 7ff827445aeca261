"""Fault injection on a local 2-CPU Ray: a trial that raises, a worker SIGKILLed once, a trial that hangs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tlsearch import results, storage
from tlsearch.config import build_config
from tlsearch.search import run_search
from tlsearch.stopping import recorded_results
from tlsearch.worker import FAULTS_ENV

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faults_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Set before Ray starts, so every worker process inherits it; each test writes the faults it wants."""
    path = tmp_path_factory.mktemp("faults") / "faults.json"
    os.environ[FAULTS_ENV] = str(path)
    yield path
    del os.environ[FAULTS_ENV]


@pytest.fixture
def faults(faults_file: Path, ray_2_cpus: None) -> Iterator[Path]:
    yield faults_file
    faults_file.unlink(missing_ok=True)


def _search(tmp_path: Path, name: str, **overrides: object) -> tuple:
    options = dict(dataset="digits-split", model="test_resnet", init="scratch", image_size=16, trials=1,
                   max_epochs=3, name=name, results_dir=str(tmp_path / "results"), batch_size=64,
                   data_fraction="0.5")
    options.update(overrides)
    config = build_config(None, **options)
    run_search(config, echo=lambda _: None, verbose=0)
    tables = results.open(tmp_path / "results" / name)
    return tables.trials.to_table().to_pylist(), tables.epochs.to_table().to_pylist(), config


def test_a_trial_that_raises_is_recorded_and_the_search_goes_on(tmp_path: Path, faults: Path) -> None:
    faults.write_text(json.dumps({"raise_at_epoch": 2}))
    # grace 2: ASHA may not stop either trial at epoch 1, before the fault (the later of two would be).
    trials, epochs, _ = _search(tmp_path, "raises", trials=2, grace_period=2)
    assert len(trials) == 2
    for trial in trials:
        assert trial["status"] == "error"
        assert "injected fault at epoch 2" in trial["error"]
        assert trial["epochs"] == 1 and trial["best_val_acc"] is not None  # epoch 1 is kept
    assert sorted(e["epoch"] for e in epochs) == [1, 1]


def test_a_killed_worker_continues_from_its_checkpoint(tmp_path: Path, faults: Path) -> None:
    marker = tmp_path / "killed"
    faults.write_text(json.dumps({"kill_at_epoch": 2, "kill_marker": str(marker)}))
    trials, epochs, config = _search(tmp_path, "killed")
    assert marker.exists(), "the fault did not fire"
    assert [t["status"] for t in trials] == ["completed"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    tune_dir = storage.join(config.results_dir, "killed", "_ray", "tune")
    reported = [r["epoch"] for r in recorded_results(tune_dir) if not r.get("restored")]
    assert reported == [1, 2, 3], "the restarted worker started over instead of resuming at epoch 2"


def test_a_hung_trial_is_ended_by_its_deadline(tmp_path: Path, faults: Path) -> None:
    faults.write_text(json.dumps({"hang_at_epoch": 2}))
    trials, epochs, _ = _search(tmp_path, "hangs", trial_timeout_s=45.0)
    assert [t["status"] for t in trials] == ["timeout"]
    assert "deadline of 45 s" in trials[0]["error"]
    assert [e["epoch"] for e in epochs] == [1]


def test_a_run_restored_from_its_final_checkpoint_reports_its_epochs_again(tmp_path: Path, ray_2_cpus: None) -> None:
    """A resumed search re-runs a trial whose driver died after the final checkpoint but before Tune logged it:
    the Train run restores from that checkpoint and must report the final epoch again, or Tune gets no result.
    """
    import ray
    from ray.train.v2.api.callback import UserCallback

    from tlsearch.search import Resources
    from tlsearch.search.prepare import prepare
    from tlsearch.search.trial import build_trainer

    config = build_config(None, dataset="digits-split", model="test_resnet", init="scratch", image_size=16,
                          max_epochs=2, results_dir=str(tmp_path / "results"))
    plan = prepare(config)
    resources = Resources(num_workers=1, use_gpu=False, cpus_per_worker=1.0, gpus_per_worker=0.0, threads=1,
                          concurrency=1)
    spec = plan.trial_spec(resources)
    payload = [ray.put(plan.payload())]
    hp = {"init": "scratch", "freeze_depth": 0, "head_lr": 1e-3, "backbone_lr": 1e-3, "data_fraction": 0.5}

    class ReportsToFile(UserCallback):  # defined here so Ray pickles it by value for the Train controller
        """Appends every report's epoch (r: restored) to a file: what TuneReportCallback hands to Tune."""

        def __init__(self, path: Path) -> None:
            self.path = path

        def after_report(self, run_context: object, metrics: list[dict], checkpoint: object) -> None:
            with self.path.open("a") as fh:
                fh.write(f"{metrics[0]['epoch']}{'r' if metrics[0].get('restored') else ''}\n")

    def fit(log: Path) -> list[int]:
        build_trainer(hp, name="final", spec=spec, payload=payload, resources=resources,
                      storage=str(tmp_path / "train"), callbacks=[ReportsToFile(log)]).fit()
        return log.read_text().split() if log.exists() else []

    assert fit(tmp_path / "first.log") == ["1", "2"]
    # Same name and storage, as a restored trial refits: it restores from the epoch-2 checkpoint, reports every
    # checkpointed epoch again, flagged (Tune starts the trial's result log afresh and may not have logged epoch 2
    # before the driver died), and has nothing left to train.
    assert fit(tmp_path / "again.log") == ["1r", "2r"]
