"""Benchmark 4: ASHA+TPE against an exhaustive grid over the same space, on fashion-mnist-split.

The space is tlsearch's, discretised so that a grid can cover it: init pretrained/scratch (scratch trains every
layer), freeze depth, head LR, backbone LR and data fraction (``GRID`` below; 60 configurations with the
default values). Two phases:

1. **The grid, measured.** Every configuration is trained for ``--max-epochs`` epochs in-process, as a Ray Train
   worker trains a trial (``search.prepare`` builds the data and the source weights as ``tlsearch run`` does;
   ``train.build_model``, ``inputs.trial_inputs`` with the feature cache, ``make_optimizer``, ``train_epoch``,
   ``evaluate`` and ``Cost`` per epoch; one thread per configuration, ``--jobs`` at a time). Its per-epoch curves
   (val_acc, cumulative device-seconds, FLOPs) are saved to ``--curves`` (Parquet) and reused on later runs.
2. **ASHA+TPE, replayed on the measured curves.** For each of ``--seeds`` seeds, Optuna's ``TPESampler`` asks
   ``--trials`` configurations through tlsearch's own define-by-run space (``space.DefineByRun``: arms
   alternate, scratch means freeze depth 0); each trial's curve is cut where ASHA (``replay.replay``: Ray's
   rule, a trial below the (1 - 1/reduction) quantile of its rung stops there) would stop it, its epochs are
   reported to Optuna as intermediate values (as Ray's ``OptunaSearch.on_trial_result`` does), and the trial is
   told to Optuna as PRUNED or COMPLETE the way ``stopping.PruningOptunaSearch`` tells it. The same with
   ``RandomSampler`` shows what TPE adds. This is the tabulated-benchmark method of Syne Tune's blackbox
   simulator: a replay spends exactly the compute the curves record, so no Ray start-up is in either side.

Reported: the search's compute (sum of device-seconds over the epochs its trials ran) as a fraction of the
grid's, and the gap between the grid's best val_acc and the best the search found (percentage points), median
and worst over seeds. Goal (issue): within 1 point with <= 1/9 of the compute.

Run: ``.venv/bin/python benchmarks/asha_vs_grid.py [--quick] [--weights FILE] [--seeds N] [--trials N]``
(the default grid takes about 15-20 min on 2 CPUs; ``--quick`` about 3 min; a second run with the same grid
reuses the curves and takes seconds). ``--weights`` defaults to the quickstart's source model; it is pretrained
(1 epoch, about 25 s) when missing.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from _common import HERE, MODEL, SEED, append_result, machine, table, versions

from tlsearch import inputs as trial_io
from tlsearch import search, train
from tlsearch.config import Param, SearchConfig, SpaceConfig
from tlsearch.inputs import Payload
from tlsearch.replay import Curve, replay
from tlsearch.search.prepare import prepare
from tlsearch.space import DefineByRun
from tlsearch.spec import TrialSpec
from tlsearch.train import Cost, Hyper

DATASET = "fashion-mnist-split"
SIZE = 32
GOAL_GAP, GOAL_FRACTION = 1.0, 1 / 9
GRID: dict[str, tuple[Any, ...]] = {
    "freeze_depth": (0, 2, 4, 5),
    "head_lr": (1e-3, 1e-2),
    "backbone_lr": (1e-4, 1e-3),
    "data_fraction": (0.01, 0.03, 0.1),
}
QUICK_GRID: dict[str, tuple[Any, ...]] = {**GRID, "freeze_depth": (0, 5), "data_fraction": (0.01, 0.03)}
DEFAULT_WEIGHTS = HERE.parent / "results" / "weights" / f"{MODEL}-{DATASET}-source.safetensors"
KEYS = ("init", "freeze_depth", "head_lr", "backbone_lr", "data_fraction")


def configurations(grid: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Every point of the grid: pretrained over all dimensions, scratch with freeze depth 0 (as DefineByRun)."""
    out = []
    for init in ("pretrained", "scratch"):
        depths = grid["freeze_depth"] if init == "pretrained" else (0,)
        for depth, head, backbone, fraction in itertools.product(
            depths, grid["head_lr"], grid["backbone_lr"], grid["data_fraction"]
        ):
            out.append({"init": init, "freeze_depth": depth, "head_lr": head, "backbone_lr": backbone,
                        "data_fraction": fraction})
    return out


