"""The three tables of a search, built from Tune's ``ResultGrid``: experiment, trials, epochs.

Each trial's rows come from the per-epoch results Tune persisted; its status from how it ended (completed,
stopped by ASHA, error, timeout). The experiment row names the best trial by :func:`tlsearch.results.best_trial`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from tlsearch import models, results
from tlsearch.config import DIMENSIONS
from tlsearch.search.prepare import Plan
from tlsearch.search.session import Resources

PER_EPOCH = (*results.METRICS, *results.COSTS, "startup_s", "node_id")
PER_TRIAL = ("num_groups", "train_size", "trainable_params", "flops_per_sample", "feature_cache", "data_loading",
             "augment")


def build_tables(
    plan: Plan, resources: Resources, grid: Any, wall_s: float,
    score_on_test: Callable[[list[dict[str, Any]]], dict[str, tuple]] | None = None,
) -> dict[str, pa.Table]:
    """The tables from the ResultGrid: each trial's persisted per-epoch results, its status and cost.

    ``score_on_test`` (after the search, on the trials it chose) gives (test_acc, test_loss) by trial id.
    """
    trial_rows, epoch_rows = [], []
    for result in grid:
        trial_id = trial_id_of(result)
        hp = {k: (result.config or {}).get(k) for k in DIMENSIONS}
        epochs = epoch_records(result)
        epoch_rows += [{"experiment": plan.name, "trial_id": trial_id, **hp, "epoch": int(r["epoch"]),
                        **{k: r.get(k) for k in PER_EPOCH}} for r in epochs]
        trial_rows.append(trial_row(plan, trial_id, hp, epochs, result.error))
    charge_shared_passes(trial_rows, epoch_rows, {r["trial_id"]: r.get("feature_passes") for r in trial_rows})
    for row in trial_rows:
        row.pop("feature_passes", None)
    for trial_id, (acc, loss) in (score_on_test(trial_rows) if score_on_test else {}).items():
        row = next(r for r in trial_rows if r["trial_id"] == trial_id)
        row["test_acc"], row["test_loss"] = acc, loss
    return {
        "experiments": results.to_table("experiments", [experiment_row(plan, resources, trial_rows, wall_s)]),
        "trials": results.to_table("trials", trial_rows),
        "epochs": results.to_table("epochs", epoch_rows),
    }


def experiment_row(plan: Plan, resources: Resources, trial_rows: list[dict], wall_s: float) -> dict[str, Any]:
    cfg = plan.config
    best = results.best_trial(trial_rows)
    sidecars = [models.read_sidecar(path) for path in cfg.weights_by_model().values()]
    return {
        "experiment": plan.name,
        "created_at": dt.datetime.now(dt.UTC).replace(microsecond=0),
        "model": cfg.model, "dataset": cfg.dataset,
        "weights": ",".join(f"{m}={s.origin}" if len(plan.sources) > 1 else s.origin
                            for m, s in plan.sources.items()) or None,
        "search_space": json.dumps(cfg.space.to_dict()), "config": json.dumps(cfg.to_dict(), default=str),
        "seed": cfg.seed, "trials": cfg.trials, "max_epochs": cfg.max_epochs, "grace_period": cfg.grace_period,
        "reduction_factor": cfg.reduction_factor, "num_groups": plan.num_groups,
        "train_pool_size": len(plan.pool), "val_size": len(plan.val), "concurrency": resources.concurrency,
        "wall_s": wall_s, "best_trial_id": best["trial_id"] if best else None,
        "best_val_acc": best["best_val_acc"] if best else None, "best_test_acc": best.get("test_acc") if best else None,
        "test_size": len(plan.test),
        "source_device_s": _known_sum(s.get("device_s") for s in sidecars),  # every source model's pretraining
        "source_train_images": _known_sum(s.get("train_images") for s in sidecars),
        **versions(),
    }


def _known_sum(values: Iterable[Any]) -> Any:
    """The sum of the values known; None when none is."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def trial_id_of(result: Any) -> str:
    trial_id = (result.metrics or {}).get("trial_id")
    if trial_id:
        return str(trial_id)
    match = re.match(r"run_trial_([0-9a-f]+)_", Path(str(result.path)).name)
    return match.group(1) if match else Path(str(result.path)).name


