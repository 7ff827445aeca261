"""The report as text: the lines printed at the end of ``tlsearch run`` and ``tlsearch report``, and report.md."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tlsearch import results
from tlsearch.report.analysis import ARMS, TOP_CURVES, ArmRuns, ConfirmedFraction, Experiment, Hit, Report, TargetRow
from tlsearch.report.stats import Interval

UNCONFIRMED = "from the search, unconfirmed"


def pct(value: float | None) -> str:
    return f"{value * 100:.2f}%" if value is not None else "--"


def num(value: Any, spec: str = ".3g") -> str:
    return "--" if value is None else format(value, spec)


# ---------------------------------------------------------------------------------- summary (tlsearch run)
def summary(trials: pa.Table) -> list[str]:
    """Lines for the end of ``tlsearch run``: the best trial, then pretrained vs scratch per data fraction."""
    statuses = pc.value_counts(trials["status"]).to_pylist()
    counts = ", ".join(f"{s['counts']} {s['values']}" for s in statuses)
    lines = [f"trials: {trials.num_rows} ({counts})"]
    rows = trials.to_pylist()
    best = results.best_trial(rows)
    if best is None:
        return [*lines, "no trial reported a result"]
    test = f", test_acc {best['test_acc']:.4f}" if best.get("test_acc") is not None else ""
    lines.append(
        f"best: trial {best['trial_id']} val_acc {best['best_val_acc']:.4f}{test} at epoch {best['best_epoch']} "
        f"({model_of(best)}{best['init']}, freeze_depth {best['freeze_depth']}, head_lr {best['head_lr']:.2e}, "
        f"backbone_lr {best['backbone_lr']:.2e}, data_fraction {best['data_fraction']:g}; "
        f"{num(best['device_s'], '.1f')} device-s, {num(best['train_flops'])} train FLOPs)"
    )
    lines.append("data_fraction  pretrained val / test (device-s)   scratch val / test (device-s)")
    for fraction in sorted({r["data_fraction"] for r in rows} - {None}):
        cells = [_summary_cell(results.best_trial(r for r in rows
                                                  if r["data_fraction"] == fraction and r["init"] == arm))
                 for arm in ARMS]
        lines.append(f"{fraction:>13g}  {cells[0]:>32}   {cells[1]:>29}")
    return lines


def _summary_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-- (no trial)"
    test = f"{row['test_acc']:.4f}" if row.get("test_acc") is not None else "--"
    return f"{row['best_val_acc']:.4f} / {test} ({num(row['device_s'], '7.1f')})"


# ----------------------------------------------------------------------------------------------- headline
def hit_text(hit: Hit) -> str:
    if hit.compute_s is None:
        return "not reached"
    flops = f"{hit.train_flops:.3g}" if hit.train_flops is not None else "--"
    return f"{hit.compute_s:.1f} device-s, {flops} FLOPs (trial {hit.trial_id}, epoch {hit.epoch})"


def ratio_text(ratio: float | None, pretrained: Hit, scratch: Hit) -> str:
    if ratio is not None:
        return f"{ratio:.3g}x"
    if pretrained.compute_s is None and scratch.compute_s is None:
        return "neither reached"
    return "scratch not reached" if scratch.compute_s is None else "pretrained not reached"


def model_of(row: Mapping[str, Any]) -> str:
    """``"resnet10t, "`` for a row that records its model (tables written before models were searched do not)."""
    return f"{row['model']}, " if row.get("model") else ""


def best_text(best: dict[str, Any] | None) -> str:
    if best is None:
        return "no trial reported a val_acc"
    test = f", test_acc {pct(best['test_acc'])}" if best.get("test_acc") is not None else ""
    return (
        f"trial {best['trial_id']}: {model_of(best)}{best['init']}, freeze_depth {best['freeze_depth']}, head_lr "
        f"{num(best['head_lr'])}, backbone_lr {num(best['backbone_lr'])}, data_fraction "
        f"{num(best['data_fraction'])} -> val_acc {pct(best['best_val_acc'])}{test} at epoch {best['best_epoch']}; "
        f"it spent {num(best['device_s'], '.1f')} device-s of training, {num(best['train_flops'])} train FLOPs"
    )


def times(ratio: float, fewer: str, more: str) -> str:
    """A scratch/pretrained ratio in words: ``2.4 times less`` when pretrained paid less, ``1.08 times more`` when
    it paid more (never "0.924 times less")."""
    return f"{ratio:.3g} times {fewer}" if ratio >= 1 else f"{1 / ratio:.3g} times {more}"


def target_sentence(row: TargetRow) -> str:
    p, s = row.pretrained, row.scratch
    if row.compute_ratio is not None:
        flops = f", {times(row.flops_ratio, 'fewer', 'more')} FLOPs" if row.flops_ratio is not None else ""
        return (f"pretrained reached {pct(row.target)} with {times(row.compute_ratio, 'less', 'more')} compute "
                f"({p.compute_s:.1f} vs {s.compute_s:.1f} device-s{flops})")
    if p.compute_s is not None:
        return f"pretrained reached {pct(row.target)} in {p.compute_s:.1f} device-s; scratch: not reached"
    if s.compute_s is not None:
        return f"scratch reached {pct(row.target)} in {s.compute_s:.1f} device-s; pretrained: not reached"
    return "not reached by either"


def interval_text(value: Interval | None, percent: bool = False) -> str:
    if value is None:
        return "--"
    return value.text(100, ".1f", "%") if percent else value.text(spec=".3g", suffix="x")


def runs_text(arm: ArmRuns) -> str:
    """Each run's compute-to-target; a run that never got there shows what it paid in all."""
    return ", ".join(f"{v:.1f}" if v is not None else f"not reached (paid {arm.paid[k]:.1f})"
                     for k, v in arm.to_target.items())


