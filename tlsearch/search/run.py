"""The loop of a search: prepare, start Ray, run (or resume) the Tuner, write the tables, export the best.

``run_search`` is the one core function behind ``tlsearch run``. What to try is :mod:`tlsearch.space`, when to
stop is :mod:`tlsearch.stopping`, where it runs is :mod:`tlsearch.search.session`, the trial is
:mod:`tlsearch.search.trial` (its worker :mod:`tlsearch.worker`, the loop :mod:`tlsearch.train`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from tlsearch import results, storage
from tlsearch.search import resume
from tlsearch.search.evaluate import score_on_test
from tlsearch.search.export import export_best
from tlsearch.search.prepare import Plan, prepare
from tlsearch.search.progress import Progress, quiet_ray
from tlsearch.search.session import DRIVER_CPU, Resources, plan_resources, start_ray
from tlsearch.search.tables import build_tables
from tlsearch.search.trial import METRIC, MODE, run_trial


@dataclass
class Outcome:
    name: str
    folder: str
    tables: dict[str, pa.Table] = field(default_factory=dict)
    wall_s: float = 0.0
    best_weights: str | None = None


def run_search(
    config: Any, echo: Callable[[str], None] = print, verbose: int = 0, restart: bool = False
) -> Outcome:
    """Validate, run (or resume) the search on Ray, write the tables, and return where they are."""
    import ray

    plan = prepare(config)
    cfg = plan.config
    resuming = not restart and resume.can_resume(cfg, plan.ray_storage)
    echo(f"tlsearch: {'resuming' if resuming else 'search'} {plan.name!r}: {plan.describe_models()} on "
         f"{cfg.dataset} ({len(plan.pool)} training images in the pool, {len(plan.val)} validation, "
         f"{len(plan.test)} test), {cfg.trials} trials")
    if restart:
        resume.discard(plan.folder, echo)
    started = time.perf_counter()
    with quiet_ray(plan.folder, verbose) as log_file:
        start_ray(cfg.address, log_to_driver=verbose > 1)
        resources = plan_resources(cfg, ray.cluster_resources())
        echo(f"tlsearch: {resources.concurrency} trial(s) at once, each {resources.describe()}"
             + (f"; Ray's logs: {log_file}" if log_file else ""))
        if not resuming:
            resume.remember(cfg, plan.ray_storage)
        grid = make_tuner(plan, resources, resuming, verbose).fit()
    wall = time.perf_counter() - started
    tables = build_tables(plan, resources, grid, wall, functools.partial(score_on_test, plan, resources))
    results.write_search(plan.folder, tables)
    exported = export_best(plan, tables["trials"].to_pylist())
    return Outcome(plan.name, plan.folder, tables, wall, exported)


def make_tuner(plan: Plan, resources: Resources, resuming: bool, verbose: int) -> Any:
    """A new Tuner (TPE + ASHA over one Train run per trial), or the stored one restored."""
    import optuna
    import ray
    from ray import tune

    from tlsearch.feature_cache import FeatureCache
    from tlsearch.space import DefineByRun
    from tlsearch.stopping import PruningOptunaSearch, ResumableASHA

    cfg = plan.config
    tune_dir = storage.join(plan.ray_storage, "tune")
    feature_cache = ray.remote(num_cpus=0)(FeatureCache).remote() if cfg.feature_cache else None
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=plan.trial_spec(resources), payload=[ray.put(plan.payload())],
                             resources=resources, storage=plan.ray_storage, deadline_s=cfg.trial_timeout_s,
                             feature_cache=feature_cache, streamed=plan.stream is not None),
        {"CPU": DRIVER_CPU},
    )
    if resuming:
        # A restored Tuner keeps the RunConfig it was started with (its callbacks included).
        return tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=cfg.trials, max_concurrent_trials=resources.concurrency,
            search_alg=PruningOptunaSearch(
                space=DefineByRun(cfg.space, plan.groups), metric=METRIC, mode=MODE, max_epochs=cfg.max_epochs,
                sampler=optuna.samplers.TPESampler(seed=cfg.seed),
            ),
            scheduler=ResumableASHA(
                time_attr="epoch", max_t=cfg.max_epochs, grace_period=cfg.grace_period,
                reduction_factor=cfg.reduction_factor, tune_dir=tune_dir, group_by=cfg.asha_groups.split(","),
            ),
        ),
        run_config=tune.RunConfig(
            name="tune", storage_path=plan.ray_storage, verbose=verbose,
            callbacks=[Progress(cfg.trials, cfg.max_epochs)],
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
