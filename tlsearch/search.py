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
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlsearch import cluster, models, results
from tlsearch import data as data_mod
from tlsearch.config import SearchConfig
from tlsearch.errors import ConfigError, ResultsError, TLSearchError
from tlsearch.models import InputSpec, SourceWeights
from tlsearch.train import Payload, TrialSpec

WORKER_RETRIES = 1  # a Train worker that dies is restarted once, from the last checkpoint
DRIVER_CPU = 0.01  # what a trial's Tune function holds; its Train workers hold the rest of the trial's CPUs
METRIC, MODE = "val_acc", "max"


@dataclass(frozen=True)
class Plan:
    """A validated search: config with the freeze range resolved, data decoded, weights loaded."""

    config: SearchConfig
    name: str
    num_groups: int
    num_classes: int
    input_spec: InputSpec
    source: SourceWeights | None
    images: torch.Tensor
    labels: torch.Tensor
    pool: np.ndarray
    val: np.ndarray

    def payload(self) -> Payload:
        """The decoded data and source weights every trial shares (put once in the object store)."""
        return Payload(self.images, self.labels, self.pool, self.val, self.source, self.config.seed)

    def trial_spec(self, resources: Resources) -> TrialSpec:
        """What every trial's workers need besides the searcher's choices."""
        cfg = self.config
        return TrialSpec(
            model=cfg.model, num_classes=self.num_classes, input_spec=self.input_spec, max_epochs=cfg.max_epochs,
            batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size, weight_decay=cfg.weight_decay,
            seed=cfg.seed, threads=resources.threads, precision=cfg.precision, feature_cache=cfg.feature_cache,
            devices_per_worker=resources.gpus_per_worker if resources.use_gpu else resources.cpus_per_worker,
        )


@dataclass(frozen=True)
class Resources:
    """Where it runs: what each trial asks for and how many trials run at once."""

    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    gpus_per_worker: float
    threads: int
    concurrency: int


@dataclass
class Outcome:
    name: str
    folder: str
    tables: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    best_weights: str | None = None


