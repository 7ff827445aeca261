"""When to stop: ASHA that survives a restore, Optuna told about pruning, and a per-trial deadline.

- Ray does not save ASHA's rungs when a search is restored. :class:`ResumableASHA` rebuilds them, before its
  first decision in a run, from the per-epoch results every trial already wrote under the experiment folder.
- Ray's ``OptunaSearch`` tells Optuna a trial stopped by ASHA is COMPLETE with its low early score;
  :class:`PruningOptunaSearch` tells it PRUNED, as Optuna's own pruners would.
- :func:`fit_with_deadline` ends a trial that runs past its deadline (a hung worker never reports again).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from tlsearch import storage
from tlsearch.errors import TLSearchError


class TrialTimeout(TLSearchError):
    """A trial ran past its deadline."""


def recorded_results(tune_dir: str) -> Iterator[dict[str, Any]]:
    """Every result line every trial of a Tune experiment wrote, in the order each trial wrote them.

    ``tune_dir`` is a path or a URI (read through :mod:`tlsearch.storage`). A last line cut short by a killed
    writer is skipped: that result was never complete.
    """
    try:
        found = [i for i in storage.list_files(tune_dir) if i.base_name == "result.json"]
    except (OSError, ValueError, TLSearchError):
        return
    for info in found:
        lines = [ln for ln in (storage.read_text(storage.child(tune_dir, info.path)) or "").splitlines() if ln.strip()]
        for i, line in enumerate(lines):
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    raise


class ResumableASHA(ASHAScheduler):
    """ASHA with one bracket per arm, whose rungs are rebuilt from the recorded results when a search resumes.

    Fair arms: a trial is only ever compared with trials of its own group (by default its ``init``: scratch
    starts slowly and would lose every early rung to fine-tuning), so each arm is stopped on its own terms.
    ``group_by`` may add ``data_fraction``. The brackets are ASHA's own, one per group.
    """

    def __init__(self, *args: Any, tune_dir: str, group_by: Sequence[str] = ("init",), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tune_dir = tune_dir
        self._group_by = tuple(group_by)
        self._empty = copy.deepcopy(self._brackets[0])
        self._groups: dict[tuple[Any, ...], Any] = {}
        self._seeded = False
        self.seeded_results = 0

    def group_of(self, config: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(config.get(k) for k in self._group_by)

    def bracket_for(self, config: Mapping[str, Any]) -> Any:
        key = self.group_of(config)
        if key not in self._groups:
            self._groups[key] = copy.deepcopy(self._empty)
        return self._groups[key]

    def _seed(self) -> None:
        if self._seeded:
            return
        self._seeded = True
        for result in recorded_results(self._tune_dir):
            if self._time_attr in result and self._metric in result and "trial_id" in result:
                trial: Any = SimpleNamespace(trial_id=result["trial_id"])  # all a bracket reads of a Trial
                bracket = self.bracket_for(result.get("config") or {})
                bracket.on_result(trial, result[self._time_attr], self._metric_op * result[self._metric])
                self.seeded_results += 1

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._seed()
        super().on_trial_add(tune_controller, trial)
        self._trial_info[trial.trial_id] = self.bracket_for(trial.config or {})

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._seed()
        return str(super().on_trial_result(tune_controller, trial, result))


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that reports trials ASHA stopped before ``max_epochs`` as PRUNED."""

    def __init__(self, *args: Any, max_epochs: int, time_attr: str = "epoch", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._time_attr = time_attr

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        reached = (result or {}).get(self._time_attr)
        if error or reached is None or reached >= self._max_epochs or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        from optuna.trial import TrialState

        assert self._ot_study is not None
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def fit_with_deadline(fit: Callable[[], Any], deadline_s: float | None) -> Any:
    """Run ``fit`` and return its result; raise TrialTimeout if it is still running after ``deadline_s``."""
    if deadline_s is None:
        return fit()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="tlsearch-trial", daemon=True)
    thread.start()
    thread.join(deadline_s)
    if thread.is_alive():
        raise TrialTimeout(f"trial timed out: still running after its deadline of {deadline_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
