"""The report's plots: PNGs drawn with matplotlib's Agg canvas (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlsearch import storage
from tlsearch.report.analysis import ARMS, GroupBest, Report
from tlsearch.report.markdown import num

COLORS = {"pretrained": "tab:blue", "scratch": "tab:orange"}
FREEZE_LABELS = {"freeze_depth": "freeze depth (frozen leading parameter groups)",
                 "freeze_share": "freeze share (frozen share of each model's parameter groups)"}


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
    rows = report.to_target
    width = 0.38
    for i, arm in enumerate(ARMS):
        for j, row in enumerate(rows):
            hit = getattr(row, arm)
            x = j + (i - 0.5) * width
            if hit.compute_s is not None:
                ax.bar(x, hit.compute_s, width, color=COLORS[arm], label=arm if j == 0 else None)
            else:
                ax.bar(x, 0, width, color=COLORS[arm], label=arm if j == 0 else None)
                ax.text(x, 0, "not\nreached", ha="center", va="bottom", fontsize=8, color=COLORS[arm])
    ax.set_xticks(range(len(rows)), [f"{r.data_fraction:g}" for r in rows])
    ax.set_xlabel("data fraction (share of the labelled training pool)")
    ax.set_ylabel("device-seconds paid to first reach the target")
    ax.set_title("Compute to reach each fraction's target (from the search, unconfirmed)")
    if rows:
        ax.legend(title="init")
    _save(fig, path)


def plot_confirmed(report: Report, path: Path) -> None:
    """Per data fraction: test accuracy with its interval, and every run's compute to the target, per arm."""
    fig = _figure(10.0, 4.5)
    acc, cost = fig.subplots(1, 2)
    rows = report.confirmed
    for i, arm in enumerate(ARMS):
        for j, row in enumerate(rows):
            x, runs = j + (i - 0.5) * 0.3, getattr(row, arm)
            label = arm if j == 0 else None
            if runs.test_acc is not None:
                t = runs.test_acc
                err = [[(t.value - t.low) * 100], [(t.high - t.value) * 100]] if t.low is not None else None
                acc.errorbar([x], [t.value * 100], yerr=err, fmt="o", capsize=4, color=COLORS[arm], label=label)
            reached = [v for v in runs.to_target.values() if v is not None]
            short = [runs.paid[k] for k, v in runs.to_target.items() if v is None]
            cost.scatter([x] * len(reached), reached, color=COLORS[arm], s=24, label=label)
            cost.scatter([x] * len(short), short, facecolors="none", edgecolors=COLORS[arm], s=24)
    for j, row in enumerate(rows):
        cost.annotate(row.verdict, (j, 0.97), xycoords=("data", "axes fraction"), ha="center", va="top", fontsize=9)
    for ax in (acc, cost):
        ax.set_xticks(range(len(rows)), [f"{r.data_fraction:g}" for r in rows])
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_xlabel("data fraction")
        ax.legend(title="init", fontsize=8, loc="lower right")
    acc.set_ylabel("test accuracy (%), mean and 95% interval")
    cost.set_ylabel("device-seconds to the target, per run")
    cost.set_yscale("log")
    cost.set_title("Compute to target (hollow: never reached, at what the run paid)", fontsize=10)
    acc.set_title("Confirmed runs (tlsearch confirm)")
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
    """One point per trial; with several models, coloured by model (circles: pretrained, triangles: scratch)."""
    fig = _figure()
    ax = fig.subplots()
    by_model = report.models is not None
    colors = ({m: f"C{i}" for i, m in enumerate(sorted({p.model for p in report.points}))} if by_model
              else COLORS)
    for key, color in colors.items():
        for arm, marker in zip(ARMS, ("o", "^"), strict=True):
            pts = [p for p in report.points if p.init == arm and (p.model if by_model else p.init) == key]
            if pts:
                ax.scatter([p.compute_s for p in pts], [p.val_acc * 100 for p in pts], color=color, s=22,
                           marker=marker if by_model else "o", label=f"{key} ({arm})" if by_model else arm)
    front = report.front
    if front:
        ax.step(
            [p.compute_s for p in front],
            [p.val_acc * 100 for p in front],
            where="post",
            color="black",
            linewidth=1.2,
            label="Pareto front",
        )
    if report.points and min(p.compute_s for p in report.points) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("device-seconds to the trial's best epoch (cumulative)")
    ax.set_ylabel("best validation accuracy (%)")
    ax.set_title("Accuracy against compute, one point per trial" + (", by model" if by_model else ""))
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
    ax.set_title(f"ASHA saved ~{s.saved_device_s:.1f} device-s ({share}, estimate)")
    _save(fig, path)


def plot_curves(report: Report, path: Path) -> None:
    fig = _figure(10.0, 4.5)
    by_epoch, by_cost = fig.subplots(1, 2, sharey=True)
    for trial in report.top:
        curve = [r for r in report.exp.curve(trial["trial_id"]) if r["val_acc"] is not None]
        label = (
            f"{trial['trial_id']} ({trial['init']}, fd {trial['freeze_depth']}, "
            f"df {num(trial['data_fraction'], 'g')})"
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
    by_epoch.set_xlabel("epoch")
    by_epoch.set_ylabel("validation accuracy (%)")
    by_cost.set_xlabel("cumulative device-seconds")
    by_epoch.set_title(f"Top {len(report.top)} trials (solid: pretrained, dashed: scratch)")
    from matplotlib.ticker import MaxNLocator

    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_epoch.legend(fontsize=7)
    _save(fig, path)


def write_plots(report: Report, folder: str) -> dict[str, str]:
    """Write the PNGs into ``folder`` (a path or URI, atomically); returns name -> file name for report.md."""
    jobs = {
        "compute_to_target": lambda p: plot_compute_to_target(report, p),
        f"accuracy_vs_{report.freeze_column}": lambda p: plot_accuracy(
            report.by_freeze, report, report.freeze_column, FREEZE_LABELS[report.freeze_column], p
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
    if report.confirmed:
        jobs["confirmed"] = lambda p: plot_confirmed(report, p)
    written = {}
    for name, draw in jobs.items():
        with storage.writing(storage.join(folder, f"{name}.png")) as tmp:
            draw(tmp)
        written[name] = f"{name}.png"
    return written


