"""``tlsearch replay``: ASHA's decisions re-run offline on the recorded per-epoch curves.

Asynchronous successive halving as Ray Tune's ``ASHAScheduler`` does it (one bracket): rungs sit at
``grace * reduction**k`` epochs below ``max_epochs``. When a trial reaches a rung, its val_acc is compared
with the values recorded at that rung so far; it is stopped if it is below their ``(1 - 1/reduction)``
quantile (numpy's linear percentile, as Ray computes it; the first trial at a rung always continues), i.e. it
continues only if it is in the top ``1/reduction``. Then its value is recorded. Trials are processed one
after another in their recorded order (the order of the trials table, which is Tune's trial creation order);
the real search ran trials concurrently, so its rung records filled in an interleaved order.

No training runs: a trial the real ASHA stopped has no data past the epoch it was stopped at, so if a replayed
setting would have let it continue, it is evaluated only up to its recorded epochs (counted as ``cut_short``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from tlsearch import results
from tlsearch.errors import TLSearchError


class ReplayError(TLSearchError, ValueError):
    """A replay setting is invalid or the tables hold nothing to replay."""


@dataclass(frozen=True)
class Curve:
    """One trial's recorded curve: epochs ascending, val_acc and cumulative device-seconds at each."""

    trial_id: str
    epochs: Sequence[int]
    val_acc: Sequence[float | None]
    device_s: Sequence[float | None]
    status: str = "completed"  # completed | stopped | error, as recorded


@dataclass(frozen=True)
class TrialReplay:
    trial_id: str
    stop_epoch: int  # the last epoch the trial runs under the replayed setting
    stopped_at_rung: int | None  # the rung where the replay stops it, None if it is not stopped
    cut_short: bool  # the replay would continue it, but the recorded curve ends (stopped by the real ASHA)
    device_s: float  # cumulative device-seconds at stop_epoch
    best_val_acc: float | None  # best val_acc over its epochs up to stop_epoch


@dataclass(frozen=True)
class ReplayResult:
    grace: int
    reduction: int
    max_epochs: int
    rungs: list[int]
    trials: list[TrialReplay] = field(default_factory=list)

    @property
    def device_s(self) -> float:
        return sum(t.device_s for t in self.trials)

    @property
    def best(self) -> TrialReplay | None:
        done = [t for t in self.trials if t.best_val_acc is not None]
        return max(done, key=lambda t: (t.best_val_acc, -t.device_s), default=None)

    @property
    def cut_short(self) -> list[str]:
        return [t.trial_id for t in self.trials if t.cut_short]

    def stopped(self) -> dict[str, int]:
        """Trial id -> the rung the replay stopped it at."""
        return {t.trial_id: t.stopped_at_rung for t in self.trials if t.stopped_at_rung is not None}


def rungs(grace: int, reduction: int, max_epochs: int) -> list[int]:
    """The epochs where ASHA decides: grace * reduction**k below max_epochs (there every trial stops)."""
    check_setting(grace, reduction, max_epochs)
    out = []
    rung = grace
    while rung < max_epochs:
        out.append(rung)
        rung *= reduction
    return out


def check_setting(grace: int, reduction: int, max_epochs: int) -> None:
    if max_epochs < 1:
        raise ReplayError(f"max_epochs must be 1 or more, got {max_epochs}")
    if grace < 1:
        raise ReplayError(f"--grace must be 1 or more epochs, got {grace}")
    if reduction < 2:
        raise ReplayError(f"--reduction must be 2 or more, got {reduction}")


