"""Which model: with several searched models, each model's best trial and the winner of each data fraction.

Everything is chosen on validation (:func:`tlsearch.results.best_trial`); the test accuracy shown beside a choice
is its checkpoint scored once after the search (``search.evaluate`` scores the best of every (init, model)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tlsearch import results
from tlsearch.report.analysis import ARMS, Experiment, Hit, TargetRow, cheapest_hit, first_hits


@dataclass(frozen=True)
class ModelBest:
    """One model's best trial in one arm (on validation), with its test accuracy when it was scored."""

    model: str
    init: str
    trials: int
    trial_id: str | None
    best_val_acc: float | None
    test_acc: float | None
    freeze_share: float | None
    freeze_depth: int | None


@dataclass(frozen=True)
class FractionWinner:
    """The best trial of a data fraction (which model won it), and what each model's pretrained trials paid to
    first reach the fraction's target (the report's target: ``--target-acc`` or scratch's best there; no target,
    e.g. no scratch trial at that fraction: ``target`` None and ``to_target`` empty)."""

    data_fraction: float
    winner: dict[str, Any] | None
    target: float | None
    to_target: dict[str, Hit]


@dataclass(frozen=True)
class ModelChoice:
    bests: list[ModelBest]
    winners: list[FractionWinner]


def model_choice(exp: Experiment, to_target: list[TargetRow]) -> ModelChoice | None:
    """Per (model, init) its best trial; per data fraction the winner and each model's compute to the target.
    None when the experiment searched one model."""
    names = sorted({str(t["model"]) for t in exp.trials if t.get("model")})
    if len(names) < 2:
        return None
    bests = []
    for model in names:
        for arm in ARMS:
            rows = [t for t in exp.trials if t.get("model") == model and t["init"] == arm]
            best = results.best_trial(rows) or {}
            if rows:
                bests.append(ModelBest(model, arm, len(rows), best.get("trial_id"), best.get("best_val_acc"),
                                       best.get("test_acc"), best.get("freeze_share"), best.get("freeze_depth")))
    targets = {row.data_fraction: row.target for row in to_target}
    winners = []
    for fraction in exp.fractions:
        target = targets.get(fraction)
        epochs = [r for r in exp.epochs if r["data_fraction"] == fraction and r["init"] == "pretrained"]
        hits = first_hits(epochs, target) if target is not None else []
        winners.append(FractionWinner(
            fraction, results.best_trial(t for t in exp.trials if t["data_fraction"] == fraction), target,
            {m: cheapest_hit(h for h in hits if h.get("model") == m) for m in names} if target is not None else {}))
    return ModelChoice(bests, winners)
