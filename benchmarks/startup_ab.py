"""Per-trial start-up of two checkouts of tlsearch, side by side in one run (issue 12's benchmark 1).

A checkout is a folder holding the ``tlsearch`` package, e.g. the commit before a change:
``git worktree add /tmp/base HEAD~1``. The same search (``--search``; default: digits at 32 px from scratch, so no
weights file is needed, 8 trials of at most 2 epochs, seed 0) runs from each checkout in turn, A B B A ...
(``--rounds`` pairs), each as its own ``python -m tlsearch run`` with its own local Ray and the checkout first on
``PYTHONPATH`` (Ray's workers inherit it). Every trial's start-up is read from the tables it wrote
(``trials.startup_s``: from the start of the trial's Tune function process to its first training step,
device-seconds), with the search's wall (``experiments.wall_s``).

Prints per checkout (named by its commit) the median start-up over all its trials and the median search wall; B/A
for both, and for start-up also the ratio of geometric means with a 95% bootstrap interval over trials
(``report.stats.ratio_interval``) and a verdict; appends a row to benchmarks/results.md (goal: a median start-up of
at most 3 s).

Run: ``.venv/bin/python benchmarks/startup_ab.py --a /tmp/base --b . [--rounds 2] [--no-record]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import append_result, median, table

from tlsearch import results
from tlsearch.report.stats import ratio_interval

GOAL_S = 3.0
SEARCH = "--dataset=digits --image-size=32 --init=scratch --trials=8 --max-epochs=2 --seed=0"


def run_search(checkout: Path, flags: list[str], results_dir: str, name: str) -> tuple[list[float], float]:
    """(each trial's startup_s, the search's wall_s) of one search run from ``checkout``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "tlsearch", "run", *flags, "--results-dir", results_dir, "--name", name]
    subprocess.run(command, check=True, cwd=checkout, env=env, stdout=subprocess.DEVNULL)
    tables = results.open(os.path.join(results_dir, name))
    startups = [s for s in tables.trials.to_table(columns=["startup_s"]).column("startup_s").to_pylist()
                if s is not None]
    wall = float(tables.experiments.to_table(columns=["wall_s"]).column("wall_s")[0].as_py())
    return startups, wall


def describe(checkout: Path) -> str:
    """The checkout's commit (and ``+changes`` when its tree differs from it), else its path."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return str(checkout)
    return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def verdict(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return "too few trials for an interval"
    if high < 1:
        return "B starts faster"
    if low > 1:
        return "B starts slower"
    return "no difference shown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout A (the baseline)")
    parser.add_argument("--b", type=Path, required=True, help="checkout B (the change)")
    parser.add_argument("--rounds", type=int, default=2, help="A B B A pairs of searches (default 2)")
    parser.add_argument("--search", default=SEARCH, help=f"tlsearch run flags (default: {SEARCH})")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.md")
    args = parser.parse_args(argv)
    checkouts = {"A": args.a.resolve(), "B": args.b.resolve()}
    for label, path in checkouts.items():
        if not (path / "tlsearch" / "__init__.py").is_file():
            parser.error(f"--{label.lower()} {path}: no tlsearch package there")
    names = {label: describe(path) for label, path in checkouts.items()}
    order = [label for r in range(args.rounds) for label in (("A", "B") if r % 2 == 0 else ("B", "A"))]
    startups: dict[str, list[float]] = {"A": [], "B": []}
    walls: dict[str, list[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="startup-ab-") as out:
        for i, label in enumerate(order):
            started = time.perf_counter()
            trial_startups, search_wall = run_search(checkouts[label], args.search.split(), out, f"{label}-{i}")
            startups[label] += trial_startups
            walls[label].append(search_wall)
            print(f"{label} ({names[label]}): {len(trial_startups)} trials, start-up median "
                  f"{median(trial_startups):.1f} device-s, search wall {search_wall:.0f} s "
                  f"({time.perf_counter() - started:.0f} s with Ray's start)", flush=True)
    med = {label: median(values) for label, values in startups.items()}
    wall = {label: median(values) for label, values in walls.items()}
    print(table(["checkout", "trials", "start-up median (device-s)", "search wall median (s)"],
                [[f"{label}: {names[label]}", len(startups[label]), f"{med[label]:.1f}", f"{wall[label]:.0f}"]
                 for label in ("A", "B")]))
    # Trials of one search share its load, so the interval over trials is on the narrow side.
    geo = ratio_interval(startups["B"], startups["A"])
    said = verdict(geo.low, geo.high)
    print(f"B/A: start-up medians {med['B'] / med['A']:.2f}x; geometric means {geo.text(spec='.2f', suffix='x')}, "
          f"95% interval over trials: {said}; search wall {wall['B'] / wall['A']:.2f}x "
          f"({args.rounds} round(s), order {' '.join(order)})")
    if not args.no_record:
        numbers = (f"A {names['A']} vs B {names['B']}, `{args.search}`, {' '.join(order)}: start-up median A "
                   f"{med['A']:.1f} vs B {med['B']:.1f} device-s/trial ({len(startups['A'])} and "
                   f"{len(startups['B'])} trials), B/A {med['B'] / med['A']:.2f}x (geometric means "
                   f"{geo.text(spec='.2f', suffix='x')}: {said}); search wall median A {wall['A']:.0f} vs B "
                   f"{wall['B']:.0f} s, B/A {wall['B'] / wall['A']:.2f}x")
        best = min(med.values())
        append_result("startup_ab", numbers, f"goal start-up <= {GOAL_S:g} s {'MET' if best <= GOAL_S else 'MISSED'} "
                      f"({best:.1f})", False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
