"""The report's numbers (no text, no files): what the search found and what transfer saved, per data fraction.

Comparisons are only ever made within one data fraction. The compute a trial or run paid is everything a user
pays for it: ``device_s`` (training and validation) + ``startup_s`` + ``shared_device_s`` (its share of passes
shared with other trials). From the search alone the numbers are "from the search, unconfirmed"; with
``confirm.parquet`` (see :mod:`tlsearch.confirm`) each fraction gets intervals, a ratio and a verdict.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc

from tlsearch import results
from tlsearch.errors import TLSearchError
from tlsearch.report import stats

if TYPE_CHECKING:
    from tlsearch.report.choice import ModelChoice

ARMS = ("pretrained", "scratch")
TOP_CURVES = 5


class ReportError(TLSearchError, ValueError):
    """The report cannot be built from what was asked or what the tables hold."""


def paid(row: Mapping[str, Any]) -> float:
    """Everything a user paid up to this row: training + start-up + shared passes, in device-seconds."""
    return sum(float(row.get(k) or 0.0) for k in ("device_s", "startup_s", "shared_device_s"))


# ------------------------------------------------------------------------------------------------ loading
@dataclass(frozen=True)
class Experiment:
    """One search: its experiments row, its trials and epochs (sorted), and its confirmation rows if any."""

    info: dict[str, Any]
    trials: list[dict[str, Any]]
    epochs: list[dict[str, Any]]
    confirm: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.info["experiment"])

    @property
    def fractions(self) -> list[float]:
        return sorted({r["data_fraction"] for r in self.trials if r["data_fraction"] is not None})

    def curve(self, trial_id: str) -> list[dict[str, Any]]:
        return [r for r in self.epochs if r["trial_id"] == trial_id]


def pick_experiment(resultset: results.ResultSet, name: str | None = None) -> dict[str, Any]:
    """The experiments row named ``name``, or the newest (created_at) when ``name`` is None."""
    rows = resultset.experiments.to_table().to_pylist()
    if not rows:
        raise ReportError("the results hold no experiments table rows; was the search written completely?")
    if name is None:
        oldest = dt.datetime.min.replace(tzinfo=dt.UTC)
        return max(rows, key=lambda r: (r["created_at"] or oldest, r["experiment"]))
    for row in rows:
        if row["experiment"] == name:
            return row
    raise ReportError(f"no experiment {name!r}; valid: {', '.join(sorted(r['experiment'] for r in rows))}")


def load_experiment(path: str | Path, name: str | None = None) -> Experiment:
    resultset = results.open(path)
    info = pick_experiment(resultset, name)
    where = pc.field("experiment") == info["experiment"]
    trials = resultset.trials.to_table(filter=where).to_pylist()
    epochs = resultset.epochs.to_table(filter=where).to_pylist()
    epochs.sort(key=lambda r: (r["trial_id"], r["epoch"]))
    confirm = resultset.confirm.to_table(filter=where).to_pylist()
    confirm.sort(key=lambda r: (r["run_id"], r["epoch"]))
    return Experiment(info, trials, epochs, confirm)


# ------------------------------------------------------------------------------- from the search (unconfirmed)
@dataclass(frozen=True)
class Hit:
    """Where one arm first reached the target at one data fraction (None: not reached)."""

    compute_s: float | None = None  # device-s paid up to that epoch (training + start-up + shared passes)
    train_flops: float | None = None
    trial_id: str | None = None  # the trial that got there for the least compute
    epoch: int | None = None


def _ratio(scratch: float | None, pretrained: float | None) -> float | None:
    if scratch is None or pretrained is None or pretrained <= 0:
        return None
    return scratch / pretrained


@dataclass(frozen=True)
class TargetRow:
    data_fraction: float
    target: float
    pretrained: Hit
    scratch: Hit

    @property
    def compute_ratio(self) -> float | None:
        return _ratio(self.scratch.compute_s, self.pretrained.compute_s)

    @property
    def flops_ratio(self) -> float | None:
        return _ratio(self.scratch.train_flops, self.pretrained.train_flops)


def first_hits(rows: Iterable[Mapping[str, Any]], target: float) -> list[Mapping[str, Any]]:
    """Per trial, the first epoch row whose val_acc >= target (rows sorted by trial, then epoch)."""
    hits: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        if row["trial_id"] not in hits and row["val_acc"] is not None and row["val_acc"] >= target:
            hits[row["trial_id"]] = row
    return list(hits.values())


def cheapest_hit(rows: Iterable[Mapping[str, Any]]) -> Hit:
    """The cheapest of these first hits of the target (an empty Hit when there is none)."""
    rows = [r for r in rows if r["device_s"] is not None]
    if not rows:
        return Hit()
    cheapest = min(rows, key=lambda r: (paid(r), r["trial_id"]))
    flops = [r["train_flops"] for r in rows if r["train_flops"] is not None]
    return Hit(paid(cheapest), min(flops) if flops else None, cheapest["trial_id"], cheapest["epoch"])


def default_target(exp: Experiment, fraction: float) -> float | None:
    """Scratch's best val_acc at this data fraction (None when no scratch trial reported one)."""
    values = [r["val_acc"] for r in exp.epochs
              if r["init"] == "scratch" and r["data_fraction"] == fraction and r["val_acc"] is not None]
    return max(values) if values else None


