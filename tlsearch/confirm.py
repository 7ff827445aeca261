"""``tlsearch confirm``: retrain what the search chose, several times, to get numbers with intervals.

For every (init, data_fraction) of an experiment, the best configuration (:func:`tlsearch.results.best_trial`,
on validation) is trained ``repeats`` times with different seeds, each to ``max_epochs`` without early stopping,
on Ray with the same Train loop as the search. Every epoch reports validation and test accuracy (the test set is
only ever read here and after the search, never to choose anything) and the cumulative cost, start-up included.
Each run pays all its own costs, its frozen-feature pass too: nothing is shared between runs. The rows go to
``confirm.parquet`` beside the search's tables; the report turns them into intervals, ratios and verdicts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

from tlsearch import results, storage
from tlsearch.config import DIMENSIONS, SearchConfig
from tlsearch.errors import ConfigError
from tlsearch.search.prepare import Plan, prepare
from tlsearch.search.progress import Progress, quiet_ray
from tlsearch.search.session import DRIVER_CPU, Resources, plan_resources, start_ray
from tlsearch.search.tables import charge_shared_passes, epoch_records, trial_id_of
from tlsearch.search.trial import run_trial

SEED_STRIDE = 1000  # repeat r of a search seeded s trains with seed s + 1000 * (r + 1)


@dataclass(frozen=True)
class ConfirmOutcome:
    experiment: str
    folder: str
    table: pa.Table
    runs: int
    wall_s: float


def chosen_configs(trial_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best trial of every (init, data_fraction), as the configuration to repeat."""
    return results.best_per_arm_and_fraction(trial_rows)


def planned_runs(chosen: list[dict[str, Any]], repeats: int, seed: int) -> list[dict[str, Any]]:
    """One Tune config per (configuration, repeat): the dimensions, the seed, and where it came from."""
    return [
        {**{k: trial[k] for k in DIMENSIONS if trial.get(k) is not None},  # older tables lack model, share
         "seed": seed + SEED_STRIDE * (r + 1), "repeat": r,
         "source_trial_id": trial["trial_id"], "run_id": f"{trial['init']}-{trial['data_fraction']:g}-r{r}"}
        for trial in chosen for r in range(repeats)
    ]


