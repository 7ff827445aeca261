"""Resume cost: a search whose driver is SIGKILLed and re-run, against the same search uninterrupted.

Runs ``tlsearch run`` three times on the same settings (default: the quickstart's model and data, 6 trials, 4 epochs,
concurrency 2): once uninterrupted; once SIGKILLed (the whole process group: driver, Ray and trials) at a random
point of the uninterrupted wall time (uniform in [0.3, 0.7], seeded) with at least one trial reported; then the same
command again, which resumes it (``Tuner.restore``). Reported: resumed wall (killed part + resumed run) over the
uninterrupted wall (issue 5's bar: <= 1.5, Ray's own restore-test bar), and that both searches hold exactly the
requested trials with no duplicate epoch rows. Every run starts its own local Ray, as a user's re-run would.

Run: ``.venv/bin/python benchmarks/resume_cost.py [--trials N] [--max-epochs E] [--seed S]`` (about 6 min on 2 CPUs;
the source weights are the quickstart's, pretrained first when missing).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import MODEL, append_result, machine, table, versions
from asha_vs_grid import DATASET, DEFAULT_WEIGHTS, SIZE, ensure_weights

from tlsearch import results
from tlsearch.stopping import recorded_results

GOAL = 1.5


def command(weights: Path, results_dir: Path, name: str, trials: int, max_epochs: int) -> list[str]:
    return [sys.executable, "-m", "tlsearch", "run", "--dataset", DATASET, "--model", MODEL, "--weights",
            str(weights), "--trials", str(trials), "--max-epochs", str(max_epochs), "--grace-period", "1",
            "--reduction-factor", "2", "--data-fraction", "0.01,0.03,0.1", "--name", name, "--results-dir",
            str(results_dir), "--seed", "0"]


def stop_ray() -> None:
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True,
                   timeout=120, check=False)


def timed_run(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    stop_ray()
    return time.perf_counter() - started


def killed_run(cmd: list[str], tune_dir: Path, kill_after_s: float) -> tuple[float, int]:
    """Start the search and SIGKILL its process group after ``kill_after_s`` (and one reported trial)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        while proc.poll() is None:
            reported = {r["trial_id"] for r in recorded_results(str(tune_dir))}
            if time.perf_counter() - started >= kill_after_s and reported:
                break
            time.sleep(0.25)
        if proc.poll() is not None:
            raise SystemExit("the search finished before the kill: raise --trials or lower the kill point")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    stop_ray()
    return time.perf_counter() - started, len(reported)


def check_tables(folder: Path, trials: int) -> str:
    tables = results.open(folder)
    rows = tables.trials.to_table().to_pylist()
    keys = [(e["trial_id"], e["epoch"]) for e in tables.epochs.to_table().to_pylist()]
    ok = len(rows) == trials and len({r["trial_id"] for r in rows}) == trials and len(keys) == len(set(keys))
    return f"{len(rows)} trials, {len(keys)} epoch rows, duplicates {len(keys) - len(set(keys))}" + (
        "" if ok else " (WRONG)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="picks the kill point")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.md")
    args = parser.parse_args(argv)
    ensure_weights(args.weights)
    stop_ray()
    work = Path(tempfile.mkdtemp(prefix="tlsearch-resume-"))
    try:
        plain = timed_run(command(args.weights, work, "plain", args.trials, args.max_epochs))
        fraction = random.Random(args.seed).uniform(0.3, 0.7)
        cmd = command(args.weights, work, "resumed", args.trials, args.max_epochs)
        before, reported = killed_run(cmd, work / "resumed" / "_ray" / "tune", fraction * plain)
        after = timed_run(cmd)
        plain_check, resumed_check = check_tables(work / "plain", args.trials), check_tables(work / "resumed",
                                                                                             args.trials)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = (before + after) / plain
    print(f"\nResume cost: {args.trials} trials x max {args.max_epochs} epochs, {MODEL} on {DATASET} ({SIZE}px)\n"
          f"{machine()}; {versions()}")
    print(table(["run", "wall s", "tables"], [
        ["uninterrupted", f"{plain:.1f}", plain_check],
        [f"killed at {fraction:.2f} of it ({reported} trials reported)", f"{before:.1f}", ""],
        ["re-run (resumes)", f"{after:.1f}", resumed_check],
        ["**killed + resumed / uninterrupted**", f"**{ratio:.2f}**", ""],
    ]))
    verdict = f"goal <= {GOAL}: {'MET' if ratio <= GOAL else 'MISSED'} ({ratio:.2f})"
    print(verdict)
    if not args.no_record:
        append_result("resume_cost", f"uninterrupted {plain:.1f} s; killed at {fraction:.2f} ({before:.1f} s, "
                      f"{reported} trials reported) + resumed {after:.1f} s = ratio {ratio:.2f}; uninterrupted: "
                      f"{plain_check}; resumed: {resumed_check}", verdict, quick=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
