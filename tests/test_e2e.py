"""A real search on a local 2-CPU Ray: Optuna + ASHA + TorchTrainer trials, tables checked."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
import ray

from tlsearch import models, pretrain, results
from tlsearch.config import build_config
from tlsearch.search import run_search

pytestmark = pytest.mark.slow


def test_search_end_to_end(tmp_path: Path, ray_2_cpus: None) -> None:
    weights = tmp_path / "source.safetensors"
    pretrain("digits-split", "test_resnet", weights, epochs=2, image_size=16, echo=lambda _: None)
    config = build_config(
        None, dataset="digits-split", model="test_resnet", weights=str(weights), trials=6, max_epochs=4,
        grace_period=1, reduction_factor=2, name="e2e", results_dir=str(tmp_path / "results"), seed=0,
        data_fraction="0.3,1.0", batch_size=32,
    )
    outcome = run_search(config, echo=lambda _: None, verbose=0)
    tables = results.open(tmp_path / "results")
    trials = tables.trials.to_table()
    epochs = tables.epochs.to_table()
    experiment = tables.experiments.to_table().to_pylist()[0]

    assert trials.num_rows == 6
    statuses = trials["status"].to_pylist()
    assert set(statuses) <= {"completed", "stopped"}, trials.select(["trial_id", "status", "error"]).to_pylist()
    assert "stopped" in statuses, "ASHA stopped no trial"
    assert "completed" in statuses
    assert sorted(trials["init"].to_pylist()) == ["pretrained"] * 3 + ["scratch"] * 3
    for row in trials.to_pylist():
        mine = epochs.filter(pc.equal(epochs["trial_id"], row["trial_id"])).sort_by("epoch")
        assert mine["epoch"].to_pylist() == list(range(1, row["epochs"] + 1))
        for column in ("wall_s", "device_s", "samples_seen", "train_flops"):
            values = mine[column].to_pylist()
            assert values == sorted(values) and values[-1] == pytest.approx(row[column])
        assert row["samples_seen"] == row["epochs"] * row["train_size"] - (
            row["epochs"] * (row["train_size"] % 32) if row["train_size"] > 32 else 0)
        assert 0.0 <= row["best_val_acc"] <= 1.0
        if row["init"] == "scratch":
            assert row["freeze_depth"] == 0
    by_depth = {r["freeze_depth"]: r["flops_per_sample"] for r in trials.to_pylist()}
    assert by_depth[max(by_depth)] <= by_depth[0]
    assert experiment["experiment"] == "e2e" and experiment["best_val_acc"] == max(trials["best_val_acc"].to_pylist())
    assert experiment["ray_version"] and experiment["torch_version"]
    # The test set is scored once, after the search, for the best trial and the best of each (init, fraction).
    scored = [r for r in trials.to_pylist() if r["test_acc"] is not None]
    groups = {(r["init"], r["data_fraction"]) for r in trials.to_pylist() if r["best_val_acc"] is not None}
    assert len(scored) == len(groups) and experiment["test_size"] > 0
    assert experiment["best_test_acc"] == next(r["test_acc"] for r in scored
                                               if r["trial_id"] == experiment["best_trial_id"])
    assert all(r["startup_s"] > 0 and r["shared_device_s"] is not None for r in trials.to_pylist())
    assert outcome.folder == str((tmp_path / "results" / "e2e").resolve())
    assert outcome.best_weights and Path(outcome.best_weights).is_file()
    default_spec = models.input_spec(models.create("test_resnet", 2))
    best = models.resolve_source("test_resnet", outcome.best_weights, default_spec)
    assert best.num_classes == 5 and best.input_spec.size == 16  # the exported model is usable as --weights
    assert _worker_groups_released(), "finished trials kept their workers' placement groups (CPUs never freed)"
    started = _actor_classes()  # what Ray started for the trials: each a Train run, none with a preemption watcher
    assert started.count("TrainController") >= 6 and "PreemptionWatcher" not in started, sorted(set(started))


def _actor_classes() -> list[str]:
    from ray.util.state import list_actors

    return [a.class_name for a in list_actors(limit=10_000, detail=False, raise_on_missing_output=False)]


def _worker_groups_released(timeout_s: float = 20.0) -> bool:
    """Ray Train V2 frees a trial's worker placement group asynchronously, through the dashboard's State API."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        table = ray.util.placement_group_table().values()
        if not [pg for pg in table if pg["state"] == "CREATED" and any(b.get("CPU", 0) >= 0.5
                                                                        for b in pg["bundles"].values())]:
            return True
        time.sleep(1)
    return False


def test_linear_probes_share_cached_features(tmp_path: Path, ray_2_cpus: None) -> None:
    weights = tmp_path / "source.safetensors"
    pretrain("digits-split", "test_resnet", weights, epochs=1, image_size=16, echo=lambda _: None)
    config = build_config(
        None, dataset="digits-split", model="test_resnet", weights=str(weights), trials=2, max_epochs=2,
        name="probe", results_dir=str(tmp_path / "results"), init="pretrained", freeze_depth="5", head_lr="3e-2",
        data_fraction="0.5", max_concurrent=1,
    )
    run_search(config, echo=lambda _: None, verbose=0)
    trials = results.open(tmp_path / "results").trials.to_table().sort_by("trial_id").to_pylist()
    assert sorted(t["feature_cache"] for t in trials) == ["hit", "miss"]
    miss, hit = sorted(trials, key=lambda t: t["feature_cache"] == "hit")
    assert miss["flops_per_sample"] == hit["flops_per_sample"] < 1e5  # the classifier alone
    # The one frozen-feature pass is charged evenly to both trials that used it, not to the one that ran it.
    assert miss["shared_device_s"] == pytest.approx(hit["shared_device_s"]) and hit["shared_device_s"] > 0
    assert miss["train_flops"] == pytest.approx(hit["train_flops"], rel=1e-6)
    assert all(t["startup_s"] > 0 for t in trials)
    assert all(t["status"] == "completed" and t["best_val_acc"] > 0.2 for t in trials)
