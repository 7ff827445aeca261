"""tlsearch against the script a user would write instead: Optuna alone, in one process (issue 12's race).

Both search the same task in the same run, one after the other on the same machine:

* **tlsearch**: ``tlsearch run`` as a user runs it (Ray started by the command, TPE + ASHA, one Ray Train run per
  trial, the test set scored once at the end); its wall time is the command's, from start to exit.
* **peer**: one Python process, Optuna's TPE sampler (same seed) with its Hyperband pruner (min resource 1 epoch,
  max ``--max-epochs``, reduction factor as ASHA's), ``torch.set_num_threads(--peer-threads)``; the same space
  through ``tlsearch.space.DefineByRun``, the same data, splits and source weights through ``search.prepare``, the
  same model building and epoch loop (``train.build_model``, ``inputs.trial_inputs`` without the feature cache,
  ``train.fit``), so the race measures orchestration, not the training code. It keeps the best trial's
  best-validation weights and scores them on the test set once.

Both are scored on the same held-out test images (``Plan.test``); neither sees them while searching. Prints both
walls, both accuracies and the wall ratio (tlsearch / peer; goal <= 1.0 at equal or better accuracy) and appends a
row to benchmarks/results.md. Starts Ray (through tlsearch): run nothing else that uses Ray meanwhile.

Run: ``.venv/bin/python benchmarks/peer_optuna.py [--trials 20] [--max-epochs 5] [--quick] [--no-record]``
(the source model is pretrained first if ``--weights`` does not exist, as the quickstart does).
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from _common import HERE, append_result, table
from torch.utils.data import DataLoader, TensorDataset

from tlsearch import inputs, results, train
from tlsearch.config import Hyper, build_config
from tlsearch.search import Resources
from tlsearch.search.prepare import prepare
from tlsearch.space import DefineByRun

DATASET = "fashion-mnist-split"
MODEL = "resnet10t"
FRACTIONS = "0.01,0.03,0.1,0.3"
TLSEARCH = str(Path(sys.executable).with_name("tlsearch"))


@dataclass(frozen=True)
class Entry:
    wall_s: float
    best_val_acc: float
    test_acc: float
    trials: int
    pruned: int


def search_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The one search both sides run, as ``tlsearch run`` flags (and, through build_config, as a SearchConfig)."""
    return {"dataset": args.dataset, "model": MODEL, "weights": str(args.weights), "trials": args.trials,
            "max_epochs": args.max_epochs, "grace_period": 1, "reduction_factor": args.reduction_factor,
            "data_fraction": FRACTIONS, "seed": args.seed}


def run_tlsearch(args: argparse.Namespace, results_dir: str) -> Entry:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in search_flags(args).items()]
    command = [TLSEARCH, "run", *flags, "--results-dir", results_dir, "--name", "race"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    tables = results.open(results_dir)
    experiment = tables.experiments.to_table().to_pylist()[0]
    statuses = tables.trials.to_table(columns=["status"]).column("status").to_pylist()
    return Entry(wall, experiment["best_val_acc"], experiment["best_test_acc"], len(statuses),
                 statuses.count("stopped"))


def run_peer(args: argparse.Namespace, results_dir: str) -> Entry:
    """The single-process Optuna search (see the module's docstring)."""
    started = time.perf_counter()
    torch.set_num_threads(args.peer_threads)
    config = build_config(None, **search_flags(args), results_dir=results_dir, name="peer", feature_cache=False)
    plan = prepare(config)
    payload = plan.payload()
    spec = plan.trial_spec(Resources(1, False, float(args.peer_threads), 0.0, args.peer_threads, 1))
    define = DefineByRun(plan.config.space, plan.groups)
    best: dict[str, Any] = {"val": -1.0, "state": None, "hp": None}

    def objective(trial: optuna.Trial) -> float:
        hp = Hyper.from_config({**define(trial), **trial.params})
        torch.manual_seed(spec.seed)
        model, freeze = train.build_model(spec, hp, payload.source_for(spec.model))
        normalize = train.normalizer(spec.input_spec, torch.device("cpu"))
        got = inputs.trial_inputs(model, hp, spec, payload, normalize, None)
        optimizer, scheduler = train.make_optimizer(model, freeze, hp, spec.weight_decay,
                                                    spec.max_epochs * len(got.train))
        stepper = train.Stepper(got.net, got.normalize, optimizer, scheduler)
        trial_best = -1.0
        for result in train.fit(stepper, got.train, got.val, range(1, spec.max_epochs + 1)):
            trial_best = max(trial_best, result.val_acc)
            if result.val_acc > best["val"]:  # the search's best-validation weights, for the one test pass
                best.update(val=result.val_acc, state=copy.deepcopy(model.state_dict()), hp=hp)
            trial.report(result.val_acc, result.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned
        return trial_best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=args.max_epochs,
                                              reduction_factor=args.reduction_factor),
    )
    study.optimize(objective, n_trials=args.trials)
    test_acc = score_on_test(plan, spec, best["hp"], best["state"], payload.source_for(spec.model))
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return Entry(time.perf_counter() - started, best["val"], test_acc, len(study.trials), pruned)


