"""After the search: find a trial's checkpoints and export the best model, ready for ``--weights``.

Each Train run keeps its best and its latest checkpoint; each holds ``model.safetensors`` and ``progress.json``
(the epoch and every epoch's metrics so far).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tlsearch import results, storage
from tlsearch.config import DIMENSIONS
from tlsearch.search.prepare import Plan
from tlsearch.search.trial import run_name


def checkpoints(ray_storage: str, trial_id: str) -> dict[int, str]:
    """The checkpoint folders a trial kept, by epoch."""
    found: dict[int, str] = {}
    for info in storage.list_files(storage.join(ray_storage, run_name(trial_id))):
        if info.base_name == "progress.json":
            text = storage.read_text(storage.child(ray_storage, info.path)) or "{}"
            found[int(json.loads(text)["epoch"])] = storage.child(ray_storage, info.path.rsplit("/", 1)[0])
    return found


def best_checkpoint(ray_storage: str, trial: Mapping[str, Any]) -> tuple[int, str] | None:
    """(epoch, folder) of the trial's best-validation checkpoint, else its latest; None when it kept none."""
    found = checkpoints(ray_storage, str(trial["trial_id"]))
    if not found:
        return None
    epoch = trial["best_epoch"] if trial.get("best_epoch") in found else max(found)
    return epoch, found[epoch]


def export_best(plan: Plan, trial_rows: list[dict[str, Any]]) -> str | None:
    """Copy the best trial's best checkpoint to ``best.safetensors`` with a JSON sidecar, as --weights reads."""
    best = results.best_trial(trial_rows)
    found = best_checkpoint(plan.ray_storage, best) if best else None
    if best is None or found is None:
        return None
    epoch, folder = found
    target = storage.copy_file(storage.join(folder, "model.safetensors"), storage.join(plan.folder, "best.safetensors"))
    model = str(best.get("model") or next(iter(plan.input_specs)))
    spec = plan.input_specs[model]
    sidecar = {
        "model": model, "num_classes": plan.num_classes, "dataset": plan.config.dataset,
        "classes": list(plan.classes),
        "input": {"in_chans": spec.in_chans, "size": spec.size, "mean": list(spec.mean), "std": list(spec.std)},
        "val_acc": best["best_val_acc"] if epoch == best["best_epoch"] else None, "epoch": epoch,
        "test_acc": best.get("test_acc"), "trial_id": best["trial_id"], "experiment": plan.name,
        "config": {k: best[k] for k in DIMENSIONS},
    }
    storage.write_text(storage.join(plan.folder, "best.json"), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return target