def confirmed_sentence(row: ConfirmedFraction) -> str:
    p, s = row.pretrained, row.scratch
    return (f"test_acc pretrained {interval_text(p.test_acc, True)}, scratch {interval_text(s.test_acc, True)}; "
            f"compute to {pct(row.target)} ({row.target_how}): scratch / pretrained {interval_text(row.ratio)}, "
            f"reached by {p.reached}/{p.runs} pretrained and {s.reached}/{s.runs} scratch runs -> {row.verdict}")


def headline(report: Report) -> list[str]:
    """The lines printed in the terminal."""
    exp = report.exp
    lines = [f"experiment {exp.name}: {len(exp.trials)} trials, max_epochs {exp.info['max_epochs']}",
             "best: " + best_text(report.best)]
    if report.confirmed:
        lines.append("confirmed (tlsearch confirm), per data fraction, 95% intervals:")
        lines += [f"  data_fraction {r.data_fraction:g}: " + confirmed_sentence(r) for r in report.confirmed]
    lines.append(f"compute to target per data fraction ({UNCONFIRMED}; target: "
                 f"{'given' if report.target_acc is not None else 'scratch best val_acc at that fraction'}):")
    lines += [f"  data_fraction {r.data_fraction:g}: " + target_sentence(r) for r in report.to_target]
    lines += cost_lines(report)
    return lines


def cost_lines(report: Report) -> list[str]:
    c, s = report.costs, report.savings
    share = f"{s.saved_share:.1%}" if s.saved_share is not None else "--"
    source = (f"{c.source_s:.1f} device-s, paid once and not in the ratios" if c.source_s is not None
              else "unknown (hub weights or no sidecar)")
    lines = [
        f"search cost: {c.training_s:.1f} device-s training, {c.startup_s:.1f} start-up, {c.shared_s:.1f} shared "
        "feature passes",
        f"source model pretraining: {source}",
        f"ASHA (estimate): spent {s.spent_device_s:.1f} device-s of training; the same trials run to {s.max_epochs} "
        f"epochs at their steady per-epoch cost: ~{s.full_device_s:.1f}; saved ~{s.saved_device_s:.1f} ({share})",
    ]
    lines += [f"  measured by confirm: trial {m.trial_id} ({m.status} at epoch {m.epochs}) run to {s.max_epochs} "
              f"epochs cost {m.measured_device_s:.1f} device-s of training (mean of {m.runs} runs); the estimate "
              f"said {m.estimated_device_s:.1f}" for m in s.measured]
    return lines


