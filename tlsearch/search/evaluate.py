"""After the search, once: the held-out test set scores the checkpoints the search chose.

The test set is never seen while searching (TPE, ASHA, each trial's best epoch and the best trial are chosen on
validation). Afterwards the best trial, the best trial of every (init, data_fraction) and of every (init, model)
are scored on it with their best-validation checkpoint: ``test_acc`` in the trials table (null elsewhere) and the
experiment row.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors
from torch import nn

from tlsearch import results, storage
from tlsearch.search.export import best_checkpoint
from tlsearch.search.prepare import Plan
from tlsearch.search.session import Resources
from tlsearch.stream import held_out_batches
from tlsearch.train import Hyper, build_model, evaluate, normalizer


def chosen_trials(trial_rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best trial, the best of every (init, data_fraction) and of every (init, model), by
    :func:`tlsearch.results.best_trial`: what the report compares on the test set."""
    rows = list(trial_rows)
    by_model: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_model.setdefault((str(row.get("init")), str(row.get("model"))), []).append(row)
    picked = [results.best_trial(rows), *results.best_per_arm_and_fraction(rows),
              *(results.best_trial(group) for group in by_model.values())]
    unique = {p["trial_id"]: p for p in picked if p is not None}
    return list(unique.values())


def score_on_test(plan: Plan, resources: Resources, trial_rows: list[dict[str, Any]]) -> dict[str, tuple]:
    """(test_acc, test_loss) by trial id for the chosen trials that kept a checkpoint."""
    if len(plan.test) == 0:
        return {}
    spec = plan.trial_spec(resources)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batches = held_out_batches(plan.images, plan.labels, plan.test, plan.stream, spec.eval_batch_size)
    scores: dict[str, tuple] = {}
    for trial in chosen_trials(trial_rows):
        found = best_checkpoint(plan.ray_storage, trial)
        if found is None:
            continue
        hp = Hyper.from_config(trial)
        own = spec.for_model(hp.model)
        model, _ = build_model(own, hp, None)
        model.load_state_dict(_load_weights(storage.join(found[1], "model.safetensors")))
        loss, acc = evaluate(model.to(device), ((x.to(device), y.to(device)) for x, y in batches),
                             normalizer(own.input_spec, device), nn.CrossEntropyLoss())
        scores[str(trial["trial_id"])] = (acc, loss)
    return scores


def _load_weights(uri: str) -> dict[str, torch.Tensor]:
    if storage.is_local(uri):
        return load_safetensors(uri)
    with tempfile.TemporaryDirectory() as folder:
        local = str(Path(folder) / "model.safetensors")
        storage.copy_file(uri, local)
        return load_safetensors(local)
