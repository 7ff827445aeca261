"""The trial: a Tune function trainable that fits one Ray Train ``TorchTrainer`` run.

The Train run is named after the Tune trial, so a restored search finds each trial's run and checkpoints again
(deterministic names are how Train V2 restores). Workers report an explicit ``epoch`` (Train V2 reports no
``training_iteration``), which ASHA uses as its time attribute. Its workers hold the resources of the trial's model
(``model_resources``), and its cost counts that model's devices per worker (:func:`for_trial`).

Start-up: neither this module nor the trial's Tune function and Train controller import torch or timm (the
trainer is a ``DataParallelTrainer`` with the torch backend of :mod:`tlsearch.search.backend`); only the workers
do. The Train controller polls its workers every :data:`POLL_S` (Ray's default is 2 s), so a trial's reports
reach ASHA, and its end reaches Tune, sooner. A trial's start-up is counted from the
start of the process that runs its Tune function (Tune starts one per trial).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

from tlsearch.search.session import Resources
from tlsearch.spec import TrialSpec

METRIC, MODE = "val_acc", "max"
WORKER_RETRIES = 1  # a Train worker that dies is restarted once, from the last checkpoint
POLL_S = 0.5  # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S unless the user set it; passed on to each Train controller


def trial_started_at() -> float:
    """When this trial started: when its Tune function's process did (Tune starts one per trial; Linux: /proc),
    else now."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()



def run_name(trial_id: str) -> str:
    """The Train run of a Tune trial (and its folder under the search's Ray storage)."""
    return f"train-{trial_id}"


def for_trial(model: str, spec: TrialSpec, resources: Resources) -> tuple[TrialSpec, Resources]:
    """A trial of ``model``: its spec (input spec, torch threads, and the devices per worker its cost counts) and
    its resources (its own CPUs and GPUs per worker when ``model_resources`` names it)."""
    shape = resources.for_model(model)
    own = replace(spec.for_model(model), threads=shape.threads, devices_per_worker=shape.devices_per_worker)
    return own, shape


def run_trial(
    config: dict[str, Any], *, spec: TrialSpec, payload: list[Any], resources: Resources, storage: str,
    deadline_s: float | None, feature_cache: Any = None, streamed: bool = False,
) -> None:
    """The Tune function trainable: one Ray Train run per trial, named after the trial so a restore finds it."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from tlsearch.stopping import fit_with_deadline

    started_at = trial_started_at()
    spec, resources = for_trial(str(config.get("model") or ""), spec, resources)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(POLL_S))  # Train passes it to its controller
    datasets = None
    if streamed:  # Ray Data streams the trial's training subset to its workers
        import ray

        from tlsearch.stream import trial_datasets

        datasets = trial_datasets(ray.get(payload[0]), config, spec)
    trainer = build_trainer(
        config, name=run_name(tune.get_context().get_trial_id()), spec=spec, payload=payload, resources=resources,
        storage=storage, feature_cache=feature_cache, datasets=datasets, started_at=started_at,
        callbacks=[TuneReportCallback()],
    )
    fit_with_deadline(trainer.fit, deadline_s)


def build_trainer(
    config: dict[str, Any], *, name: str, spec: TrialSpec, payload: list[Any], resources: Resources, storage: str,
    feature_cache: Any = None, datasets: dict[str, Any] | None = None, started_at: float = 0.0,
    callbacks: list[Any] | None = None,
) -> Any:
    """The trial's Train run: ``train_loop`` on ``resources.num_workers`` workers over a torch process group;
    ``callbacks`` are Train's (the Tune function passes Tune's ``TuneReportCallback``)."""
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from tlsearch.search.backend import TorchBackendConfig, process_group_backend

    backend = process_group_backend(resources.num_workers, resources.use_gpu, resources.gpus_per_worker)
    return DataParallelTrainer(
        train_loop,
        backend_config=TorchBackendConfig(backend=backend),
        datasets=datasets,
        train_loop_config={"spec": spec, "hp": config, "payload": payload, "feature_cache": feature_cache,
                           "started_at": started_at},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers, use_gpu=resources.use_gpu,
            resources_per_worker=resources.worker_resources(),
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=callbacks or [],
            # The best and (always kept by Ray) the latest checkpoint; older ones are deleted.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE
            ),
            failure_config=ray.train.FailureConfig(max_failures=WORKER_RETRIES),
        ),
    )


def train_loop(config: dict[str, Any]) -> None:
    """The Train worker function: :func:`tlsearch.worker.train_loop_per_worker`, imported (with torch and timm) in
    the worker only, so the Tune function and the controller pickle and unpickle a reference to this one."""
    from tlsearch.worker import train_loop_per_worker

    train_loop_per_worker(config)