# ----------------------------------------------------------------------------------------------- report.md
def markdown(report: Report, plots: dict[str, str]) -> str:
    exp, info = report.exp, report.exp.info
    out = [
        f"# tlsearch report: {exp.name}", "",
        f"{info.get('model')} on {info.get('dataset')}; {len(exp.trials)} trials ({_status_counts(exp)}); "
        f"max_epochs {info['max_epochs']}, ASHA grace {info.get('grace_period')}, reduction "
        f"{info.get('reduction_factor')}; {num(info.get('train_pool_size'), 'd')} training, "
        f"{num(info.get('val_size'), 'd')} validation and {num(info.get('test_size'), 'd')} test images; created "
        f"{info.get('created_at')}.", "",
        "Validation accuracy (`val_acc`) drove every choice; the test set was read only after the search (the "
        "best trial and the best of each arm and data fraction) and by `tlsearch confirm`. Compute is what a "
        "user pays: device-seconds (wall seconds x CPUs or GPUs held) of training, plus each trial's start-up "
        "and its share of passes shared with other trials.", "",
        "## Best configuration", "", best_text(report.best) + ".", "",
        "How: the trial with the highest `best_val_acc`; ties go to the fewer device-seconds "
        "(`tlsearch.results.best_trial`, the one rule everywhere).", "",
    ]
    out += _confirmed_section(report, plots)
    out += _target_section(report, plots)
    out += _models_section(report, plots)
    out += _accuracy_section(report, plots)
    out += _pareto_section(report, plots)
    out += ["## Costs", "", *(f"- {line.strip()}" for line in cost_lines(report)), "",
            "How: ASHA's saving is an estimate: every trial ASHA stopped is charged its remaining epochs at its "
            "steady per-epoch cost (the median of its epochs after the first, which carries one-off work; a "
            "trial stopped after one epoch takes the median of trials of the same arm, freeze depth and data "
            "fraction). Start-up and shared passes are paid whether ASHA stops a trial or not.", "",
            *_image(plots, "asha_savings", "what ASHA saved")]
    out += _curves_section(report, plots)
    return "\n".join(out) + "\n"


def _status_counts(exp: Experiment) -> str:
    counts: dict[str, int] = {}
    for t in exp.trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: str(kv[0])))


def _image(plots: dict[str, str], key: str, alt: str) -> list[str]:
    return [f"![{alt}]({plots[key]})", ""] if key in plots else []


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def _confirmed_section(report: Report, plots: dict[str, str]) -> list[str]:
    if not report.confirmed:
        return ["## Confirmed numbers", "",
                f"None yet: every comparison below is {UNCONFIRMED}. Run `tlsearch confirm RESULTS_DIR "
                "--repeats 3` for test accuracies with intervals, compute ratios with intervals and verdicts.", ""]
    rows = [(f"{r.data_fraction:g}", interval_text(r.pretrained.test_acc, True),
             interval_text(r.scratch.test_acc, True), f"{pct(r.target)} ({r.target_how})",
             runs_text(r.pretrained), runs_text(r.scratch), interval_text(r.ratio), f"**{r.verdict}**")
            for r in report.confirmed]
    compared = {r.data_fraction for r in report.confirmed}
    alone = sorted({r["data_fraction"] for r in report.exp.confirm} - compared - {None})
    return ["## Confirmed numbers (tlsearch confirm)", "",
            *_table(("data_fraction", "pretrained test_acc", "scratch test_acc", "target val_acc",
                     "pretrained compute to target, per run", "scratch compute to target, per run",
                     "scratch / pretrained compute", "verdict"), rows), "",
            *([f"Confirmed with one arm only, nothing to compare: data fraction(s) "
               f"{', '.join(f'{f:g}' for f in alone)}.", ""] if alone else []),
            "How: the best configuration of each (init, data fraction) retrained with new seeds to max_epochs, "
            "no early stopping; nothing is compared across data fractions. Test accuracy is each run's "
            "best-validation epoch: mean [95% t interval] (n runs). Compute to target is what a run paid "
            "(device-seconds of training + start-up + its own frozen-feature passes) up to its first epoch at "
            "the target; the source model's pretraining is not included. The ratio is scratch / pretrained of the "
            "geometric means, its 95% interval a seeded bootstrap over the repeats (bootstrap standard error of "
            "the log ratio, Welch's t quantile; `tlsearch.report.stats`). A run that never reached the target "
            "counts what it paid in all, a lower bound. Verdicts: `saves` (interval above 1 and every "
            "pretrained run reached the target), `costs more` (interval below 1 and every scratch run reached "
            "it), `no evidence` (otherwise, e.g. the interval contains 1, or no pretrained run reached the "
            "target but the ratio of what they paid is not clearly below 1), `scratch never reached`.", "",
            *_image(plots, "confirmed", "confirmed runs: test accuracy and compute to target")]


