"""When to stop, and the glue: OptunaSearch (TPE) + ASHA + ``tune.Tuner`` around one TorchTrainer per trial.

``run_search`` is the one core function behind ``tlsearch run``. It validates everything it can before Ray
starts (:func:`prepare`), decodes the data once into Ray's object store, runs the search, and writes the
Parquet tables.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlsearch import data as data_mod
from tlsearch import models, results
from tlsearch.config import SearchConfig
from tlsearch.errors import ConfigError, ResultsError, TLSearchError
from tlsearch.models import InputSpec, SourceWeights
from tlsearch.train import Payload, TrialSpec

DRIVER_CPU = 0.01  # what a trial's Tune function holds; its Train workers hold the rest of the trial's CPUs
METRIC, MODE = "val_acc", "max"


@dataclass(frozen=True)
class Plan:
    """A validated search: config with the freeze range resolved, data decoded, weights loaded."""

    config: SearchConfig
    name: str
    folder: Path
    num_groups: int
    num_classes: int
    input_spec: InputSpec
    source: SourceWeights | None
    images: torch.Tensor
    labels: torch.Tensor
    pool: np.ndarray
    val: np.ndarray


@dataclass(frozen=True)
class Resources:
    """Where it runs: what each trial asks for and how many trials run at once."""

    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    threads: int
    concurrency: int


@dataclass
class Outcome:
    name: str
    folder: Path
    tables: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


def default_name() -> str:
    return "search-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def prepare(config: SearchConfig) -> Plan:
    """Check the config against the model, weights and data; raise TLSearchError before anything is written."""
    name = config.name or default_name()
    folder = Path(config.results_dir).expanduser().resolve() / name
    _check_writable(Path(config.results_dir).expanduser().resolve())
    models.check_model_name(config.model)
    probe = models.create(config.model, num_classes=2)
    groups = models.num_groups(probe)
    space = config.space.with_freeze_range(groups)
    inits = set(space.init.values())
    default_spec = models.input_spec(probe, config.image_size)
    source = None
    if "pretrained" in inits or config.weights:
        source = models.resolve_source(config.model, config.weights, default_spec, config.image_size)
    spec = source.input_spec if source else default_spec
    dataset = data_mod.load(config.dataset, "target", config.data_dir)
    images = data_mod.to_model_input(dataset, spec.in_chans, spec.size)
    labels = torch.from_numpy(dataset.labels)
    pool, val = data_mod.stratified_split(dataset.labels, config.val_size, config.seed)
    if len(np.unique(dataset.labels[pool])) < 2 or len(val) == 0:
        raise ConfigError(f"dataset {config.dataset} is too small to hold out a validation split ({len(dataset)})")
    return Plan(
        config=replace(config, name=name, space=space), name=name, folder=folder, num_groups=groups,
        num_classes=len(dataset.classes), input_spec=spec, source=source, images=images, labels=labels,
        pool=pool, val=val,
    )


def _check_writable(results_dir: Path) -> None:
    probe_dir = results_dir
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir() or not os.access(probe_dir, os.W_OK | os.X_OK):
        raise ResultsError(f"results directory {results_dir} is not writable")


def start_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = False) -> None:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray bound to 127.0.0.1.

    The dashboard (on 127.0.0.1) is kept on: Ray Train V2 frees each trial's worker placement group through
    the State API, and without it finished trials keep their CPUs and the next trials never start.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    try:
        if address:
            ray.init(address=address, log_to_driver=log_to_driver)
        else:
            # Ray otherwise binds its GCS and raylet to the machine's routable address, not loopback. The
            # switch is read when ray is imported: set it for the processes Ray starts and for this one.
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
            ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
            ray.init(
                num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                _node_ip_address="127.0.0.1", log_to_driver=log_to_driver,
            )
    except (ConnectionError, TimeoutError, ValueError) as exc:
        raise TLSearchError(f"cannot reach Ray at {address or 'a new local instance'}: {exc}") from None


def plan_resources(config: SearchConfig, cluster: dict[str, float]) -> Resources:
    """Concurrency from what a whole trial needs, so no trial waits forever for its workers."""
    gpus = cluster.get("GPU", 0.0)
    use_gpu = config.use_gpu if config.use_gpu is not None else gpus >= 1
    if use_gpu and gpus < config.num_workers:
        raise ConfigError(f"use_gpu with {config.num_workers} worker(s) needs as many GPUs; the cluster has {gpus:g}")
    cpus = cluster.get("CPU", 0.0)
    per_worker = config.cpus_per_worker or 1.0
    trial_cpus = config.num_workers * per_worker
    by_cpu = math.floor(cpus / trial_cpus + 1e-9)
    by_gpu = math.floor(gpus / config.num_workers + 1e-9) if use_gpu else by_cpu
    fits = min(by_cpu, by_gpu)
    if fits < 1:
        raise ConfigError(
            f"a trial needs {trial_cpus:g} CPU(s) ({config.num_workers} worker(s) x {per_worker:g}); "
            f"the cluster has {cpus:g}"
        )
    concurrency = min(fits, config.trials, config.max_concurrent or fits)
    return Resources(config.num_workers, use_gpu, per_worker, max(1, int(per_worker)), concurrency)


def run_trial(
    config: dict[str, Any], *, spec: TrialSpec, payload: list[Any], resources: Resources, storage: str
) -> None:
    """The Tune function trainable: one Ray Train run (named after the trial) per trial."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from tlsearch.train import train_loop_per_worker

    trial_id = tune.get_context().get_trial_id()
    per_worker = {"CPU": resources.cpus_per_worker - DRIVER_CPU / resources.num_workers}
    if resources.use_gpu:
        per_worker["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "hp": config, "payload": payload},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers, use_gpu=resources.use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=storage,
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=1),
        ),
    )
    trainer.fit()