def key(config: dict[str, Any]) -> tuple:
    return tuple(config[k] for k in KEYS)


# ----------------------------------------------------------------------------------------- phase 1: the grid
@dataclass(frozen=True)
class Setup:
    weights: str
    max_epochs: int


_WORKER: dict[str, Any] = {}
ONE_CPU = search.Resources(num_workers=1, use_gpu=False, cpus_per_worker=1.0, gpus_per_worker=0.0, threads=1,
                           concurrency=1)


def _init_worker(setup: Setup) -> None:
    """Per process: the data and source weights exactly as ``tlsearch run`` prepares them."""
    torch.set_num_threads(1)
    config = SearchConfig(dataset=DATASET, space=SpaceConfig(model=Param.fixed(MODEL)), weights=setup.weights,
                          image_size=SIZE, max_epochs=setup.max_epochs, seed=SEED,
                          results_dir=str(HERE.parent / "results"))
    plan = prepare(config)
    _WORKER["payload"] = plan.payload()
    _WORKER["spec"] = plan.trial_spec(ONE_CPU)


def train_configuration(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One grid point trained to max epochs as a worker trains a trial; one row per epoch."""
    spec: TrialSpec = _WORKER["spec"]
    payload: Payload = _WORKER["payload"]
    started = time.perf_counter()
    torch.manual_seed(spec.seed)
    hp = Hyper.from_config(config)
    model, plan = train.build_model(spec, hp, payload.source_for(spec.model))
    inputs = trial_io.trial_inputs(model, hp, spec, payload, train.normalizer(spec.input_spec, torch.device("cpu")),
                                None)
    steps = spec.max_epochs * max(1, len(inputs.train))
    optimizer, scheduler = train.make_optimizer(model, plan, hp, spec.weight_decay, steps)
    # No cache is shared here: each grid point pays its own frozen-feature pass, counted as its set-up.
    cost = Cost(train_flops=sum(p.flops for p in inputs.passes))
    cost.add(time.perf_counter() - started, spec.devices_per_worker, 0, 0.0)
    rows = []
    stepper = train.Stepper(inputs.net, inputs.normalize, optimizer, scheduler)
    for result in train.fit(stepper, inputs.train, inputs.val, range(1, spec.max_epochs + 1)):
        cost.add(result.seconds, spec.devices_per_worker, result.samples, inputs.flops_per_sample)
        rows.append({**config, "epoch": result.epoch, "val_acc": result.val_acc, "device_s": cost.device_s,
                     "train_flops": cost.train_flops, "feature_cache": inputs.cache_status})
    return rows


def measure_grid(configs: list[dict[str, Any]], setup: Setup, jobs: int) -> pa.Table:
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(setup,)) as pool:
        for i, curve in enumerate(pool.map(train_configuration, configs), 1):
            rows.extend(curve)
            last = curve[-1]
            print(f"  grid {i}/{len(configs)}: {dict((k, last[k]) for k in KEYS)} -> best val_acc "
                  f"{max(r['val_acc'] for r in curve):.3f}, {last['device_s']:.1f} device-s "
                  f"({time.perf_counter() - started:.0f} s so far)", flush=True)
    return pa.Table.from_pylist(rows)


def load_or_measure(path: Path, configs: list[dict[str, Any]], setup: Setup, jobs: int) -> pa.Table:
    wanted = {key(c) for c in configs}
    if path.exists():
        table_ = pq.read_table(path)
        have = {key(r) for r in table_.select(list(KEYS)).to_pylist()}
        epochs = max(table_.column("epoch").to_pylist())
        if wanted <= have and epochs == setup.max_epochs:
            print(f"grid: reusing {len(wanted)} measured curves from {path}")
            return table_
    print(f"grid: training {len(configs)} configurations x {setup.max_epochs} epochs, {jobs} at a time")
    measured = measure_grid(configs, setup, jobs)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(measured, path)
    return measured


# ------------------------------------------------------------------------------ phase 2: ASHA+TPE on the curves
def curves_by_config(measured: pa.Table) -> dict[tuple, Curve]:
    grouped: dict[tuple, list[dict[str, Any]]] = {}
    for row in measured.to_pylist():
        grouped.setdefault(key(row), []).append(row)
    out = {}
    for k, rows in grouped.items():
        rows.sort(key=lambda r: r["epoch"])
        out[k] = Curve(trial_id=str(k), epochs=[r["epoch"] for r in rows], val_acc=[r["val_acc"] for r in rows],
                       device_s=[r["device_s"] for r in rows])
    return out


@dataclass(frozen=True)
class SearchOutcome:
    device_s: float
    best_val_acc: float
    pruned: int


def simulate(curves: dict[tuple, Curve], grid: dict[str, tuple[Any, ...]], sampler: optuna.samplers.BaseSampler,
             trials: int, grace: int, reduction: int, max_epochs: int) -> SearchOutcome:
    """One search: the sampler asks through DefineByRun, ASHA cuts each curve, Optuna is told as tlsearch tells it."""
    space = SpaceConfig(
        freeze_depth=Param.choice(*grid["freeze_depth"]), head_lr=Param.choice(*grid["head_lr"]),
        backbone_lr=Param.choice(*grid["backbone_lr"]), data_fraction=Param.choice(*grid["data_fraction"]),
        init=Param.choice("pretrained", "scratch"),
    )
    define = DefineByRun(space)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    ran: list[Curve] = []
    for _ in range(trials):
        trial = study.ask()
        config = {**define(trial), **trial.params}
        ran.append(curves[key(config)])
        outcome = replay(ran, grace, reduction, max_epochs).trials[-1]
        for epoch, acc in zip(ran[-1].epochs, ran[-1].val_acc, strict=True):  # as OptunaSearch.on_trial_result
            if epoch <= outcome.stop_epoch and acc is not None:
                trial.report(acc, epoch)
        if outcome.stop_epoch < max_epochs:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, ran[-1].val_acc[outcome.stop_epoch - 1])
    result = replay(ran, grace, reduction, max_epochs)
    best = max(t.best_val_acc or 0.0 for t in result.trials)
    return SearchOutcome(result.device_s, best, sum(t.stopped_at_rung is not None for t in result.trials))


def ensure_weights(path: Path) -> None:
    if path.exists():
        return
    print(f"source weights {path} missing: pretraining them (1 epoch, as scripts/quickstart.sh does)")
    subprocess.run([str(Path(sys.executable).parent / "tlsearch"), "pretrain", "--dataset", DATASET, "--model", MODEL,
                    "--image-size", str(SIZE), "--epochs", "1", "--out", str(path)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 10-point grid (freeze 0/5, fractions 0.01/0.03)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="source model (safetensors + sidecar)")
    parser.add_argument("--curves", type=Path, default=None, help="Parquet file of the grid's measured curves")
    parser.add_argument("--max-epochs", type=int, default=6)
    parser.add_argument("--grace", type=int, default=1)
    parser.add_argument("--reduction", type=int, default=2)
    parser.add_argument("--trials", default=None,
                        help="trials per search, comma-separated budgets (default: grid size / 10, / 7.5, / 5)")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2, help="grid configurations trained at once")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.md")
    args = parser.parse_args(argv)
    grid = QUICK_GRID if args.quick else GRID
    configs = configurations(grid)
    budgets = ([int(t) for t in args.trials.split(",")] if args.trials
               else sorted({max(2, round(len(configs) / d)) for d in (10, 7.5, 5)}))
    curves_path = args.curves or HERE.parent / "results" / "benchmarks" / (
        f"asha_vs_grid-{'quick' if args.quick else 'full'}-e{args.max_epochs}.parquet")

    ensure_weights(args.weights)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    measured = load_or_measure(curves_path, configs, Setup(str(args.weights), args.max_epochs), args.jobs)
    curves = curves_by_config(measured)
    curves = {key(c): curves[key(c)] for c in configs}
    grid_cost = sum(c.device_s[-1] or 0.0 for c in curves.values())
    grid_flops = sum(r["train_flops"] for r in measured.to_pylist() if r["epoch"] == args.max_epochs
                     and key(r) in curves)
    grid_best = max(max(a for a in c.val_acc if a is not None) for c in curves.values())
    best_config = max(curves, key=lambda k: max(a for a in curves[k].val_acc if a is not None))

    rows, summary = [], {}
    for trials in budgets:
        for name, make in (("ASHA+TPE", lambda s: optuna.samplers.TPESampler(seed=s)),
                           ("ASHA+random", lambda s: optuna.samplers.RandomSampler(seed=s))):
            outcomes = [simulate(curves, grid, make(seed), trials, args.grace, args.reduction, args.max_epochs)
                        for seed in range(args.seeds)]
            fractions = [o.device_s / grid_cost for o in outcomes]
            gaps = [(grid_best - o.best_val_acc) * 100 for o in outcomes]
            within = sum(g <= GOAL_GAP for g in gaps)
            fraction, gap = statistics.median(fractions), statistics.median(gaps)
            summary[name, trials] = (fraction, gap, max(gaps), within)
            rows.append([name, trials, f"{fraction:.3f} (1/{1 / fraction:.1f})", f"{max(fractions):.3f}",
                         f"{gap:.2f}", f"{max(gaps):.2f}", f"{within}/{args.seeds}",
                         f"{statistics.median(o.pruned for o in outcomes):.0f}"])

    print(f"\nBenchmark 4: ASHA (grace {args.grace}, reduction {args.reduction}, max {args.max_epochs} epochs) + "
          f"sampler vs an exhaustive grid of {len(configs)} configurations on {DATASET}\n{machine()}; {versions()}")
    print(f"grid: {grid_cost:.0f} device-s, {grid_flops / 1e12:.2f} TFLOP; best val_acc {grid_best:.4f} at "
          f"{dict(zip(KEYS, best_config, strict=True))}")
    print(table(["search", "trials", "compute / grid (median)", "worst", "gap, points (median)", "worst",
                 f"seeds within {GOAL_GAP:g} point", "pruned (median)"], rows))
    met = [t for t in budgets if summary["ASHA+TPE", t][1] <= GOAL_GAP and summary["ASHA+TPE", t][0] <= GOAL_FRACTION]
    parts = []
    for t in budgets:
        fraction, gap, worst, within = summary["ASHA+TPE", t]
        parts.append(f"{t} trials: gap {gap:.2f} points at 1/{1 / fraction:.1f} of the compute (worst gap "
                     f"{worst:.2f}, {within}/{args.seeds} seeds within {GOAL_GAP:g})")
    verdict = (f"goal within {GOAL_GAP:g} point with <= 1/9 compute (ASHA+TPE, median of {args.seeds} seeds): "
               + (f"MET with {', '.join(map(str, met))} trials" if met else "MISSED at every budget tried"))
    print(verdict)
    if not args.no_record:
        random_parts = [f"{t}: {summary['ASHA+random', t][0]:.3f} of grid, gap {summary['ASHA+random', t][1]:.2f}"
                        for t in budgets]
        append_result(
            "asha_vs_grid",
            f"grid {len(configs)} configs x {args.max_epochs} epochs = {grid_cost:.0f} device-s, best "
            f"{grid_best:.4f}; ASHA+TPE by trials: {'; '.join(parts)}; ASHA+random: {'; '.join(random_parts)}",
            verdict, args.quick,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