def _target_section(report: Report, plots: dict[str, str]) -> list[str]:
    rows = [(f"{r.data_fraction:g}", pct(r.target), hit_text(r.pretrained), hit_text(r.scratch),
             ratio_text(r.compute_ratio, r.pretrained, r.scratch),
             f"{r.flops_ratio:.3g}x" if r.flops_ratio is not None else "--") for r in report.to_target]
    return ["## Compute to target, " + UNCONFIRMED, "",
            *_table(("data_fraction", "target", "pretrained", "scratch", "scratch / pretrained compute",
                     "scratch / pretrained FLOPs"), rows), "",
            "How: within each data fraction only (never across), the target is "
            + ("the given `--target-acc`" if report.target_acc is not None else
               "the best `val_acc` any scratch trial of that fraction reached")
            + "; for every trial, the first epoch at the target and what it had paid by then (training + "
            "start-up + shared passes); each cell is the cheapest trial of that arm. One search's trials are "
            "tuned and stopped early: these are leads, not results.", "",
            *_image(plots, "compute_to_target", "compute to reach the target")]


def _models_section(report: Report, plots: dict[str, str]) -> list[str]:
    choice = report.models
    if choice is None:
        return []
    bests = [(b.model, b.init, b.trials, pct(b.best_val_acc), pct(b.test_acc), num(b.freeze_share, ".2f"),
              num(b.freeze_depth), b.trial_id or "--") for b in choice.bests]
    models = sorted({b.model for b in choice.bests})
    winners = []
    for w in choice.winners:
        won = w.winner or {}
        winners.append((f"{w.data_fraction:g}", f"{won['model']} ({won['init']})" if won else "--",
                        pct(won.get("best_val_acc")), pct(won.get("test_acc")), pct(w.target),
                        *(hit_text(w.to_target[m]) if m in w.to_target else "--" for m in models)))
    return ["## Which model", "",
            *_table(("model", "init", "trials", "best val_acc", "its test_acc", "freeze share", "freeze depth",
                     "trial"), bests), "",
            *_table(("data_fraction", "won by", "val_acc", "test_acc", "target", *(f"{m} to target" for m in
                                                                                  models)), winners), "",
            "How: each model's best trial per arm and each data fraction's winner are chosen on validation "
            "(`best_trial`); the test accuracy is that choice's checkpoint scored once after the search (-- where "
            "no checkpoint was scored). Compute to target: the cheapest pretrained trial of the model to first "
            f"reach the fraction's target, {UNCONFIRMED}. A freeze share s freezes round(s x (groups - 1)) of a "
            "model's parameter groups.", "",
            *_image(plots, "pareto", "accuracy against compute by model")]


def _accuracy_section(report: Report, plots: dict[str, str]) -> list[str]:
    freeze = report.freeze_column.replace("_", " ")
    out = [f"## Accuracy against {freeze} and data fraction", ""]
    for title, rows, column in ((report.freeze_column, report.by_freeze, freeze),
                                ("data_fraction", report.by_fraction, "data fraction")):
        out += _table(("init", column, "best val_acc", "trials"),
                      ((g.init, f"{g.key:g}", pct(g.best_val_acc), g.trials) for g in rows))
        out += ["", *_image(plots, f"accuracy_vs_{title}", f"accuracy against {column}")]
    return [*out, "How: the highest `best_val_acc` over the trials of each (init, value) group. Freeze depth 0 "
            "trains every parameter group; depth d freezes the first d groups; a freeze share s (several "
            "models) freezes round(s x (groups - 1)) of each model's groups.", ""]


def _pareto_section(report: Report, plots: dict[str, str]) -> list[str]:
    rows = ((p.trial_id, p.init, f"{p.compute_s:.1f}", pct(p.val_acc), p.epoch) for p in report.front)
    return ["## Pareto front: accuracy against compute", "",
            *_table(("trial", "init", "device-s", "val_acc", "epoch"), rows), "",
            "How: each trial is one point, its best `val_acc` against what it had paid at the first epoch that "
            "reached it. A point is on the front when no cheaper-or-equal point is at least as accurate.", "",
            *_image(plots, "pareto", "Pareto front")]


def _curves_section(report: Report, plots: dict[str, str]) -> list[str]:
    rows = ((t["trial_id"], t["init"], t["freeze_depth"], num(t["data_fraction"], "g"), pct(t["best_val_acc"]))
            for t in report.top)
    return ["## Learning curves of the top trials", "",
            *_table(("trial", "init", "freeze_depth", "data_fraction", "best val_acc"), rows), "",
            f"How: the {TOP_CURVES} trials with the highest `best_val_acc`; `val_acc` against the epoch and "
            "against cumulative training device-seconds.", "", *_image(plots, "learning_curves", "learning curves")]