def load_search(results_dir: str, experiment: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The experiment row (newest when not named) and its trials' rows."""
    from tlsearch.report import load_experiment

    exp = load_experiment(results_dir, experiment)
    return exp.info, exp.trials


def confirm(
    results_dir: str, experiment: str | None = None, repeats: int = 3, *, address: str | None = None,
    restart: bool = False, echo: Callable[[str], None] = print, verbose: int = 0,
) -> ConfirmOutcome:
    """Run (or resume) the confirmation runs of an experiment and write ``confirm.parquet``."""
    import ray

    if repeats < 1:
        raise ConfigError(f"--repeats: must be a whole number >= 1, got {repeats}")
    info, trials = load_search(results_dir, experiment)
    chosen = chosen_configs(trials)
    if not chosen:
        raise ConfigError(f"experiment {info['experiment']!r} has no trial with a validation result to confirm")
    stored = SearchConfig.from_dict(json.loads(info["config"]))
    plan = prepare(replace(stored, results_dir=results_dir, address=address or stored.address))
    runs = planned_runs(chosen, repeats, plan.config.seed)
    tune_dir = storage.join(plan.ray_storage, "confirm")
    resuming = not restart and _can_resume(plan.ray_storage, runs)
    echo(f"tlsearch: {'resuming' if resuming else 'confirming'} {plan.name!r}: {len(chosen)} configuration(s) x "
         f"{repeats} repeat(s) = {len(runs)} run(s) of {plan.config.max_epochs} epochs, no early stopping")
    if restart:
        storage.delete_dir(tune_dir)
    started = time.perf_counter()
    with quiet_ray(plan.folder, verbose):
        start_ray(plan.config.address, log_to_driver=verbose > 1)
        resources = plan_resources(replace(plan.config, trials=len(runs)), ray.cluster_resources())
        if not resuming:
            storage.write_text(storage.join(plan.ray_storage, "confirm.json"), json.dumps(runs, indent=2))
        grid = _tuner(plan, resources, runs, tune_dir, resuming, verbose).fit()
    table = confirm_table(plan.name, grid)
    folder = plan.folder
    storage.write_table(table, storage.join(folder, results.FILE_NAMES["confirm"]))
    return ConfirmOutcome(plan.name, folder, table, len(runs), time.perf_counter() - started)


def _can_resume(ray_storage: str, runs: list[dict[str, Any]]) -> bool:
    from ray import tune

    if not tune.Tuner.can_restore(storage.join(ray_storage, "confirm")):
        return False
    stored = storage.read_text(storage.join(ray_storage, "confirm.json"))
    if stored is not None and json.loads(stored) != json.loads(json.dumps(runs)):
        raise ConfigError("a confirmation of this experiment exists with other runs (repeats or configurations); "
                          "pass the same --repeats, or --restart to start it over")
    return True


def run_confirm_trial(config: dict[str, Any], **kwargs: Any) -> None:
    """Tune function: one confirmation run (its ``run`` entry holds the dimensions and the seed)."""
    run_trial(config["run"], **kwargs)


def _tuner(plan: Plan, resources: Resources, runs: list[dict[str, Any]], tune_dir: str, resuming: bool,
           verbose: int) -> Any:
    import ray
    from ray import tune

    spec = replace(plan.trial_spec(resources), evaluate_test=True)
    trainable = tune.with_resources(
        tune.with_parameters(run_confirm_trial, spec=spec, payload=[ray.put(plan.payload(with_test=True))],
                             resources=resources, storage=plan.ray_storage, deadline_s=plan.config.trial_timeout_s,
                             feature_cache=None, streamed=plan.stream is not None),
        {"CPU": DRIVER_CPU},
    )
    if resuming:
        return tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable, param_space={"run": tune.grid_search(runs)},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=resources.concurrency),
        run_config=tune.RunConfig(name="confirm", storage_path=plan.ray_storage, verbose=verbose,
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  callbacks=[Progress(len(runs), plan.config.max_epochs)]),
    )


CONFIRM_COLUMNS = (*results.METRICS, "test_acc", "test_loss", *results.COSTS, "startup_s", "node_id")


def confirm_table(experiment: str, grid: Any) -> pa.Table:
    """One row per run per epoch; each run charged the whole of its own frozen-feature passes."""
    rows: list[dict[str, Any]] = []
    passes: dict[str, str | None] = {}
    for result in grid:
        run = (result.config or {}).get("run", {})
        run_key = trial_id_of(result)
        epochs = epoch_records(result)
        passes[run_key] = epochs[-1].get("feature_passes") if epochs else None
        rows += [{"experiment": experiment, "trial_id": run_key, "source_trial_id": run.get("source_trial_id"),
                  "run_id": run.get("run_id"), "repeat": run.get("repeat"), "seed": run.get("seed"),
                  **{k: run.get(k) for k in DIMENSIONS}, "epoch": int(r["epoch"]),
                  **{k: r.get(k) for k in CONFIRM_COLUMNS}} for r in epochs]
    # Keys are per run (a run's passes are its own): each pass is charged whole to the one run that made it.
    charge_shared_passes([], rows, {k: _own(v, k) for k, v in passes.items()})
    for row in rows:
        row.pop("trial_id")
    return results.to_table("confirm", rows)


def _own(passes: str | None, run_key: str) -> str | None:
    """The run's passes under keys of its own, so no two runs split one."""
    if not passes:
        return None
    return json.dumps([{**p, "key": f"{run_key}/{p['key']}"} for p in json.loads(passes)])
