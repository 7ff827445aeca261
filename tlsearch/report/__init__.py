"""Reports from the tables: what the search found and what transfer saved, per data fraction.

:mod:`~tlsearch.report.analysis` has the numbers (and :mod:`~tlsearch.report.stats` the intervals and verdicts),
:mod:`~tlsearch.report.markdown` the text, :mod:`~tlsearch.report.plots` the PNGs. :func:`write_report` writes
``report.md``, the plots and ``summary.json`` under ``<experiment>/report/``, on a local path or a URI.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tlsearch import results, storage
from tlsearch.report import stats
from tlsearch.report.analysis import (
    Experiment,
    Hit,
    Report,
    ReportError,
    TargetRow,
    build_report,
    load_experiment,
    pick_experiment,
)
from tlsearch.report.markdown import UNCONFIRMED, headline, hit_text, markdown, pct, ratio_text, summary

__all__ = [
    "Experiment", "Hit", "Report", "ReportError", "ReportOutcome", "TargetRow", "build_report", "headline",
    "hit_text", "load_experiment", "pct", "pick_experiment", "ratio_text", "report_folder", "summary",
    "summary_json", "write_report",
]


@dataclass(frozen=True)
class ReportOutcome:
    folder: str
    markdown: str
    plots: list[str]
    summary: str
    lines: list[str]
    report: Report


def report_folder(location: str | Path, name: str) -> str:
    """``<experiment>/report`` under a results directory, or ``report`` inside a single search folder."""
    if storage.is_file(storage.join(str(location), results.FILE_NAMES["experiments"])):
        return storage.join(str(location), "report")
    if storage.is_dir(storage.join(str(location), name)):
        return storage.join(str(location), name, "report")
    raise ReportError(f"no folder {storage.join(str(location), name)} for experiment {name!r}; "
                      "was the search folder renamed?")


def summary_json(report: Report) -> dict[str, Any]:
    """The report's numbers, machine-readable (``summary.json``): confirmed ones first, then the search's."""
    s = report.savings
    return {
        "experiment": report.exp.name,
        "confirmed": not report.unconfirmed,
        "compute": "device-seconds: device_s + startup_s + shared_device_s (null counts 0)",
        "verdicts": list(stats.VERDICTS),
        "per_data_fraction": [
            {**asdict(r), "runs_reached": {"pretrained": r.pretrained.reached, "scratch": r.scratch.reached}}
            for r in report.confirmed
        ],
        "best_trial": report.best,
        "models": asdict(report.models) if report.models else None,  # several models searched: which won
        "compute_to_target_unconfirmed": [
            {**asdict(r), "ratio": r.compute_ratio, "flops_ratio": r.flops_ratio, "basis": UNCONFIRMED}
            for r in report.to_target
        ],
        "costs": {**asdict(report.costs), "source_in_ratios": False},
        "asha": {"estimate": True, "spent_device_s": s.spent_device_s, "full_device_s": s.full_device_s,
                 "saved_device_s": s.saved_device_s, "saved_share": s.saved_share,
                 "measured_by_confirm": [asdict(m) for m in s.measured]},
    }


def write_report(location: str | Path, experiment: str | None = None,
                 target_acc: float | None = None) -> ReportOutcome:
    """Build one experiment's report (newest by default); write report.md, PNGs and summary.json."""
    from tlsearch.report.plots import write_plots

    exp = load_experiment(location, experiment)
    report = build_report(exp, target_acc)
    folder = report_folder(location, exp.name)
    plots = write_plots(report, folder)
    md = storage.write_text(storage.join(folder, "report.md"), markdown(report, plots))
    summary_file = storage.write_text(storage.join(folder, "summary.json"),
                                      json.dumps(summary_json(report), indent=2, default=str) + "\n")
    lines = [*headline(report), f"report: {md}"]
    return ReportOutcome(folder, md, [storage.join(folder, p) for p in plots.values()], summary_file, lines,
                         report)
