"""Reports from the tables: what the search found and what transfer saved.

:func:`summary` is the short text printed at the end of ``tlsearch run``. :func:`build_report` turns one
experiment's measured trials into the answer to "how much compute and labelled data did pretraining save?"
(plain data, easy to test), and :func:`write_report` writes it as ``report.md`` plus PNG plots.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tlsearch import results
from tlsearch.errors import TLSearchError

ARMS = ("pretrained", "scratch")
TOP_CURVES = 5


class ReportError(TLSearchError, ValueError):
    """The report cannot be built from what was asked or what the tables hold."""


# ---------------------------------------------------------------------------------- summary (tlsearch run)
def _best_row(trials: pa.Table) -> dict | None:
    done = trials.filter(pc.is_valid(trials["best_val_acc"]))
    if done.num_rows == 0:
        return None
    order = pc.sort_indices(done, sort_keys=[("best_val_acc", "descending"), ("device_s", "ascending")])
    return done.take(order[:1]).to_pylist()[0]


def summary(trials: pa.Table) -> list[str]:
    """Lines for the end of ``tlsearch run``: the best trial, then pretrained vs scratch per data fraction."""
    lines = []
    best = _best_row(trials)
    statuses = pc.value_counts(trials["status"]).to_pylist()
    counts = ", ".join(f"{s['counts']} {s['values']}" for s in statuses)
    lines.append(f"trials: {trials.num_rows} ({counts})")
    if best is None:
        lines.append("no trial reported a result")
        return lines
    lines.append(
        f"best: trial {best['trial_id']} val_acc {best['best_val_acc']:.4f} at epoch {best['best_epoch']} "
        f"({best['init']}, freeze_depth {best['freeze_depth']}, head_lr {best['head_lr']:.2e}, "
        f"backbone_lr {best['backbone_lr']:.2e}, data_fraction {best['data_fraction']:g}; "
        f"{best['device_s']:.1f} device-s, {best['train_flops']:.3g} train FLOPs)"
    )
    lines.append("data_fraction  pretrained best (device-s)   scratch best (device-s)")
    fractions = sorted(set(trials["data_fraction"].to_pylist()) - {None})
    for fraction in fractions:
        cells = []
        for init in ("pretrained", "scratch"):
            arm = trials.filter(
                pc.and_(pc.equal(trials["data_fraction"], fraction), pc.equal(trials["init"], init))
            )
            row = _best_row(arm)
            cells.append(f"{row['best_val_acc']:.4f} ({row['device_s']:7.1f})" if row else "   -- (no trial)")
        lines.append(f"{fraction:>13g}  {cells[0]:>25}   {cells[1]:>23}")
    return lines


# ------------------------------------------------------------------------------------------------ loading
@dataclass(frozen=True)
class Experiment:
    """One search: its experiments row, and its trials and epochs as lists of dicts (epochs sorted)."""

    info: dict[str, Any]
    trials: list[dict[str, Any]]
    epochs: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return str(self.info["experiment"])

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
    return Experiment(info, trials, epochs)


# --------------------------------------------------------------------------------------------- the numbers
@dataclass(frozen=True)
class Hit:
    """Where one arm first reached the target at one data fraction (None: not reached)."""

    device_s: float | None = None
    train_flops: float | None = None
    trial_id: str | None = None  # the trial with the least device-seconds
    epoch: int | None = None


@dataclass(frozen=True)
class TargetRow:
    data_fraction: float | None  # None: over all data fractions
    pretrained: Hit
    scratch: Hit

    @property
    def device_ratio(self) -> float | None:
        return _ratio(self.scratch.device_s, self.pretrained.device_s)

    @property
    def flops_ratio(self) -> float | None:
        return _ratio(self.scratch.train_flops, self.pretrained.train_flops)


def _ratio(scratch: float | None, pretrained: float | None) -> float | None:
    if scratch is None or pretrained is None or pretrained <= 0:
        return None
    return scratch / pretrained


def first_hits(exp: Experiment, target: float) -> list[dict[str, Any]]:
    """Per trial, the first epoch row whose val_acc >= target (trials that never got there: absent)."""
    hits: dict[str, dict[str, Any]] = {}
    for row in exp.epochs:  # sorted by trial, then epoch: the first match per trial is the first epoch
        if row["trial_id"] not in hits and row["val_acc"] is not None and row["val_acc"] >= target:
            hits[row["trial_id"]] = row
    return list(hits.values())


def _best_hit(rows: Iterable[dict[str, Any]]) -> Hit:
    rows = [r for r in rows if r["device_s"] is not None]
    if not rows:
        return Hit()
    cheapest = min(rows, key=lambda r: (r["device_s"], r["trial_id"]))
    flops = [r["train_flops"] for r in rows if r["train_flops"] is not None]
    return Hit(cheapest["device_s"], min(flops) if flops else None, cheapest["trial_id"], cheapest["epoch"])


def compute_to_target(exp: Experiment, target: float) -> list[TargetRow]:
    """Per data fraction (then over all), the least cumulative cost at which each arm first reached target."""
    hits = first_hits(exp, target)
    fractions = sorted({r["data_fraction"] for r in exp.trials if r["data_fraction"] is not None})
    out = []
    for fraction in [*fractions, None]:
        cell = {
            arm: _best_hit(
                h for h in hits if h["init"] == arm and (fraction is None or h["data_fraction"] == fraction)
            )
            for arm in ARMS
        }
        out.append(TargetRow(fraction, cell["pretrained"], cell["scratch"]))
    return out


def data_to_target(rows: list[TargetRow]) -> dict[str, float | None]:
    """Per arm, the smallest data fraction at which some trial reached the target."""
    out: dict[str, float | None] = {}
    for arm in ARMS:
        reached = [
            r.data_fraction
            for r in rows
            if r.data_fraction is not None and getattr(r, arm).device_s is not None
        ]
        out[arm] = min(reached) if reached else None
    return out


def default_target(exp: Experiment) -> tuple[float, str]:
    """The best val_acc any scratch trial reached at any epoch (else the best of any trial), and how."""
    scratch = [r["val_acc"] for r in exp.epochs if r["init"] == "scratch" and r["val_acc"] is not None]
    if scratch:
        return max(scratch), "default: the best val_acc any scratch trial reached"
    anything = [r["val_acc"] for r in exp.epochs if r["val_acc"] is not None]
    if not anything:
        raise ReportError(f"experiment {exp.name} has no epoch with a val_acc; nothing to report")
    return max(anything), "default: the best val_acc of any trial, as no scratch trial reported one"


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
    device_s: float  # cumulative device-seconds at the first epoch reaching the trial's best val_acc
    val_acc: float
    epoch: int


def trial_points(exp: Experiment) -> list[Point]:
    points = []
    for trial in exp.trials:
        curve = [
            r for r in exp.curve(trial["trial_id"]) if r["val_acc"] is not None and r["device_s"] is not None
        ]
        if curve:
            best = max(r["val_acc"] for r in curve)
            first = next(r for r in curve if r["val_acc"] == best)
            points.append(Point(trial["trial_id"], trial["init"], first["device_s"], best, first["epoch"]))
    return points


def pareto_front(points: list[Point]) -> list[Point]:
    """Points no other point beats on both accuracy (higher) and compute (lower), cheapest first."""
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.device_s, -p.val_acc, p.trial_id)):
        if not front or p.val_acc > front[-1].val_acc:
            front.append(p)
    return front


@dataclass(frozen=True)
class TrialCost:
    trial_id: str
    status: str
    epochs: int
    device_s: float
    train_flops: float
    full_device_s: float  # what it would have cost run to max_epochs (linear extrapolation of stopped trials)
    full_train_flops: float


@dataclass(frozen=True)
class AshaSavings:
    max_epochs: int
    trials: list[TrialCost] = field(default_factory=list)

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
    def spent_train_flops(self) -> float:
        return sum(t.train_flops for t in self.trials)

    @property
    def full_train_flops(self) -> float:
        return sum(t.full_train_flops for t in self.trials)

    @property
    def saved_share(self) -> float | None:
        return self.saved_device_s / self.full_device_s if self.full_device_s > 0 else None


def asha_savings(exp: Experiment) -> AshaSavings:
    """Compute spent against the same trials run to max_epochs.

    Each trial ASHA stopped at epoch e after spending c is extrapolated linearly to c / e * max_epochs;
    completed and errored trials count what they spent.
    """
    max_epochs = int(exp.info["max_epochs"])
    costs = []
    for trial in exp.trials:
        curve = exp.curve(trial["trial_id"])
        last = curve[-1] if curve else {}
        epochs = int(last.get("epoch") or 0)
        spent = float(last.get("device_s") or 0.0)
        flops = float(last.get("train_flops") or 0.0)
        scale = max_epochs / epochs if trial["status"] == "stopped" and 0 < epochs < max_epochs else 1.0
        costs.append(
            TrialCost(trial["trial_id"], trial["status"], epochs, spent, flops, spent * scale, flops * scale)
        )
    return AshaSavings(max_epochs, costs)


def top_trials(exp: Experiment, n: int = TOP_CURVES) -> list[dict[str, Any]]:
    done = [t for t in exp.trials if t["best_val_acc"] is not None]
    return sorted(done, key=lambda t: (-t["best_val_acc"], t["device_s"] or 0.0, t["trial_id"]))[:n]


@dataclass(frozen=True)
class Report:
    exp: Experiment
    target: float
    target_how: str
    best: dict[str, Any] | None
    to_target: list[TargetRow]
    data_needed: dict[str, float | None]
    by_freeze: list[GroupBest]
    by_fraction: list[GroupBest]
    points: list[Point]
    front: list[Point]
    savings: AshaSavings
    top: list[dict[str, Any]]


def build_report(exp: Experiment, target_acc: float | None = None) -> Report:
    if target_acc is not None and not 0 < target_acc <= 1:
        raise ReportError(
            f"--target-acc is a val_acc fraction in (0, 1], got {target_acc:g}"
            + (f"; did you mean {target_acc / 100:g}?" if 1 < target_acc <= 100 else "")
        )
    if target_acc is None:
        target, how = default_target(exp)
    else:
        target, how = target_acc, "given with --target-acc"
    rows = compute_to_target(exp, target)
    points = trial_points(exp)
    return Report(
        exp=exp,
        target=target,
        target_how=how,
        best=top_trials(exp, 1)[0] if top_trials(exp, 1) else None,
        to_target=rows,
        data_needed=data_to_target(rows),
        by_freeze=accuracy_by(exp, "freeze_depth"),
        by_fraction=accuracy_by(exp, "data_fraction"),
        points=points,
        front=pareto_front(points),
        savings=asha_savings(exp),
        top=top_trials(exp),
    )


# ------------------------------------------------------------------------------------------------- text
def pct(value: float | None) -> str:
    return f"{value * 100:.2f}%" if value is not None else "--"


def _where(fraction: float | None) -> str:
    return "any data fraction" if fraction is None else f"data_fraction {fraction:g}"


def fraction_label(fraction: float | None) -> str:
    return "all fractions" if fraction is None else f"{fraction:g}"


def ratio_text(ratio: float | None, pretrained: Hit, scratch: Hit) -> str:
    if ratio is not None:
        return f"{ratio:.3g}x"
    if pretrained.device_s is None and scratch.device_s is None:
        return "neither reached"
    return "scratch not reached" if scratch.device_s is None else "pretrained not reached"


def hit_text(hit: Hit) -> str:
    if hit.device_s is None:
        return "not reached"
    flops = f"{hit.train_flops:.3g}" if hit.train_flops is not None else "--"
    return f"{hit.device_s:.1f} device-s, {flops} FLOPs (trial {hit.trial_id}, epoch {hit.epoch})"


def best_text(best: dict[str, Any] | None) -> str:
    if best is None:
        return "no trial reported a val_acc"
    return (
        f"trial {best['trial_id']}: {best['init']}, freeze_depth {best['freeze_depth']}, head_lr "
        f"{_num(best['head_lr'])}, backbone_lr {_num(best['backbone_lr'])}, data_fraction "
        f"{_num(best['data_fraction'])}"
        f" -> val_acc {pct(best['best_val_acc'])} at epoch {best['best_epoch']}; it spent "
        f"{_num(best['device_s'], '.1f')} device-s, {_num(best['train_flops'])} train FLOPs, "
        f"{_num(best['wall_s'], '.1f')} s wall over {best['epochs']} epochs"
    )


def _num(value: Any, spec: str = ".3g") -> str:
    return "--" if value is None else format(value, spec)


def headline(report: Report) -> list[str]:
    """The lines printed in the terminal."""
    lines = [
        f"experiment {report.exp.name}: {len(report.exp.trials)} trials, max_epochs "
        f"{report.exp.info['max_epochs']}",
        "best: " + best_text(report.best),
        f"target val_acc {pct(report.target)} ({report.target_how})",
    ]
    for row in report.to_target:
        lines.append(f"  {_where(row.data_fraction)}: " + _target_sentence(row, report.target))
    data = report.data_needed
    lines.append(
        f"least labelled data to reach the target: pretrained {_frac(data['pretrained'])}, "
        f"scratch {_frac(data['scratch'])}"
    )
    s = report.savings
    share = f"{s.saved_share:.1%}" if s.saved_share is not None else "--"
    lines.append(
        f"ASHA: spent {s.spent_device_s:.1f} device-s; the same trials run to {s.max_epochs} epochs would "
        "have cost "
        f"~{s.full_device_s:.1f} (stopped trials extrapolated linearly): saved {s.saved_device_s:.1f} "
        f"({share})"
    )
    return lines


def _frac(value: float | None) -> str:
    return "not reached" if value is None else f"data_fraction {value:g}"


def _target_sentence(row: TargetRow, target: float) -> str:
    p, s = row.pretrained, row.scratch
    if row.device_ratio is not None:
        flops = f", {row.flops_ratio:.3g}x fewer FLOPs" if row.flops_ratio is not None else ""
        return (
            f"pretrained reached {pct(target)} with {row.device_ratio:.3g} times less compute "
            f"({p.device_s:.1f} vs {s.device_s:.1f} device-s{flops})"
        )
    if p.device_s is not None:
        return f"pretrained reached {pct(target)} in {p.device_s:.1f} device-s; scratch: not reached"
    if s.device_s is not None:
        return f"scratch reached {pct(target)} in {s.device_s:.1f} device-s; pretrained: not reached"
    return "not reached by either"


def markdown(report: Report, plots: dict[str, str]) -> str:
    exp, info = report.exp, report.exp.info
    out = [
        f"# tlsearch report: {exp.name}",
        "",
        f"{info.get('model')} on {info.get('dataset')}; {len(exp.trials)} trials "
        f"({_status_counts(exp)}); max_epochs {info['max_epochs']}, ASHA grace {info.get('grace_period')}, "
        f"reduction {info.get('reduction_factor')}; created {info.get('created_at')}.",
        "",
        "Accuracies are validation accuracies (`val_acc`, share of the held-out validation images classified "
        "correctly). Costs come from the epochs table and are cumulative per trial: `device_s` is wall-clock "
        "seconds times the devices (CPUs or GPUs) the trial held, `train_flops` the estimated training "
        "FLOPs.",
        "",
        "## Best configuration",
        "",
        best_text(report.best) + ".",
        "",
        "How: the trial with the highest `best_val_acc` (its best epoch); ties go to the fewer "
        "device-seconds. "
        "Its cost is the trial's total over all the epochs it ran.",
        "",
    ]
    out += _target_section(report, plots)
    out += _accuracy_section(report, plots)
    out += _pareto_section(report, plots)
    out += _savings_section(report, plots)
    out += _curves_section(report, plots)
    return "\n".join(out) + "\n"


def _status_counts(exp: Experiment) -> str:
    counts: dict[str, int] = {}
    for t in exp.trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: str(kv[0])))


def _image(plots: dict[str, str], key: str, alt: str) -> list[str]:
    return [f"![{alt}]({plots[key]})", ""] if key in plots else []


def _target_section(report: Report, plots: dict[str, str]) -> list[str]:
    out = [
        "## Compute to target",
        "",
        f"Target: val_acc >= {pct(report.target)} ({report.target_how}).",
        "",
        "| data_fraction | pretrained | scratch | scratch / pretrained device-s | scratch / pretrained "
        "FLOPs |",
        "|---|---|---|---|---|",
    ]
    for row in report.to_target:
        flops = f"{row.flops_ratio:.3g}x" if row.flops_ratio is not None else "--"
        out.append(
            f"| {fraction_label(row.data_fraction)} | {hit_text(row.pretrained)} | {hit_text(row.scratch)} | "
            f"{ratio_text(row.device_ratio, row.pretrained, row.scratch)} | {flops} |"
        )
    data = report.data_needed
    out += [
        "",
        f"Least labelled data to reach the target: pretrained {_frac(data['pretrained'])}, scratch "
        f"{_frac(data['scratch'])}.",
        "",
        "How: for every trial, the first epoch whose `val_acc` >= the target, and the cumulative "
        "`device_s` and "
        "`train_flops` at that epoch. Each cell is the minimum over the trials of that arm (`init`) and data "
        "fraction (the trial named is the one with the least device-seconds; the FLOPs minimum is taken "
        "on its "
        "own and may come from another trial). 'all fractions' takes the minimum over every fraction. "
        "The ratio "
        "is scratch / pretrained: how many times less compute pretraining needed. 'not reached': no trial of "
        "that arm and fraction reached the target within the epochs it ran (ASHA may have stopped it first). "
        "The least labelled data is the smallest data fraction with a trial of that arm reaching the target.",
        "",
    ]
    return out + _image(plots, "compute_to_target", "device-seconds to reach the target")


def _accuracy_section(report: Report, plots: dict[str, str]) -> list[str]:
    out = ["## Accuracy against freeze depth and data fraction", ""]
    for title, rows, column in (
        ("freeze_depth", report.by_freeze, "freeze depth"),
        ("data_fraction", report.by_fraction, "data fraction"),
    ):
        out += [f"| init | {column} | best val_acc | trials |", "|---|---|---|---|"]
        out += [f"| {g.init} | {g.key:g} | {pct(g.best_val_acc)} | {g.trials} |" for g in rows]
        out.append("")
        out += _image(plots, f"accuracy_vs_{title}", f"accuracy against {column}")
    out += [
        "How: the highest `best_val_acc` over the trials of each (init, value) group; `trials` counts "
        "the trials "
        "with a result. Freeze depth 0 trains every parameter group; depth d freezes the first d groups.",
        "",
    ]
    return out


def _pareto_section(report: Report, plots: dict[str, str]) -> list[str]:
    out = [
        "## Pareto front: accuracy against compute",
        "",
        "| trial | init | device-s | val_acc | epoch |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| {p.trial_id} | {p.init} | {p.device_s:.1f} | {pct(p.val_acc)} | {p.epoch} |" for p in report.front
    ]
    out += [
        "",
        "How: each trial is one point, its best `val_acc` against the cumulative `device_s` at the first "
        "epoch "
        "that reached it. A point is on the front when no cheaper-or-equal point has a higher or equal "
        "accuracy.",
        "",
    ]
    return out + _image(plots, "pareto", "Pareto front")


def _savings_section(report: Report, plots: dict[str, str]) -> list[str]:
    s = report.savings
    share = f"{s.saved_share:.1%}" if s.saved_share is not None else "--"
    stopped = [t for t in s.trials if t.status == "stopped" and t.epochs < s.max_epochs]
    return [
        "## What ASHA saved",
        "",
        "| | device-s | train FLOPs |",
        "|---|---|---|",
        f"| spent | {s.spent_device_s:.1f} | {s.spent_train_flops:.3g} |",
        f"| same trials run to {s.max_epochs} epochs (estimate) | {s.full_device_s:.1f} | "
        f"{s.full_train_flops:.3g} |",
        f"| saved | {s.saved_device_s:.1f} ({share}) | {s.full_train_flops - s.spent_train_flops:.3g} |",
        "",
        "How: spent is the sum over trials of the cumulative cost at each trial's last recorded epoch. "
        "For the "
        f"estimate, each of the {len(stopped)} trial(s) ASHA stopped at epoch e after spending c is "
        "extrapolated "
        f"linearly to c / e x max_epochs ({s.max_epochs}, from the experiments table), i.e. assuming every "
        "further epoch costs what its epochs did on average; completed and errored trials count what "
        "they spent.",
        "",
        *_image(plots, "asha_savings", "what ASHA saved"),
    ]


def _curves_section(report: Report, plots: dict[str, str]) -> list[str]:
    out = [
        "## Learning curves of the top trials",
        "",
        "| trial | init | freeze_depth | data_fraction | best val_acc |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| {t['trial_id']} | {t['init']} | {t['freeze_depth']} | {_num(t['data_fraction'], 'g')} | "
        f"{pct(t['best_val_acc'])} |"
        for t in report.top
    ]
    out += [
        "",
        f"How: the {TOP_CURVES} trials with the highest `best_val_acc`; `val_acc` at each epoch against "
        "the epoch and against cumulative device-seconds.",
        "",
    ]
    return out + _image(plots, "learning_curves", "learning curves")


# ------------------------------------------------------------------------------------------------- plots
COLORS = {"pretrained": "tab:blue", "scratch": "tab:orange"}


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")


def plot_compute_to_target(report: Report, path: Path) -> None:
    fig = _figure()
    ax = fig.subplots()
    rows = [r for r in report.to_target if r.data_fraction is not None]
    width = 0.38
    for i, arm in enumerate(ARMS):
        for j, row in enumerate(rows):
            hit = getattr(row, arm)
            x = j + (i - 0.5) * width
            if hit.device_s is not None:
                ax.bar(x, hit.device_s, width, color=COLORS[arm], label=arm if j == 0 else None)
            else:
                ax.bar(x, 0, width, color=COLORS[arm], label=arm if j == 0 else None)
                ax.text(x, 0, "not\nreached", ha="center", va="bottom", fontsize=8, color=COLORS[arm])
    ax.set_xticks(range(len(rows)), [f"{r.data_fraction:g}" for r in rows])
    ax.set_xlabel("data fraction (share of the labelled training pool)")
    ax.set_ylabel("device-seconds to first reach the target")
    ax.set_title(f"Compute to reach val_acc >= {pct(report.target)}")
    ax.legend(title="init")
    _save(fig, path)


def plot_accuracy(groups: list[GroupBest], report: Report, column: str, label: str, path: Path) -> None:
    fig = _figure()
    ax = fig.subplots()
    for arm in ARMS:
        trials = [
            t
            for t in report.exp.trials
            if t["init"] == arm and t["best_val_acc"] is not None and t[column] is not None
        ]
        ax.scatter(
            [t[column] for t in trials],
            [t["best_val_acc"] * 100 for t in trials],
            color=COLORS[arm],
            alpha=0.35,
            s=18,
        )
        best = [g for g in groups if g.init == arm]
        if best:
            ax.plot(
                [g.key for g in best],
                [g.best_val_acc * 100 for g in best],
                marker="o",
                color=COLORS[arm],
                label=f"{arm} (best per value)",
            )
    if column == "data_fraction":
        keys = [g.key for g in groups if g.key > 0]
        if keys and max(keys) / min(keys) >= 10:
            ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"Accuracy against {label.split(' (')[0]} (dots: every trial)")
    ax.legend()
    _save(fig, path)


def plot_pareto(report: Report, path: Path) -> None:
    fig = _figure()
    ax = fig.subplots()
    for arm in ARMS:
        pts = [p for p in report.points if p.init == arm]
        ax.scatter(
            [p.device_s for p in pts], [p.val_acc * 100 for p in pts], color=COLORS[arm], label=arm, s=22
        )
    front = report.front
    if front:
        ax.step(
            [p.device_s for p in front],
            [p.val_acc * 100 for p in front],
            where="post",
            color="black",
            linewidth=1.2,
            label="Pareto front",
        )
    if report.points and min(p.device_s for p in report.points) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("device-seconds to the trial's best epoch (cumulative)")
    ax.set_ylabel("best validation accuracy (%)")
    ax.set_title("Accuracy against compute, one point per trial")
    ax.legend()
    _save(fig, path)


def plot_savings(report: Report, path: Path) -> None:
    s = report.savings
    fig = _figure(7.0, 3.0)
    ax = fig.subplots()
    ax.barh([1, 0], [s.full_device_s, s.spent_device_s], color=["tab:gray", "tab:green"])
    ax.set_yticks([1, 0], [f"run to {s.max_epochs} epochs (estimate)", "spent with ASHA"])
    ax.set_xlabel("device-seconds (all trials)")
    share = f"{s.saved_share:.1%}" if s.saved_share is not None else "--"
    ax.set_title(f"ASHA saved {s.saved_device_s:.1f} device-s ({share})")
    _save(fig, path)


def plot_curves(report: Report, path: Path) -> None:
    fig = _figure(10.0, 4.5)
    by_epoch, by_cost = fig.subplots(1, 2, sharey=True)
    for trial in report.top:
        curve = [r for r in report.exp.curve(trial["trial_id"]) if r["val_acc"] is not None]
        label = (
            f"{trial['trial_id']} ({trial['init']}, fd {trial['freeze_depth']}, "
            f"df {_num(trial['data_fraction'], 'g')})"
        )
        line = by_epoch.plot(
            [r["epoch"] for r in curve],
            [r["val_acc"] * 100 for r in curve],
            marker="o",
            markersize=3,
            linestyle="-" if trial["init"] == "pretrained" else "--",
            label=label,
        )
        by_cost.plot(
            [r["device_s"] for r in curve],
            [r["val_acc"] * 100 for r in curve],
            marker="o",
            markersize=3,
            color=line[0].get_color(),
            linestyle=line[0].get_linestyle(),
        )
    for ax in (by_epoch, by_cost):
        ax.axhline(report.target * 100, color="gray", linewidth=0.8, linestyle=":", label=None)
    by_epoch.set_xlabel("epoch")
    by_epoch.set_ylabel("validation accuracy (%)")
    by_cost.set_xlabel("cumulative device-seconds")
    by_epoch.set_title(f"Top {len(report.top)} trials (solid: pretrained, dashed: scratch, dotted: target)")
    from matplotlib.ticker import MaxNLocator

    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_epoch.legend(fontsize=7)
    _save(fig, path)


def write_plots(report: Report, folder: Path) -> dict[str, str]:
    """Write the PNGs into ``folder``; returns name -> file name (relative, for report.md)."""
    jobs = {
        "compute_to_target": lambda p: plot_compute_to_target(report, p),
        "accuracy_vs_freeze_depth": lambda p: plot_accuracy(
            report.by_freeze, report, "freeze_depth", "freeze depth (frozen leading parameter groups)", p
        ),
        "accuracy_vs_data_fraction": lambda p: plot_accuracy(
            report.by_fraction,
            report,
            "data_fraction",
            "data fraction (share of the labelled training pool)",
            p,
        ),
        "pareto": lambda p: plot_pareto(report, p),
        "asha_savings": lambda p: plot_savings(report, p),
        "learning_curves": lambda p: plot_curves(report, p),
    }
    written = {}
    for name, draw in jobs.items():
        draw(folder / f"{name}.png")
        written[name] = f"{name}.png"
    return written


# ------------------------------------------------------------------------------------------------ writing
@dataclass(frozen=True)
class ReportOutcome:
    folder: Path
    markdown: Path
    plots: list[Path]
    lines: list[str]
    report: Report


def report_folder(path: str | Path, name: str) -> Path:
    path = Path(path)
    if (path / results.FILE_NAMES["experiments"]).is_file():
        return path / "report"  # a single search folder
    if (path / name).is_dir():
        return path / name / "report"
    raise ReportError(f"no folder {path / name} for experiment {name!r}; was the search folder renamed?")


def write_report(
    path: str | Path, experiment: str | None = None, target_acc: float | None = None
) -> ReportOutcome:
    """Build one experiment's report (newest by default); write report.md and PNGs to <name>/report/."""
    exp = load_experiment(path, experiment)
    report = build_report(exp, target_acc)
    folder = report_folder(path, exp.name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        plots = write_plots(report, folder)
        md = folder / "report.md"
        tmp = folder / ".report.md.tmp"
        tmp.write_text(markdown(report, plots))
        tmp.replace(md)
    except OSError as exc:
        raise ReportError(f"cannot write the report under {folder}: {exc.strerror or exc}") from None
    lines = [*headline(report), f"report: {md}"]
    return ReportOutcome(folder, md, [folder / p for p in plots.values()], lines, report)