def compute_to_target(exp: Experiment, target_acc: float | None = None) -> list[TargetRow]:
    """Per data fraction, the least compute at which each arm's trials first reached the fraction's target."""
    out = []
    for fraction in exp.fractions:
        target = target_acc if target_acc is not None else default_target(exp, fraction)
        if target is None:
            continue
        rows = [r for r in exp.epochs if r["data_fraction"] == fraction]
        hits = first_hits(rows, target)
        cell = {arm: cheapest_hit(h for h in hits if h["init"] == arm) for arm in ARMS}
        out.append(TargetRow(fraction, target, cell["pretrained"], cell["scratch"]))
    return out


@dataclass(frozen=True)
class GroupBest:
    init: str
    key: float
    best_val_acc: float
    trials: int


def accuracy_by(exp: Experiment, column: str) -> list[GroupBest]:
    """The best best_val_acc per (init, ``column``) over the trials that reported one."""
    groups: dict[tuple[str, float], list[float]] = {}
    for row in exp.trials:
        if row["best_val_acc"] is not None and row[column] is not None and row["init"] is not None:
            groups.setdefault((row["init"], row[column]), []).append(row["best_val_acc"])
    return [GroupBest(init, key, max(v), len(v)) for (init, key), v in sorted(groups.items())]


@dataclass(frozen=True)
class Point:
    trial_id: str
    init: str
    compute_s: float  # device-s paid up to the first epoch reaching the trial's best val_acc
    val_acc: float
    epoch: int
    model: str = ""


def trial_points(exp: Experiment) -> list[Point]:
    points = []
    for trial in exp.trials:
        curve = [r for r in exp.curve(trial["trial_id"]) if r["val_acc"] is not None and r["device_s"] is not None]
        if curve:
            best = max(r["val_acc"] for r in curve)
            first = next(r for r in curve if r["val_acc"] == best)
            points.append(Point(trial["trial_id"], trial["init"], paid(first), best, first["epoch"],
                                str(trial.get("model") or "")))
    return points


def pareto_front(points: list[Point]) -> list[Point]:
    """Points no other point beats on both accuracy (higher) and compute (lower), cheapest first."""
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.compute_s, -p.val_acc, p.trial_id)):
        if not front or p.val_acc > front[-1].val_acc:
            front.append(p)
    return front


# ------------------------------------------------------------------------------------------------- ASHA
@dataclass(frozen=True)
class TrialCost:
    trial_id: str
    status: str
    epochs: int
    device_s: float  # training spent (start-up and shared passes are paid whether ASHA stops a trial or not)
    steady_epoch_s: float | None  # one steady epoch's device-seconds (first epoch's one-off work excluded)
    full_device_s: float  # estimate: what it would have cost run to max_epochs


@dataclass(frozen=True)
class FullRun:
    """One configuration ``tlsearch confirm`` repeated: the search's estimate of a full run beside the measure."""

    trial_id: str  # the search trial whose configuration was repeated
    status: str
    epochs: int  # how many epochs it ran in the search
    estimated_device_s: float  # its full_device_s (what it spent, if it was not stopped)
    measured_device_s: float  # the mean training device-seconds of its confirmation runs to max_epochs
    runs: int


@dataclass(frozen=True)
class AshaSavings:
    max_epochs: int
    trials: list[TrialCost] = field(default_factory=list)
    measured: list[FullRun] = field(default_factory=list)  # empty until `tlsearch confirm` ran

    @property
    def spent_device_s(self) -> float:
        return sum(t.device_s for t in self.trials)

    @property
    def full_device_s(self) -> float:
        return sum(t.full_device_s for t in self.trials)

    @property
    def saved_device_s(self) -> float:
        return self.full_device_s - self.spent_device_s

    @property
    def saved_share(self) -> float | None:
        return self.saved_device_s / self.full_device_s if self.full_device_s > 0 else None