def epoch_records(result: Any) -> list[dict[str, Any]]:
    """A trial's per-epoch reports as persisted by Tune, one per epoch.

    A restored worker reports its checkpoint's epoch again (flagged ``restored``): that row stands only when Tune
    had not logged the original. Otherwise the last report of an epoch wins.
    """
    frame = result.metrics_dataframe
    if frame is None or "epoch" not in frame:
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for record in frame.dropna(subset=["epoch"]).to_dict("records"):
        row = {k: (None if v != v else v) for k, v in record.items()}  # NaN -> None
        epoch = int(record["epoch"])
        if not (row.get("restored") and epoch in by_epoch):
            by_epoch[epoch] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def trial_row(
    plan: Plan, trial_id: str, hp: dict[str, Any], epochs: list[dict[str, Any]], error: Any = None
) -> dict[str, Any]:
    last = epochs[-1] if epochs else {}
    best = max(epochs, key=lambda r: r["val_acc"], default={})
    message = None
    if error is not None:
        message = first_error_line(str(error))
        status = "timeout" if "timed out" in message else "error"
    else:
        status = "completed" if last.get("epoch", 0) >= plan.config.max_epochs else "stopped"
    return {
        "experiment": plan.name, "trial_id": trial_id, "status": status, **hp,
        **{k: last.get(k) for k in PER_TRIAL},
        "epochs": int(last.get("epoch", 0)), "best_val_acc": best.get("val_acc"), "best_epoch": best.get("epoch"),
        "last_val_acc": last.get("val_acc"), "last_val_loss": last.get("val_loss"),
        "last_train_loss": last.get("train_loss"),
        **{k: last.get(k) for k in (*results.COSTS, "startup_s", "node_id")},
        "error": message, "checkpoint_path": last.get("checkpoint_path"), "feature_passes": last.get("feature_passes"),
    }


def charge_shared_passes(
    trial_rows: list[dict[str, Any]], epoch_rows: list[dict[str, Any]], passes: dict[str, str | None]
) -> None:
    """Split each shared frozen-part pass evenly over the trials that used it (the feature cache).

    The trial that ran a pass did not count its seconds (they are not its own training); every trial that used
    the pass is charged ``device-seconds / users`` as ``shared_device_s`` and ``FLOPs / users`` in ``train_flops``.
    """
    used: dict[str, list[str]] = {}
    cost: dict[str, dict[str, Any]] = {}
    for trial_id, text in passes.items():
        for p in json.loads(text) if text else []:
            used.setdefault(p["key"], []).append(trial_id)
            cost.setdefault(p["key"], p)
    share_s: dict[str, float] = {}
    share_flops: dict[str, float] = {}
    for key, users in used.items():
        for trial_id in users:
            share_s[trial_id] = share_s.get(trial_id, 0.0) + cost[key]["seconds"] * cost[key]["devices"] / len(users)
            share_flops[trial_id] = share_flops.get(trial_id, 0.0) + cost[key]["flops"] / len(users)
    for row in [*trial_rows, *epoch_rows]:
        trial_id = row["trial_id"]
        row["shared_device_s"] = share_s.get(trial_id, 0.0)
        if trial_id in share_flops and row.get("train_flops") is not None:
            row["train_flops"] += share_flops[trial_id]


def first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "Exception" in ln or "timed out" in ln]
    return (errors[-1] if errors else lines[-1] if lines else "error")[:500]


def versions() -> dict[str, str | None]:
    import optuna
    import ray
    import timm
    import torch

    from tlsearch._version import __version__

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "tlsearch_version": __version__, "ray_version": ray.__version__, "torch_version": torch.__version__,
        "timm_version": timm.__version__, "optuna_version": optuna.__version__, "git_commit": commit,
    }