def _recorder_class() -> type:
    from ray import tune

    class EpochRecorder(tune.Callback):
        """Keeps every per-epoch report as it arrives, and each trial's error."""

        def __init__(self) -> None:
            self.epochs: dict[str, list[dict[str, Any]]] = {}
            self.configs: dict[str, dict[str, Any]] = {}
            self.errors: dict[str, str] = {}
            self.ids_by_path: dict[str, str] = {}

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if "epoch" in result:
                self.epochs.setdefault(trial.trial_id, []).append(dict(result))
                self.configs[trial.trial_id] = dict(trial.config)

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.configs[trial.trial_id] = dict(trial.config)
            self.ids_by_path[str(trial.path)] = trial.trial_id

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.errors[trial.trial_id] = _first_line(getattr(trial, "error_msg", None) or "error")

    return EpochRecorder


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "Exception" in ln]
    return (errors[-1] if errors else lines[-1] if lines else "error")[:500]


def run_search(config: SearchConfig, echo: Callable[[str], None] = print, verbose: int = 1) -> Outcome:
    """Validate, run the search on Ray, write the tables, and return where they are."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from tlsearch import space as space_mod

    plan = prepare(config)
    cfg = plan.config
    echo(f"tlsearch: search {plan.name!r}: {cfg.model} on {cfg.dataset} ({len(plan.pool)} training images in the "
         f"pool, {len(plan.val)} validation), {plan.num_groups} parameter groups, {cfg.trials} trials")
    started = time.perf_counter()
    start_ray(cfg.address, log_to_driver=verbose > 1)
    resources = plan_resources(cfg, ray.cluster_resources())
    echo(f"tlsearch: {resources.concurrency} trial(s) at once, each {resources.num_workers} worker(s) x "
         f"{resources.cpus_per_worker:g} CPU" + (" + 1 GPU" if resources.use_gpu else ""))
    payload = Payload(plan.images, plan.labels, plan.pool, plan.val, plan.source, cfg.seed)
    payload_ref = [ray.put(payload)]
    spec = TrialSpec(
        model=cfg.model, num_classes=plan.num_classes, input_spec=plan.input_spec, max_epochs=cfg.max_epochs,
        batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size, weight_decay=cfg.weight_decay,
        seed=cfg.seed, threads=resources.threads,
        devices_per_worker=1.0 if resources.use_gpu else resources.cpus_per_worker,
    )
    storage = str(plan.folder / "_ray")
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec, payload=payload_ref, resources=resources, storage=storage),
        {"CPU": DRIVER_CPU},
    )
    searcher = OptunaSearch(
        space=space_mod.DefineByRun(cfg.space), metric=METRIC, mode=MODE,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
    )
    scheduler = ASHAScheduler(
        time_attr="epoch", max_t=cfg.max_epochs, grace_period=cfg.grace_period,
        reduction_factor=cfg.reduction_factor,
    )
    recorder = _recorder_class()()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler, num_samples=cfg.trials,
            max_concurrent_trials=resources.concurrency,
        ),
        run_config=tune.RunConfig(name="tune", storage_path=storage, callbacks=[recorder], verbose=verbose),
    )
    grid = tuner.fit()
    wall = time.perf_counter() - started
    tables = build_tables(plan, resources, grid, recorder, wall)
    results.write_search(plan.folder, tables)
    return Outcome(plan.name, plan.folder, tables, wall)


def build_tables(plan: Plan, resources: Resources, grid: Any, recorder: Any, wall_s: float) -> dict[str, Any]:
    cfg = plan.config
    trial_rows, epoch_rows = [], []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or recorder.ids_by_path[str(result.path)]
        config = {**recorder.configs.get(trial_id, {}), **(result.config or {})}
        hp = {k: config.get(k) for k in ("init", "freeze_depth", "head_lr", "backbone_lr", "data_fraction")}
        epochs = sorted({r["epoch"]: r for r in recorder.epochs.get(trial_id, [])}.values(), key=lambda r: r["epoch"])
        for r in epochs:
            epoch_rows.append({
                "experiment": plan.name, "trial_id": trial_id, **hp, "epoch": int(r["epoch"]),
                **{k: r.get(k) for k in ("val_acc", "val_loss", "train_loss", "wall_s", "device_s",
                                         "samples_seen", "train_flops")},
            })
        trial_rows.append(_trial_row(plan, trial_id, hp, epochs, result, recorder.errors.get(trial_id)))
    trials = results.to_table("trials", trial_rows)
    finished = [r for r in trial_rows if r.get("best_val_acc") is not None]
    best = max(finished, key=lambda r: r["best_val_acc"], default=None)
    experiment = {
        "experiment": plan.name,
        "created_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
        "model": cfg.model, "dataset": cfg.dataset,
        "weights": cfg.weights or (plan.source.origin if plan.source else None),
        "search_space": json.dumps(cfg.space.to_dict()), "config": json.dumps(cfg.to_dict(), default=str),
        "seed": cfg.seed, "trials": cfg.trials, "max_epochs": cfg.max_epochs, "grace_period": cfg.grace_period,
        "reduction_factor": cfg.reduction_factor, "num_groups": plan.num_groups,
        "train_pool_size": len(plan.pool), "val_size": len(plan.val), "concurrency": resources.concurrency,
        "wall_s": wall_s, "best_trial_id": best["trial_id"] if best else None,
        "best_val_acc": best["best_val_acc"] if best else None, **versions(),
    }
    return {
        "experiments": results.to_table("experiments", [experiment]),
        "trials": trials,
        "epochs": results.to_table("epochs", epoch_rows),
    }


def _trial_row(
    plan: Plan, trial_id: str, hp: dict[str, Any], epochs: list[dict[str, Any]], result: Any, error: str | None
) -> dict[str, Any]:
    last = epochs[-1] if epochs else {}
    best = max(epochs, key=lambda r: r["val_acc"], default={})
    if result.error is not None or error:
        status = "error"
        error = error or _first_line(str(result.error))
    else:
        status = "completed" if last.get("epoch", 0) >= plan.config.max_epochs else "stopped"
    metrics = result.metrics or {}
    return {
        "experiment": plan.name, "trial_id": trial_id, "status": status, **hp,
        **{k: last.get(k) for k in ("num_groups", "train_size", "trainable_params", "flops_per_sample")},
        "epochs": last.get("epoch", 0), "best_val_acc": best.get("val_acc"), "best_epoch": best.get("epoch"),
        "last_val_acc": last.get("val_acc"), "last_val_loss": last.get("val_loss"),
        "last_train_loss": last.get("train_loss"),
        **{k: last.get(k) for k in ("wall_s", "device_s", "samples_seen", "train_flops")},
        "error": error, "checkpoint_path": metrics.get("checkpoint_path"),
    }


def versions() -> dict[str, str | None]:
    import optuna
    import ray
    import timm

    import tlsearch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(tlsearch.__file__).parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "tlsearch_version": tlsearch.__version__, "ray_version": ray.__version__, "torch_version": torch.__version__,
        "timm_version": timm.__version__, "optuna_version": optuna.__version__, "git_commit": commit,
    }

