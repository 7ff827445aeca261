"""Model choice: a search over two source models against each model searched alone, with the same trial budget.

Three ``tlsearch run`` searches per seed on the quickstart's data (Fashion-MNIST classes 5-9 at 32 px, sources
pretrained one epoch on classes 0-4): ``resnet10t`` alone, ``mobilenetv3_small_050`` alone, and both together
(``--model a,b``, freezing searched as a share). Every search has the same number of trials and epochs, the
pretrained arm only and one data fraction, so the budget differs only by what the models cost. Reported per
search: the best trial (chosen on validation), its test accuracy (scored once after the search), the model it
used, and the compute the whole search paid (device-seconds of training + start-up + shared passes, all trials).
Each search starts its own local Ray, as a user's run would.

Run: ``.venv/bin/python benchmarks/model_choice.py [--trials N] [--max-epochs E] [--seeds 0,1]`` (about 4 min
per search on 2 CPUs at the defaults; the source weights are the quickstart's, pretrained first when missing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import HERE, append_result, machine, table, versions

from tlsearch import results
from tlsearch.report.analysis import paid

DATASET, SIZE = "fashion-mnist-split", 32
MODELS = ("resnet10t", "mobilenetv3_small_050")
SEARCHES = {"resnet10t alone": MODELS[:1], "mobilenetv3_small_050 alone": MODELS[1:], "both": MODELS}


def weights_file(model: str) -> Path:
    """The quickstart's source weights for ``model`` (pretrained now when missing: ``tlsearch pretrain`` caches)."""
    path = HERE.parent / "results" / "weights" / f"{model}-{DATASET}-source.safetensors"
    subprocess.run([sys.executable, "-m", "tlsearch", "pretrain", "--dataset", DATASET, "--model", model,
                    "--image-size", str(SIZE), "--epochs", "1", "--out", str(path)], check=True,
                   stdout=subprocess.DEVNULL)
    return path


def search(models: tuple[str, ...], work: Path, name: str, args: argparse.Namespace, seed: int) -> dict:
    """Run one search; return its best trial, that trial's test accuracy and the search's total compute."""
    weights = ",".join(f"{m}={weights_file(m)}" for m in models)
    cmd = [sys.executable, "-m", "tlsearch", "run", "--dataset", DATASET, "--model", ",".join(models), "--weights",
           weights, "--init", "pretrained", "--freeze-share", "0:1", "--data-fraction", str(args.data_fraction),
           "--trials", str(args.trials), "--max-epochs", str(args.max_epochs), "--grace-period", "1",
           "--reduction-factor", "2", "--seed", str(seed), "--name", name, "--results-dir", str(work)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - started
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True,
                   timeout=120, check=False)
    trials = results.open(work / name).trials.to_table().to_pylist()
    best = results.best_trial(trials) or {}
    return {"val": best.get("best_val_acc"), "test": best.get("test_acc"), "model": best.get("model"),
            "compute": sum(paid(t) for t in trials), "wall": wall,
            "picked": {m: sum(t["model"] == m for t in trials) for m in models}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--data-fraction", type=float, default=0.1)
    parser.add_argument("--seeds", default="0", help="comma-separated search seeds (TPE, splits, trials)")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.md")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="tlsearch-models-"))
    rows: list[list[object]] = []
    by_search: dict[str, list[dict]] = {label: [] for label in SEARCHES}
    try:
        for seed in seeds:
            for i, (label, models) in enumerate(SEARCHES.items()):
                got = search(models, work, f"s{seed}-{i}", args, seed)
                by_search[label].append(got)
                picked = ", ".join(f"{m} {n}" for m, n in got["picked"].items())
                rows.append([label, seed, f"{got['val']:.4f}", f"{got['test']:.4f}" if got["test"] else "--",
                             got["model"], picked, f"{got['compute']:.0f}", f"{got['wall']:.0f}"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nModel choice: {args.trials} trials x max {args.max_epochs} epochs per search, pretrained arm, data "
          f"fraction {args.data_fraction:g}, {DATASET} at {SIZE}px, seeds {args.seeds}\n{machine()}; {versions()}")
    print(table(["search", "seed", "best val_acc", "its test_acc", "its model", "trials per model",
                 "compute (device-s)", "wall s"], rows))
    means = {label: (statistics.mean(g["test"] or 0.0 for g in got), statistics.mean(g["compute"] for g in got))
             for label, got in by_search.items()}
    summary = "; ".join(f"{label}: test {t:.4f}, {c:.0f} device-s" for label, (t, c) in means.items())
    best_alone = max(t for label, (t, _) in means.items() if label != "both")
    verdict = (f"two-model search {'matches or beats' if means['both'][0] >= best_alone else 'falls short of'} the "
               f"better single-model search on test accuracy ({means['both'][0]:.4f} vs {best_alone:.4f})")
    print(summary + "\n" + verdict)
    if not args.no_record:
        append_result("model_choice", summary, verdict, quick=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
