"""Benchmarks 3 and 5 from a finished search's tables: Tune overhead, and transfer vs scratch compute-to-target.

Reads one experiment (the newest, or ``--experiment``) from RESULTS_DIR's Parquet tables (``tlsearch.results.open``
through ``tlsearch.report.load_experiment``) and prints:

* **3. Tune overhead** = ``experiments.wall_s / (sum(trials.wall_s) / experiments.concurrency)``, goal <= 1.2.
  ``trials.wall_s`` is the worker's own cumulative wall time (from the start of ``train_loop_per_worker``), so
  the overhead is everything outside it: Ray start-up, starting each trial's Ray Train worker group, reporting
  and checkpointing, and slots left idle. When the search's Ray folder is beside the tables, each trial's Tune
  wall time (``time_total_s`` in ``_ray/tune/run_trial_<id>_*/result.json``) is compared with the worker's own,
  and each trial's first epoch (which includes start-up inside the worker) with its later epochs.
* **5. Transfer vs scratch**: compute-to-target per data fraction, from ``tlsearch.report`` (``build_report``:
  ``compute_to_target``, target by default the best val_acc any scratch trial reached); also with a target per
  data fraction (scratch's best at that fraction).

Appends one row to benchmarks/results.md. Starts no Ray and runs no search; to make a fresh search:
``bash scripts/quickstart.sh`` then ``.venv/bin/python benchmarks/from_tables.py results``.

Run: ``.venv/bin/python benchmarks/from_tables.py RESULTS_DIR [--experiment NAME] [--target-acc A] [--no-record]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from _common import append_result, median, table

from tlsearch import report, storage
from tlsearch.errors import TLSearchError

GOAL = 1.2


def tune_times(folder: Path, trial_ids: list[str]) -> dict[str, dict[str, float]]:
    """Per trial, Tune's own timing of its last and first result (``time_total_s``, first ``time_this_iter_s``)."""
    out: dict[str, dict[str, float]] = {}
    tune_dir = folder / "_ray" / "tune"
    for trial_id in trial_ids:
        for path in sorted(tune_dir.glob(f"run_trial_{trial_id}_*/result.json")):
            lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
            if lines:
                out[trial_id] = {"total_s": float(lines[-1]["time_total_s"]),
                                 "first_s": float(lines[0]["time_this_iter_s"])}
    return out


def overhead(exp: report.Experiment, results_dir: str) -> tuple[float, list[str], str]:
    """(overhead ratio, printed lines, short text for results.md)."""
    info = exp.info
    concurrency = int(info["concurrency"] or 1)
    trial_wall = sum(t["wall_s"] or 0.0 for t in exp.trials)
    ideal = trial_wall / concurrency
    ratio = info["wall_s"] / ideal
    lines = [
        f"search wall (experiments.wall_s): {info['wall_s']:.1f} s; {len(exp.trials)} trials, concurrency "
        f"{concurrency}; sum of trials' worker wall_s {trial_wall:.1f} s -> / concurrency {ideal:.1f} s",
        f"Tune overhead = {info['wall_s']:.1f} / {ideal:.1f} = {ratio:.2f} -> goal <= {GOAL:g} "
        f"{'MET' if ratio <= GOAL else 'MISSED'}",
    ]
    short = f"overhead {ratio:.2f} ({info['wall_s']:.0f} s / ({trial_wall:.0f} s / {concurrency}))"
    startups = [t["startup_s"] for t in exp.trials if t.get("startup_s") is not None]
    if startups:
        lines.append(f"per-trial start-up (trials.startup_s: trial start to first training step, device-s): median "
                     f"{median(startups):.1f}, total {sum(startups):.1f} vs {trial_wall:.1f} s of training wall")
        short += f"; start-up median {median(startups):.1f} device-s/trial"

    # Start-up inside the worker: the first epoch against the median of the trial's later epochs.
    first, later_med, inside = [], [], 0.0
    for t in exp.trials:
        curve = [r for r in exp.curve(t["trial_id"]) if r["wall_s"] is not None]
        if not curve:
            continue
        steps = [b["wall_s"] - a["wall_s"] for a, b in zip(curve, curve[1:], strict=False)]
        if steps:
            first.append(curve[0]["wall_s"])
            later_med.append(median(steps))
            inside += max(0.0, curve[0]["wall_s"] - median(steps))
    if later_med:
        lines.append(
            f"inside the worker: first epoch {statistics.mean(first):.2f} s on average vs later epochs "
            f"{statistics.mean(later_med):.2f} s (median per trial, {len(later_med)} trials with >1 epoch); "
            f"extra first-epoch time summed over those trials {inside:.1f} s (model build, payload fetch, "
            "first-step warm-up; it is inside trials.wall_s, so not part of the overhead above)"
        )

    folder = (None if not storage.is_local(results_dir)
              else Path(report.report_folder(results_dir, exp.name)).parent)
    tune = tune_times(folder, [t["trial_id"] for t in exp.trials]) if folder is not None else {}
    if not tune:
        lines.append("Tune's per-trial times: not found (no _ray/tune/run_trial_*/result.json beside the tables)")
        return ratio, lines, short
    rows, gaps, first_gaps = [], [], []
    for t in exp.trials:
        tt = tune.get(t["trial_id"])
        curve = exp.curve(t["trial_id"])
        if tt is None or t["wall_s"] is None or not curve:
            continue
        gap, first_gap = tt["total_s"] - t["wall_s"], tt["first_s"] - curve[0]["wall_s"]
        gaps.append(gap)
        first_gaps.append(first_gap)
        rows.append([t["trial_id"], t["status"], t["epochs"], f"{tt['total_s']:.1f}", f"{t['wall_s']:.1f}",
                     f"{gap:.1f}", f"{first_gap:.1f}"])
    tune_sum = sum(tt["total_s"] for tt in tune.values())
    idle = info["wall_s"] - tune_sum / concurrency
    lines += [
        "",
        table(["trial", "status", "epochs", "Tune wall s", "worker wall s", "gap s", "of which before epoch 1 s"],
              rows),
        "",
        f"per-trial gap (Tune's trial wall - worker's own): median {median(gaps):.1f} s, total {sum(gaps):.1f} s "
        f"({sum(gaps) / concurrency:.1f} s of search wall at concurrency {concurrency}); "
        f"{sum(first_gaps) / max(sum(gaps), 1e-9):.0%} of it before the first report, i.e. starting the trial's "
        "Ray Train run and worker group (Train controller, worker processes, torch process group) "
        "before train_loop_per_worker starts",
        f"rest: search wall - sum(Tune trial wall) / concurrency = {info['wall_s']:.1f} - {tune_sum / concurrency:.1f}"
        f" = {idle:.1f} s (Ray start-up, trial scheduling, slots idle while the last trials finish)",
        f"overhead without the per-trial gap would be {(info['wall_s'] - sum(gaps) / concurrency) / ideal:.2f}",
    ]
    short += f"; Tune-vs-worker gap median {median(gaps):.1f} s/trial, {sum(first_gaps) / sum(gaps):.0%} at start-up"
    return ratio, lines, short