def steady_epoch_cost(curve: Sequence[Mapping[str, Any]]) -> float | None:
    """The median device-seconds of a trial's epochs after the first (which carries one-off work)."""
    costs = [float(r["device_s"]) for r in curve if r["device_s"] is not None]
    steps = [b - a for a, b in zip(costs, costs[1:], strict=False)]
    return median(steps) if steps else None


def asha_savings(exp: Experiment) -> AshaSavings:
    """An estimate of what ASHA saved: each stopped trial's remaining epochs at its steady per-epoch cost.

    A trial stopped after its first epoch has no steady epoch of its own: it takes the median steady epoch of the
    trials with the same arm, freeze depth and data fraction (same work per epoch), else of its arm and fraction.
    """
    max_epochs = int(exp.info["max_epochs"])
    steady = {t["trial_id"]: steady_epoch_cost(exp.curve(t["trial_id"])) for t in exp.trials}

    def fallback(trial: Mapping[str, Any], keys: tuple[str, ...]) -> float | None:
        alike = [steady[t["trial_id"]] for t in exp.trials
                 if all(t[k] == trial[k] for k in keys) and steady[t["trial_id"]] is not None]
        return median(alike) if alike else None  # type: ignore[type-var]

    costs = []
    for trial in exp.trials:
        curve = exp.curve(trial["trial_id"])
        epochs = int(curve[-1]["epoch"]) if curve else 0
        spent = float(curve[-1]["device_s"] or 0.0) if curve else 0.0
        per_epoch = steady[trial["trial_id"]]
        if per_epoch is None:
            per_epoch = fallback(trial, ("init", "freeze_depth", "data_fraction")) or fallback(
                trial, ("init", "data_fraction"))
        if per_epoch is None and epochs:
            per_epoch = spent / epochs  # nothing steady to go by: an upper bound
        left = max_epochs - epochs if trial["status"] == "stopped" else 0
        costs.append(TrialCost(trial["trial_id"], trial["status"], epochs, spent, per_epoch,
                               spent + (per_epoch or 0.0) * left))
    return _with_confirmed(AshaSavings(max_epochs, costs), exp)


def _with_confirmed(savings: AshaSavings, exp: Experiment) -> AshaSavings:
    """Beside the estimate, the measured full-run cost of the configurations ``tlsearch confirm`` repeated."""
    full: dict[str, list[float]] = {}
    for curve in _runs(exp.confirm).values():
        full.setdefault(str(curve[-1]["source_trial_id"]), []).append(float(curve[-1]["device_s"] or 0.0))
    measured = [FullRun(t.trial_id, t.status, t.epochs, t.full_device_s, sum(full[t.trial_id]) / len(full[t.trial_id]),
                        len(full[t.trial_id])) for t in savings.trials if t.trial_id in full]
    return replace(savings, measured=measured)


# ------------------------------------------------------------------------------------------- confirmed runs
@dataclass(frozen=True)
class ArmRuns:
    """One arm's confirmation runs at one data fraction."""

    runs: int
    test_acc: stats.Interval | None  # of each run's best-validation epoch
    best_val_acc: stats.Interval | None
    to_target: dict[str, float | None]  # run_id -> compute paid up to its first epoch at the target; None: never
    paid: dict[str, float]  # run_id -> everything the whole run paid

    @property
    def reached(self) -> int:
        return sum(v is not None for v in self.to_target.values())

    def compute(self) -> list[stats.RunCompute]:
        """Each run's compute-to-target, or what it paid in all when it never got there (a lower bound)."""
        return [stats.RunCompute(self.paid[k] if v is None else v, v is not None) for k, v in self.to_target.items()]


@dataclass(frozen=True)
class ConfirmedFraction:
    data_fraction: float
    target: float
    target_how: str
    pretrained: ArmRuns
    scratch: ArmRuns
    ratio: stats.Interval | None  # scratch / pretrained compute-to-target (geometric means)
    verdict: str


