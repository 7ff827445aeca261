"""The trial: a Tune function trainable that fits one Ray Train ``TorchTrainer`` run.

The Train run is named after the Tune trial, so a restored search finds each trial's run and checkpoints again
(deterministic names are how Train V2 restores). Workers report an explicit ``epoch`` (Train V2 reports no
``training_iteration``), which ASHA uses as its time attribute.
"""

from __future__ import annotations

import time
from typing import Any

from tlsearch.search.session import Resources
from tlsearch.spec import TrialSpec

METRIC, MODE = "val_acc", "max"
WORKER_RETRIES = 1  # a Train worker that dies is restarted once, from the last checkpoint


def run_name(trial_id: str) -> str:
    """The Train run of a Tune trial (and its folder under the search's Ray storage)."""
    return f"train-{trial_id}"


def run_trial(
    config: dict[str, Any], *, spec: TrialSpec, payload: list[Any], resources: Resources, storage: str,
    deadline_s: float | None, feature_cache: Any = None,
) -> None:
    """The Tune function trainable: one Ray Train run per trial, named after the trial so a restore finds it."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from tlsearch.stopping import fit_with_deadline
    from tlsearch.worker import process_group_backend, train_loop_per_worker

    backend = process_group_backend(resources.num_workers, resources.use_gpu, resources.gpus_per_worker)
    trainer = TorchTrainer(
        train_loop_per_worker,
        torch_config=TorchConfig(backend=backend),
        train_loop_config={"spec": spec, "hp": config, "payload": payload, "feature_cache": feature_cache,
                           "started_at": time.time()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers, use_gpu=resources.use_gpu,
            resources_per_worker=resources.worker_resources(),
        ),
        run_config=ray.train.RunConfig(
            name=run_name(tune.get_context().get_trial_id()),
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