def score_on_test(plan: Any, spec: Any, hp: Hyper, state: dict[str, torch.Tensor], source: Any) -> float:
    model, _ = train.build_model(spec, hp, source)
    model.load_state_dict(state)
    batches = DataLoader(TensorDataset(plan.images[plan.test], plan.labels[plan.test]),
                         batch_size=spec.eval_batch_size)
    normalize = train.normalizer(spec.input_spec, torch.device("cpu"))
    return train.evaluate(model, batches, normalize, torch.nn.CrossEntropyLoss())[1]


def ensure_source(args: argparse.Namespace) -> None:
    if not args.weights.exists():
        subprocess.run([TLSEARCH, "pretrain", "--dataset", args.dataset, "--model", MODEL, "--image-size", "32",
                        "--epochs", "1", "--out", str(args.weights)], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default=DATASET)
    parser.add_argument("--weights", type=Path,
                        default=HERE.parent / "results" / "weights" / f"{MODEL}-{DATASET}-source.safetensors")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--reduction-factor", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer-threads", type=int, default=2, help="torch threads of the peer (default: 2 CPUs)")
    parser.add_argument("--quick", action="store_true", help="8 trials x 3 epochs (a smoke run, not the race)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.max_epochs = 8, 3
    ensure_source(args)
    with tempfile.TemporaryDirectory(prefix="peer-race-") as folder:
        print(f"race: {args.trials} trials x <= {args.max_epochs} epochs on {args.dataset}, {MODEL}", flush=True)
        ours = run_tlsearch(args, str(Path(folder) / "tlsearch"))
        print(f"tlsearch: {ours.wall_s:.0f} s", flush=True)
        peer = run_peer(args, str(Path(folder) / "peer"))
        print(f"peer: {peer.wall_s:.0f} s", flush=True)
    ratio = ours.wall_s / peer.wall_s
    rows = [[name, f"{e.wall_s:.0f}", f"{e.best_val_acc:.4f}", f"{e.test_acc:.4f}", f"{e.trials} ({e.pruned})"]
            for name, e in (("tlsearch", ours), ("peer (Optuna, 1 process)", peer))]
    print(table(["search", "wall s", "best val_acc", "test_acc", "trials (pruned)"], rows))
    as_good = ours.test_acc >= peer.test_acc
    verdict = (f"goal wall <= 1.0x at equal or better test accuracy: {'MET' if ratio <= 1.0 and as_good else 'MISSED'}"
               f" ({ratio:.2f}x, test {ours.test_acc:.4f} vs {peer.test_acc:.4f})")
    print(f"wall ratio tlsearch / peer: {ratio:.2f}x; {verdict}")
    if not args.no_record:
        numbers = (f"{args.trials} trials x <= {args.max_epochs} epochs, {args.dataset}: tlsearch {ours.wall_s:.0f} s "
                   f"(val {ours.best_val_acc:.4f}, test {ours.test_acc:.4f}); peer {peer.wall_s:.0f} s "
                   f"(val {peer.best_val_acc:.4f}, test {peer.test_acc:.4f}); ratio {ratio:.2f}x")
        append_result("peer_optuna", numbers, verdict, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
