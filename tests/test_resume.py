"""The driver of a search is SIGKILLed mid-search; running the same command again resumes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tlsearch import pretrain, results
from tlsearch.stopping import recorded_results
from tlsearch.worker import FAULTS_ENV

pytestmark = pytest.mark.slow


def _command(weights: Path, results_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tlsearch", "run", "--dataset", "digits-split", "--model", "test_resnet",
            "--weights", str(weights), "--trials", "4", "--max-epochs", "3", "--name", "resume",
            "--results-dir", str(results_dir), "--data-fraction", "0.5", "--seed", "1", *extra]


def _stop_ray() -> None:
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True,
                   timeout=120, check=False)


def test_killed_driver_resumes_with_exactly_n_trials(tmp_path: Path) -> None:
    weights = tmp_path / "source.safetensors"
    pretrain("digits-split", "test_resnet", weights, epochs=1, image_size=16, echo=lambda _: None)
    results_dir = tmp_path / "results"
    tune_dir = results_dir / "resume" / "_ray" / "tune"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # The first run's trials stop at the start of epoch 2, after epoch 1's checkpoint, so the kill finds them
    # mid-trial and the re-run (without the fault) must continue them from that checkpoint.
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"hang_at_epoch": 2}))
    first = subprocess.Popen(_command(weights, results_dir), env={**env, FAULTS_ENV: str(faults)},
                             start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            if len({r["trial_id"] for r in recorded_results(str(tune_dir))}) >= 2:
                break
            time.sleep(0.5)
        assert first.poll() is None, "the search ended before it could be interrupted"
        before = list(recorded_results(str(tune_dir)))
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        first.wait()
        _stop_ray()
    assert not (results_dir / "resume" / "trials.parquet").exists()

    second = subprocess.run(_command(weights, results_dir), env=env, capture_output=True, text=True, timeout=600)
    _stop_ray()
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming 'resume'" in second.stdout

    tables = results.open(results_dir / "resume")
    trials = tables.trials.to_table().to_pylist()
    epochs = tables.epochs.to_table().to_pylist()
    assert len(trials) == 4 and len({t["trial_id"] for t in trials}) == 4
    assert {t["status"] for t in trials} <= {"completed", "stopped"}
    keys = [(e["trial_id"], e["epoch"]) for e in epochs]
    assert len(keys) == len(set(keys)), "duplicate epoch rows after the resume"
    assert sum(t["epochs"] for t in trials) == len(epochs)
    for trial in trials:  # no epoch lost: Tune restarts a resumed trial's result log, the worker repeats it
        assert sorted(e["epoch"] for e in epochs if e["trial_id"] == trial["trial_id"]) == list(
            range(1, trial["epochs"] + 1))
    repeated = {r["trial_id"] for r in recorded_results(str(tune_dir)) if r.get("restored")}
    assert repeated, "no trial was continued from a checkpoint"
    assert repeated <= {r["trial_id"] for r in before}
    for trial in trials:  # trials finished before the kill are not re-run
        done_before = [r["epoch"] for r in before if r["trial_id"] == trial["trial_id"]]
        if done_before:
            assert trial["epochs"] >= max(done_before)

    config_changed = subprocess.run(_command(weights, results_dir, "--max-epochs", "4"), env=env,
                                    capture_output=True, text=True, timeout=300)
    assert config_changed.returncode == 2
    assert "exists with a different max_epochs" in config_changed.stderr
