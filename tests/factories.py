"""Shared factories for the tables: rows with sensible defaults, keyword overrides, written like a search does."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from tlsearch import results, storage

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
HP = {"init": "pretrained", "freeze_depth": 0, "head_lr": 1e-3, "backbone_lr": 1e-4, "data_fraction": 0.1}


def experiment_row(name: str = "exp", **overrides: Any) -> dict[str, Any]:
    return {"experiment": name, "created_at": T0, "model": "test_resnet", "dataset": "digits-split", "trials": 2,
            "max_epochs": 2, "grace_period": 1, "reduction_factor": 2, **overrides}


def trial_row(trial_id: str, experiment: str = "exp", **overrides: Any) -> dict[str, Any]:
    return {"experiment": experiment, "trial_id": trial_id, "status": "completed", **HP, "epochs": 2,
            "best_val_acc": 0.5, "best_epoch": 2, "device_s": 10.0, "startup_s": 2.0, "shared_device_s": 0.0,
            "train_flops": 1e9, **overrides}


def curve_rows(trial: Mapping[str, Any], accs: Sequence[float], cost_per_epoch: float = 5.0,
               first_epoch_extra: float = 0.0) -> list[dict[str, Any]]:
    """A trial's epoch rows: one per accuracy, cost cumulative (the first epoch may carry one-off work)."""
    hp = {k: trial.get(k) for k in HP}
    return [{"experiment": trial["experiment"], "trial_id": trial["trial_id"], **hp, "epoch": e, "val_acc": acc,
             "device_s": cost_per_epoch * e + first_epoch_extra, "train_flops": 1e8 * e,
             "startup_s": trial.get("startup_s"), "shared_device_s": trial.get("shared_device_s")}
            for e, acc in enumerate(accs, 1)]


def search_tables(experiment: Mapping[str, Any], trials: Iterable[Mapping[str, Any]],
                  epochs: Iterable[Mapping[str, Any]] = ()) -> dict[str, pa.Table]:
    return {"experiments": results.to_table("experiments", [experiment]),
            "trials": results.to_table("trials", trials), "epochs": results.to_table("epochs", epochs)}


def write_search(folder: str | Path, experiment: Mapping[str, Any], trials: Iterable[Mapping[str, Any]],
                 epochs: Iterable[Mapping[str, Any]] = (), confirm: Iterable[Mapping[str, Any]] = ()) -> str:
    """A search folder as ``tlsearch run`` (and, with ``confirm`` rows, ``tlsearch confirm``) writes it."""
    results.write_search(folder, search_tables(experiment, trials, epochs))
    confirm = list(confirm)
    if confirm:
        results.write_atomic(results.to_table("confirm", confirm), storage.join(str(folder), "confirm.parquet"))
    return str(folder)


def confirm_rows(experiment: str, init: str, fraction: float, repeat: int, accs: Sequence[float],
                 test_accs: Sequence[float], cost_per_epoch: float, startup_s: float = 1.0) -> list[dict[str, Any]]:
    """One confirmation run: validation and test every epoch, cost cumulative."""
    run_id = f"{init}-{fraction:g}-r{repeat}"
    return [{"experiment": experiment, "run_id": run_id, "repeat": repeat, "seed": 1000 * (repeat + 1),
             **HP, "init": init, "data_fraction": fraction, "freeze_depth": 0 if init == "scratch" else 3,
             "epoch": e, "val_acc": acc, "test_acc": test, "device_s": cost_per_epoch * e, "startup_s": startup_s,
             "shared_device_s": 0.0, "train_flops": 1e8 * e}
            for e, (acc, test) in enumerate(zip(accs, test_accs, strict=True), 1)]