def _runs(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Rows grouped by run_id, each run's epochs in order."""
    runs: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        runs.setdefault(str(row["run_id"]), []).append(row)
    return {k: sorted(v, key=lambda r: r["epoch"]) for k, v in sorted(runs.items())}


def best_epoch(curve: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """A run's best-validation epoch (ties: the earlier)."""
    return max(curve, key=lambda r: (r["val_acc"] if r["val_acc"] is not None else -1.0, -r["epoch"]))


def _first_at(curve: Sequence[Mapping[str, Any]], target: float) -> float | None:
    return next((paid(r) for r in curve if r["val_acc"] is not None and r["val_acc"] >= target), None)


def _arm(runs: Mapping[str, Sequence[Mapping[str, Any]]], target: float) -> ArmRuns:
    best = [best_epoch(c) for c in runs.values()]
    tests = [b["test_acc"] for b in best if b["test_acc"] is not None]
    vals = [b["val_acc"] for b in best if b["val_acc"] is not None]
    return ArmRuns(len(runs), stats.mean_interval(tests) if tests else None,
                   stats.mean_interval(vals) if vals else None,
                   {k: _first_at(c, target) for k, c in runs.items()}, {k: paid(c[-1]) for k, c in runs.items()})


def confirmed(exp: Experiment, target_acc: float | None = None) -> list[ConfirmedFraction]:
    """Per data fraction with runs of both arms: intervals, the compute ratio with its interval, a verdict.

    The target is ``target_acc`` when given, else the mean over scratch's runs of their best val_acc there.
    """
    out = []
    for fraction in sorted({r["data_fraction"] for r in exp.confirm if r["data_fraction"] is not None}):
        by_arm = {arm: _runs(r for r in exp.confirm if r["data_fraction"] == fraction and r["init"] == arm)
                  for arm in ARMS}
        scratch_best = [v for c in by_arm["scratch"].values() if (v := best_epoch(c)["val_acc"]) is not None]
        if not by_arm["pretrained"] or not scratch_best:
            continue  # one arm only: nothing to compare (the Markdown names such fractions)
        if target_acc is not None:
            target, how = target_acc, "given with --target-acc"
        else:
            target, how = sum(scratch_best) / len(scratch_best), "scratch's mean best val_acc"
        arms = {arm: _arm(by_arm[arm], target) for arm in ARMS}
        found = stats.compare(arms["scratch"].compute(), arms["pretrained"].compute())
        out.append(ConfirmedFraction(fraction, target, how, arms["pretrained"], arms["scratch"], found.ratio,
                                     found.verdict))
    return out


# ------------------------------------------------------------------------------------------------- the report
def top_trials(exp: Experiment, n: int = TOP_CURVES) -> list[dict[str, Any]]:
    done = [t for t in exp.trials if t["best_val_acc"] is not None]
    return sorted(done, key=lambda t: (-t["best_val_acc"], t["device_s"] or 0.0, t["trial_id"]))[:n]


@dataclass(frozen=True)
class Costs:
    """What the search paid, apart: training, start-up, shared passes; and the source model's pretraining."""

    training_s: float
    startup_s: float
    shared_s: float
    source_s: float | None


def costs(exp: Experiment) -> Costs:
    def total(key: str) -> float:
        return sum(float(t.get(key) or 0.0) for t in exp.trials)

    source = exp.info.get("source_device_s")
    return Costs(total("device_s"), total("startup_s"), total("shared_device_s"),
                 float(source) if source is not None else None)


@dataclass(frozen=True)
class Report:
    exp: Experiment
    target_acc: float | None  # given with --target-acc; else each fraction's default
    best: dict[str, Any] | None
    to_target: list[TargetRow]
    by_freeze: list[GroupBest]
    by_fraction: list[GroupBest]
    points: list[Point]
    front: list[Point]
    savings: AshaSavings
    top: list[dict[str, Any]]
    costs: Costs
    confirmed: list[ConfirmedFraction]
    models: ModelChoice | None = None  # the searched models compared (None with one model)

    @property
    def unconfirmed(self) -> bool:
        return not self.confirmed

    @property
    def freeze_column(self) -> str:
        """What ``by_freeze`` groups by: the depth, or with several models the share (a depth differs by model)."""
        return "freeze_depth" if self.models is None else "freeze_share"


def build_report(exp: Experiment, target_acc: float | None = None) -> Report:
    from tlsearch.report.choice import model_choice  # choice builds on this module's pieces

    if target_acc is not None and not 0 < target_acc <= 1:
        raise ReportError(
            f"--target-acc is a val_acc fraction in (0, 1], got {target_acc:g}"
            + (f"; did you mean {target_acc / 100:g}?" if 1 < target_acc <= 100 else "")
        )
    if not any(r["val_acc"] is not None for r in exp.epochs):
        raise ReportError(f"experiment {exp.name} has no epoch with a val_acc; nothing to report")
    points = trial_points(exp)
    to_target = compute_to_target(exp, target_acc)
    models = model_choice(exp, to_target)
    return Report(
        exp=exp, target_acc=target_acc, best=results.best_trial(exp.trials),
        to_target=to_target, by_freeze=accuracy_by(exp, "freeze_depth" if models is None else "freeze_share"),
        by_fraction=accuracy_by(exp, "data_fraction"), points=points, front=pareto_front(points),
        savings=asha_savings(exp), top=top_trials(exp), costs=costs(exp), confirmed=confirmed(exp, target_acc),
        models=models,
    )