def _valid(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _numbers(values: Iterable[float | None]) -> list[float]:
    """The values that are numbers (no None, no NaN), in order."""
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def replay(curves: Sequence[Curve], grace: int, reduction: int, max_epochs: int) -> ReplayResult:
    """Replay ASHA with (grace, reduction) over ``curves`` in their order; see the module docstring."""
    levels = rungs(grace, reduction, max_epochs)
    recorded: dict[int, list[float]] = {r: [] for r in levels}
    quantile = (1 - 1 / reduction) * 100
    out = []
    for curve in curves:
        acc = {int(e): a for e, a in zip(curve.epochs, curve.val_acc, strict=True)}
        last = min(max(acc, default=0), max_epochs)
        stop, stopped_at = last, None
        for rung in levels:
            if rung > last:
                break
            value = acc.get(rung)
            if not _valid(value):
                continue
            assert value is not None
            cutoff = float(np.percentile(recorded[rung], quantile)) if recorded[rung] else None
            recorded[rung].append(value)
            if cutoff is not None and value < cutoff:
                stop, stopped_at = rung, rung
                break
        out.append(_trial_outcome(curve, stop, stopped_at, max_epochs))
    return ReplayResult(grace, reduction, max_epochs, levels, out)


def _trial_outcome(curve: Curve, stop: int, stopped_at: int | None, max_epochs: int) -> TrialReplay:
    rows = [
        (int(e), a, d)
        for e, a, d in zip(curve.epochs, curve.val_acc, curve.device_s, strict=True)
        if e <= stop
    ]
    accs = _numbers(a for _, a, _ in rows)
    costs = _numbers(d for _, _, d in rows)
    cut_short = stopped_at is None and stop < max_epochs and curve.status not in ("error", "timeout")
    return TrialReplay(
        trial_id=curve.trial_id,
        stop_epoch=stop,
        stopped_at_rung=stopped_at,
        cut_short=cut_short,
        device_s=costs[-1] if costs else 0.0,
        best_val_acc=max(accs) if accs else None,
    )


def recorded_outcome(curves: Sequence[Curve]) -> tuple[float, float | None]:
    """What the real search spent (device-s) and the best val_acc it found, from the same curves."""
    spent = 0.0
    best: float | None = None
    for curve in curves:
        costs = _numbers(curve.device_s)
        spent += costs[-1] if costs else 0.0
        accs = _numbers(curve.val_acc)
        if accs and (best is None or max(accs) > best):
            best = max(accs)
    return spent, best


# ------------------------------------------------------------------------------------------ from the tables
def load_curves(path: str | Path, experiment: str | None = None) -> tuple[dict, list[Curve]]:
    """The experiment row (newest when ``experiment`` is None) and its trials' curves in recorded order."""
    from tlsearch.report import pick_experiment

    resultset = results.open(path)
    info = pick_experiment(resultset, experiment)
    name = info["experiment"]
    trials = resultset.trials.to_table(
        columns=["trial_id", "status"], filter=pc.field("experiment") == name
    ).to_pylist()
    epochs = resultset.epochs.to_table(
        columns=["trial_id", "epoch", "val_acc", "device_s"], filter=pc.field("experiment") == name
    ).to_pylist()
    by_trial: dict[str, list[dict]] = {}
    for row in sorted(epochs, key=lambda r: r["epoch"]):
        by_trial.setdefault(row["trial_id"], []).append(row)
    order = [t["trial_id"] for t in trials] + sorted(set(by_trial) - {t["trial_id"] for t in trials})
    status = {t["trial_id"]: t["status"] or "completed" for t in trials}
    curves = [
        Curve(
            trial_id=tid,
            epochs=[r["epoch"] for r in by_trial.get(tid, [])],
            val_acc=[r["val_acc"] for r in by_trial.get(tid, [])],
            device_s=[r["device_s"] for r in by_trial.get(tid, [])],
            status=status.get(tid, "completed"),
        )
        for tid in order
    ]
    return info, curves


def parse_ints(values: Sequence[str] | str, option: str) -> list[int]:
    """``"1,2"`` or ``["1", "2,4"]`` as ``[1, 2, 4]``; a clear error for anything else."""
    items = [values] if isinstance(values, str) else list(values)
    parts = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    if not parts:
        raise ReplayError(f"{option} needs at least one whole number, e.g. {option} 1,2")
    try:
        return list(dict.fromkeys(int(p) for p in parts))
    except ValueError:
        raise ReplayError(
            f"{option} takes whole numbers separated by commas, got {','.join(parts)!r}"
        ) from None


def replay_settings(
    curves: Sequence[Curve], graces: Sequence[int], reductions: Sequence[int], max_epochs: int
) -> list[ReplayResult]:
    for g in graces:
        for r in reductions:
            check_setting(g, r, max_epochs)
    return [replay(curves, g, r, max_epochs) for g in graces for r in reductions]


def format_report(info: dict, curves: Sequence[Curve], outcomes: Sequence[ReplayResult]) -> list[str]:
    """Terminal lines: the recorded run, then one line per replayed setting."""
    spent, best = recorded_outcome(curves)
    max_epochs = info["max_epochs"]
    lines = [
        f"replay of {info['experiment']}: {len(curves)} trials, max_epochs {max_epochs}, recorded with grace "
        f"{info.get('grace_period')} reduction {info.get('reduction_factor')}: "
        f"{spent:.1f} device-s, best val_acc {_acc(best)}",
        f"{'grace':>5} {'reduction':>9}  {'rungs':<14} {'device-s':>10} {'vs recorded':>11} "
        f"{'best val_acc':>12}"
        f"  {'stopped':>7}  {'cut short':>9}",
    ]
    for o in outcomes:
        share = f"{o.device_s / spent:.1%}" if spent else "--"
        best_trial = o.best
        lines.append(
            f"{o.grace:>5} {o.reduction:>9}  {','.join(map(str, o.rungs)) or '(none)':<14} "
            f"{o.device_s:>10.1f} "
            f"{share:>11} {_acc(best_trial.best_val_acc if best_trial else None):>12}  {len(o.stopped()):>7}"
            f"  {len(o.cut_short):>9}"
        )
    if any(o.cut_short for o in outcomes):
        lines.append(
            "cut short: trials the replayed setting would have continued, but the real ASHA stopped them, so "
            "their curves end early; they are counted only up to their recorded epochs (compute and accuracy "
            "are lower bounds)."
        )
    lines.append(
        "trials are replayed one after another in recorded order; the real search ran them concurrently."
    )
    return lines


def _acc(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "--"