def default_name() -> str:
    return "search-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def prepare(config: SearchConfig) -> Plan:
    """Check the config against the model, weights and data; raise TLSearchError before anything is written."""
    name = config.name or default_name()
    if not cluster.is_remote(config.results_dir):
        _check_writable(Path(config.results_dir).expanduser().resolve())
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address and address != "auto":
        _check_reachable(address)
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
        config=replace(config, name=name, space=space), name=name, num_groups=groups,
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
    the State API it serves, and without it finished trials keep their CPUs and the next trials never start.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if not address or _is_loopback_address(address):
        _stay_on_loopback()
    try:
        if address:
            ray.init(address=address, log_to_driver=log_to_driver)
        else:
            ray.init(
                num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                _node_ip_address="127.0.0.1", log_to_driver=log_to_driver,
            )
    except (ConnectionError, TimeoutError, ValueError) as exc:
        raise TLSearchError(f"cannot reach Ray at {address or 'a new local instance'}: {exc}") from None


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not after Ray's minutes of retries, when nothing listens at ``address``."""
    import socket

    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not port.isdigit():
        raise TLSearchError(f"Ray address {address!r} has no port; expected HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise TLSearchError(f"cannot reach Ray at {address}: {exc.strerror or exc}") from None


def _is_loopback_address(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _stay_on_loopback() -> None:
    """Keep Ray on 127.0.0.1: by default it swaps a loopback address for the machine's routable one.

    The switch is read when ray is imported, so it is set for the processes Ray starts and for this one.
    """
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def plan_resources(config: SearchConfig, cluster: dict[str, float]) -> Resources:
    """Concurrency from what a whole trial needs, so no trial waits forever for its workers."""
    gpus = cluster.get("GPU", 0.0)
    use_gpu = config.use_gpu if config.use_gpu is not None else gpus >= 1
    trial_gpus = config.num_workers * config.gpus_per_worker
    if use_gpu and gpus < trial_gpus:
        raise ConfigError(f"use_gpu with {config.num_workers} worker(s) x {config.gpus_per_worker:g} GPU needs "
                          f"{trial_gpus:g} GPU(s); the cluster has {gpus:g}")
    cpus = cluster.get("CPU", 0.0)
    per_worker = config.cpus_per_worker or 1.0
    trial_cpus = config.num_workers * per_worker
    by_cpu = math.floor(cpus / trial_cpus + 1e-9)
    by_gpu = math.floor(gpus / trial_gpus + 1e-9) if use_gpu else by_cpu
    fits = min(by_cpu, by_gpu)
    if fits < 1:
        raise ConfigError(
            f"a trial needs {trial_cpus:g} CPU(s) ({config.num_workers} worker(s) x {per_worker:g}); "
            f"the cluster has {cpus:g}"
        )
    concurrency = min(fits, config.trials, config.max_concurrent or fits)
    return Resources(config.num_workers, use_gpu, per_worker, config.gpus_per_worker, max(1, int(per_worker)),
                     concurrency)


def run_trial(
    config: dict[str, Any], *, spec: TrialSpec, payload: list[Any], resources: Resources, storage: str,
    deadline_s: float | None, feature_cache: Any = None,
) -> None:
    """The Tune function trainable: one Ray Train run per trial, named after the trial so a restore finds it."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from tlsearch.stopping import fit_with_deadline
    from tlsearch.train import train_loop_per_worker

    trial_id = tune.get_context().get_trial_id()
    per_worker = {"CPU": resources.cpus_per_worker - DRIVER_CPU / resources.num_workers}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "hp": config, "payload": payload, "feature_cache": feature_cache},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers, use_gpu=resources.use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=storage,
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]
            # The best and (always kept by Ray) the latest checkpoint; older ones are deleted.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE
            ),
            failure_config=ray.train.FailureConfig(max_failures=WORKER_RETRIES),
        ),
    )
    fit_with_deadline(trainer.fit, deadline_s)


def storage_root(config: SearchConfig, name: str) -> str:
    """Where Ray keeps the search's state and checkpoints: beside the tables, on local disk or s3:// / gs://."""
    if cluster.is_remote(config.results_dir):
        return f"{config.results_dir.rstrip('/')}/{name}/_ray"
    return str(Path(config.results_dir).expanduser().resolve() / name / "_ray")


def _filesystem(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def _read_text(uri: str) -> str | None:
    import pyarrow.fs as pafs

    filesystem, path = _filesystem(uri)
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return str(stream.read().decode())


def _write_text(uri: str, text: str) -> None:
    filesystem, path = _filesystem(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(text.encode())


RESUME_IGNORES = {"address", "max_concurrent", "results_dir", "trial_timeout_s"}


def check_resumable(config: SearchConfig, storage: str) -> bool:
    """True when ``storage`` holds this search already; refuse to resume it with a different config."""
    from ray import tune

    if not tune.Tuner.can_restore(f"{storage}/tune"):
        return False
    stored_text = _read_text(f"{storage}/search.json")
    if stored_text is None:
        return True
    stored, wanted = json.loads(stored_text), json.loads(json.dumps(config.to_dict(), default=str))
    changed = sorted(k for k in wanted if k not in RESUME_IGNORES and stored.get(k) != wanted[k])
    if changed:
        raise ConfigError(
            f"search {config.name!r} exists with a different {', '.join(changed)}; resume it with the same "
            "options, pass --restart to start it over, or choose another --name"
        )
    return True


def discard(folder: str, echo: Callable[[str], None]) -> None:
    """Delete a search's folder (tables, Ray state, checkpoints) for ``--restart``, saying what goes."""
    import pyarrow.fs as pafs

    filesystem, path = _filesystem(folder)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return
    files = [i for i in filesystem.get_file_info(pafs.FileSelector(path, recursive=True)) if i.is_file]
    trials = {i.path.split("/train-", 1)[1].split("/", 1)[0] for i in files if "/train-" in i.path}
    size = sum(i.size or 0 for i in files) / 1e6
    echo(f"tlsearch: --restart: discarding {folder} ({len(trials)} trial run(s), {len(files)} files, {size:.1f} MB)")
    filesystem.delete_dir(path)


def run_search(
    config: SearchConfig, echo: Callable[[str], None] = print, verbose: int = 1, restart: bool = False
) -> Outcome:
    """Validate, run (or resume) the search on Ray, write the tables, and return where they are."""
    import optuna
    import ray
    from ray import tune

    from tlsearch.features import FeatureCache
    from tlsearch.space import DefineByRun
    from tlsearch.stopping import PruningOptunaSearch, ResumableASHA

    plan = prepare(config)
    cfg = plan.config
    storage = storage_root(cfg, plan.name)
    folder = storage.rsplit("/_ray", 1)[0]
    resuming = not restart and check_resumable(cfg, storage)
    echo(f"tlsearch: {'resuming' if resuming else 'search'} {plan.name!r}: {cfg.model} on {cfg.dataset} "
         f"({len(plan.pool)} training images in the pool, {len(plan.val)} validation), "
         f"{plan.num_groups} parameter groups, {cfg.trials} trials")
    started = time.perf_counter()
    start_ray(cfg.address, log_to_driver=verbose > 1)
    resources = plan_resources(cfg, ray.cluster_resources())
    echo(f"tlsearch: {resources.concurrency} trial(s) at once, each {resources.num_workers} worker(s) x "
         f"{resources.cpus_per_worker:g} CPU" + (f" + {resources.gpus_per_worker:g} GPU" if resources.use_gpu else ""))
    if restart:
        discard(folder, echo)
    if not resuming:
        _write_text(f"{storage}/search.json", json.dumps(cfg.to_dict(), default=str, indent=2))
    payload_ref = [ray.put(plan.payload())]
    feature_cache = ray.remote(num_cpus=0)(FeatureCache).remote() if cfg.feature_cache else None
    spec = plan.trial_spec(resources)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec, payload=payload_ref, resources=resources, storage=storage,
                             deadline_s=cfg.trial_timeout_s, feature_cache=feature_cache),
        {"CPU": DRIVER_CPU},
    )
    if resuming:
        tuner = tune.Tuner.restore(f"{storage}/tune", trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, num_samples=cfg.trials, max_concurrent_trials=resources.concurrency,
                search_alg=PruningOptunaSearch(
                    space=DefineByRun(cfg.space), metric=METRIC, mode=MODE, max_epochs=cfg.max_epochs,
                    sampler=optuna.samplers.TPESampler(seed=cfg.seed),
                ),
                scheduler=ResumableASHA(
                    time_attr="epoch", max_t=cfg.max_epochs, grace_period=cfg.grace_period,
                    reduction_factor=cfg.reduction_factor, tune_dir=f"{storage}/tune",
                ),
            ),
            run_config=tune.RunConfig(
                name="tune", storage_path=storage, verbose=verbose,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            ),
        )
    grid = tuner.fit()
    wall = time.perf_counter() - started
    tables = build_tables(plan, resources, grid, wall)
    _write_tables(folder, tables)
    exported = export_best(plan, tables["trials"], storage, folder)
    return Outcome(plan.name, folder, tables, wall, exported)


def _write_tables(folder: str, tables: dict[str, Any]) -> None:
    if not cluster.is_remote(folder):
        results.write_search(folder, tables)
        return
    with tempfile.TemporaryDirectory(prefix="tlsearch-tables-") as local:
        results.write_search(local, tables)
        filesystem, base = cluster.remote_filesystem(folder)
        cluster.upload(local, filesystem, base)


def build_tables(plan: Plan, resources: Resources, grid: Any, wall_s: float) -> dict[str, Any]:
    """The three tables from the ResultGrid: each trial's persisted per-epoch results, its status and cost."""
    cfg = plan.config
    trial_rows, epoch_rows = [], []
    for result in grid:
        trial_id = _trial_id(result)
        config = result.config or {}
        hp = {k: config.get(k) for k in ("init", "freeze_depth", "head_lr", "backbone_lr", "data_fraction")}
        epochs = _epochs(result)
        for r in epochs:
            epoch_rows.append({
                "experiment": plan.name, "trial_id": trial_id, **hp, "epoch": int(r["epoch"]),
                **{k: r.get(k) for k in ("val_acc", "val_loss", "train_loss", "wall_s", "device_s",
                                         "samples_seen", "train_flops", "node_id")},
            })
        trial_rows.append(_trial_row(plan, trial_id, hp, epochs, result))
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


def _trial_id(result: Any) -> str:
    trial_id = (result.metrics or {}).get("trial_id")
    if trial_id:
        return str(trial_id)
    match = re.match(r"run_trial_([0-9a-f]+)_", Path(str(result.path)).name)
    return match.group(1) if match else Path(str(result.path)).name


def _epochs(result: Any) -> list[dict[str, Any]]:
    """A trial's per-epoch reports as persisted by Tune, one per epoch.

    A restored worker reports its checkpoint's epoch again (flagged ``restored``): that row stands only when Tune
    had not logged the original. Otherwise the last report of an epoch wins.
    """
    frame = result.metrics_dataframe
    if frame is None or "epoch" not in frame:
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for record in frame.dropna(subset=["epoch"]).to_dict("records"):
        row = {k: (None if v != v else v) for k, v in record.items()}  # NaN -> None
        epoch = int(record["epoch"])
        if not (row.get("restored") and epoch in by_epoch):
            by_epoch[epoch] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def _trial_row(plan: Plan, trial_id: str, hp: dict[str, Any], epochs: list[dict[str, Any]], result: Any) -> dict:
    last = epochs[-1] if epochs else {}
    best = max(epochs, key=lambda r: r["val_acc"], default={})
    error = None
    if result.error is not None:
        error = _first_line(str(result.error))
        status = "timeout" if "timed out" in error else "error"
    else:
        status = "completed" if last.get("epoch", 0) >= plan.config.max_epochs else "stopped"
    return {
        "experiment": plan.name, "trial_id": trial_id, "status": status, **hp,
        **{k: last.get(k) for k in ("num_groups", "train_size", "trainable_params", "flops_per_sample",
                                    "feature_cache")},
        "epochs": int(last.get("epoch", 0)), "best_val_acc": best.get("val_acc"), "best_epoch": best.get("epoch"),
        "last_val_acc": last.get("val_acc"), "last_val_loss": last.get("val_loss"),
        "last_train_loss": last.get("train_loss"),
        **{k: last.get(k) for k in ("wall_s", "device_s", "samples_seen", "train_flops", "node_id")},
        "error": error, "checkpoint_path": last.get("checkpoint_path"),
    }


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "Exception" in ln or "timed out" in ln]
    return (errors[-1] if errors else lines[-1] if lines else "error")[:500]


