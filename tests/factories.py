"""Shared factories for the tables: rows with sensible defaults and keyword overrides, written as a search does.

Rows are plain dicts (``results.to_table`` fills every column not given with null); :func:`search` builds a whole
search from a few numbers and :func:`write_results` writes one or more of them as a results folder, local or at a
URI (``s3://...``), through ``results.write_search``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


def epoch_row(trial: Mapping[str, Any], epoch: int, **overrides: Any) -> dict[str, Any]:
    """One epoch of ``trial`` (its configuration repeated, as the search writes it), cost cumulative."""
    return {"experiment": trial["experiment"], "trial_id": trial["trial_id"], **{k: trial.get(k) for k in HP},
            "epoch": epoch, "val_acc": 0.5, "device_s": 5.0 * epoch, "train_flops": 1e8 * epoch,
            "startup_s": trial.get("startup_s"), "shared_device_s": trial.get("shared_device_s"), **overrides}


def curve_rows(trial: Mapping[str, Any], accs: Sequence[float], cost_per_epoch: float = 5.0,
               first_epoch_extra: float = 0.0) -> list[dict[str, Any]]:
    """A trial's epoch rows: one per accuracy, cost cumulative (the first epoch may carry one-off work)."""
    return [epoch_row(trial, e, val_acc=acc, device_s=cost_per_epoch * e + first_epoch_extra)
            for e, acc in enumerate(accs, 1)]


def confirm_rows(experiment: str, init: str, fraction: float, repeat: int, accs: Sequence[float],
                 test_accs: Sequence[float], cost_per_epoch: float, startup_s: float = 1.0) -> list[dict[str, Any]]:
    """One confirmation run: validation and test every epoch, cost cumulative."""
    run_id = f"{init}-{fraction:g}-r{repeat}"
    return [{"experiment": experiment, "run_id": run_id, "repeat": repeat, "seed": 1000 * (repeat + 1),
             **HP, "init": init, "data_fraction": fraction, "freeze_depth": 0 if init == "scratch" else 3,
             "epoch": e, "val_acc": acc, "test_acc": test, "device_s": cost_per_epoch * e, "startup_s": startup_s,
             "shared_device_s": 0.0, "train_flops": 1e8 * e}
            for e, (acc, test) in enumerate(zip(accs, test_accs, strict=True), 1)]


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


@dataclass
class Search:
    """The rows of one search, ready to be turned into tables or written."""

    experiment: dict[str, Any]
    trials: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    confirm: list[dict[str, Any]] = field(default_factory=list)  # rows of confirm.parquet (none: no file)

    def tables(self) -> dict[str, pa.Table]:
        """The three tables every search writes."""
        return search_tables(self.experiment, self.trials, self.epochs)

    @property
    def name(self) -> str:
        return str(self.experiment["experiment"])


def search(name: str = "exp", trials: int = 2, accs: Sequence[float] = (0.6, 0.7), cost_per_epoch: float = 4.0,
           **experiment: Any) -> Search:
    """``trials`` trials (ids ``<name>_00000``...; init alternating pretrained/scratch, freeze_depth = index), each
    with the curve ``accs``; keyword arguments override the experiment row."""
    rows = [trial_row(f"{name}_{i:05d}", name, init="pretrained" if i % 2 == 0 else "scratch", freeze_depth=i,
                      epochs=len(accs), best_val_acc=max(accs), best_epoch=1 + list(accs).index(max(accs)),
                      device_s=cost_per_epoch * len(accs), train_flops=1e8 * len(accs))
            for i in range(trials)]
    epochs = [row for trial in rows for row in curve_rows(trial, accs, cost_per_epoch)]
    return Search(experiment_row(name, **{"trials": trials, "max_epochs": len(accs), **experiment}), rows, epochs)


def write_results(root: str | Path, *searches: Search) -> str:
    """A results folder holding every search under ``<root>/<name>/`` (a path or a URI); returns ``root``."""
    for one in searches:
        write_search(storage.join(str(root), one.name), one.experiment, one.trials, one.epochs, one.confirm)
    return str(root)