def transfer(exp: report.Experiment, target_acc: float | None) -> tuple[list[str], str]:
    """Compute to target per data fraction, from the search (unconfirmed; ``tlsearch report`` has the rest)."""
    built = report.build_report(exp, target_acc)
    header = ["data fraction (target)", "pretrained", "scratch", "scratch/pretrained compute", "FLOPs ratio"]
    rows = [[f"{r.data_fraction:g} ({report.pct(r.target)})", report.hit_text(r.pretrained),
             report.hit_text(r.scratch), report.ratio_text(r.compute_ratio, r.pretrained, r.scratch),
             report.ratio_text(r.flops_ratio, r.pretrained, r.scratch)] for r in built.to_target]
    short = "; ".join(f"{r.data_fraction:g}: {report.ratio_text(r.compute_ratio, r.pretrained, r.scratch)} at "
                      f"{report.pct(r.target)}" for r in built.to_target)
    return [table(header, rows)], f"compute to target per fraction (scratch/pretrained, unconfirmed): {short}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", help="a results directory, or one search's folder")
    parser.add_argument("--experiment", default=None, help="experiment name (default: the newest)")
    parser.add_argument("--target-acc", type=float, default=None, help="val_acc target for benchmark 5")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.md")
    args = parser.parse_args(argv)
    try:
        exp = report.load_experiment(args.results_dir, args.experiment)
        info = exp.info
        print(f"search {exp.name}: {info['model']} on {info['dataset']}, {len(exp.trials)} trials, "
              f"max_epochs {info['max_epochs']}, grace {info['grace_period']}, created {info['created_at']}; "
              f"ray {info['ray_version']}, torch {info['torch_version']}")
        print("\nbenchmark 3: Tune overhead")
        ratio, lines, over_text = overhead(exp, args.results_dir)
        print("\n".join(lines))
        print("\nbenchmark 5: transfer vs scratch, compute to target (cumulative device-s at the first epoch "
              "reaching it, cheapest trial per arm; tlsearch.report.compute_to_target)")
        lines, transfer_text = transfer(exp, args.target_acc)
        print("\n".join(lines))
    except TLSearchError as exc:
        print(f"from_tables: {exc}", file=sys.stderr)
        return 2
    if not args.no_record:
        numbers = f"search {exp.name} ({len(exp.trials)} trials): {over_text}; transfer {transfer_text}"
        verdict = (f"3: goal <= {GOAL:g} {'MET' if ratio <= GOAL else 'MISSED'} ({ratio:.2f}); "
                   "5: measured (no goal)")
        append_result("from_tables", numbers, verdict, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