def export_best(plan: Plan, trials: Any, storage: str, folder: str) -> str | None:
    """Copy the best trial's best checkpoint to ``best.safetensors`` with a JSON sidecar, as --weights reads."""
    import pyarrow.compute as pc
    import pyarrow.fs as pafs

    done = trials.filter(pc.is_valid(trials["best_val_acc"]))
    if done.num_rows == 0:
        return None
    best = done.take(pc.sort_indices(done, sort_keys=[("best_val_acc", "descending")])[:1]).to_pylist()[0]
    filesystem, base = _filesystem(f"{storage}/train-{best['trial_id']}")
    found = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    checkpoints: dict[int, str] = {}
    for info in found:
        if info.base_name == "progress.json":
            with filesystem.open_input_stream(info.path) as stream:
                checkpoints[int(json.loads(stream.read())["epoch"])] = info.path.rsplit("/", 1)[0]
    if not checkpoints:
        return None
    epoch = best["best_epoch"] if best["best_epoch"] in checkpoints else max(checkpoints)
    target_fs, target = _filesystem(f"{folder}/best.safetensors")
    pafs.copy_files(f"{checkpoints[epoch]}/model.safetensors", target, source_filesystem=filesystem,
                    destination_filesystem=target_fs)
    spec = plan.input_spec
    sidecar = {
        "model": plan.config.model, "num_classes": plan.num_classes, "dataset": plan.config.dataset,
        "input": {"in_chans": spec.in_chans, "size": spec.size, "mean": list(spec.mean), "std": list(spec.std)},
        "val_acc": best["best_val_acc"] if epoch == best["best_epoch"] else None, "epoch": epoch,
        "trial_id": best["trial_id"], "experiment": plan.name,
        "config": {k: best[k] for k in ("init", "freeze_depth", "head_lr", "backbone_lr", "data_fraction")},
    }
    _write_text(f"{folder}/best.json", json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return f"{folder}/best.safetensors"


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

