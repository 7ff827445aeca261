"""The console of a search: one live progress line instead of Ray's tables and warnings.

:class:`Progress` is a Tune callback. On a terminal it redraws one line (trials done / running / stopped by
ASHA / failed, the best so far with its configuration, elapsed time and an estimate of what is left); when
stdout is not a terminal (a log, ``tlsearch jobs logs``) it prints a plain line each time a trial ends.
:func:`quiet_ray` sends Ray's own log lines and raylet warnings to ``RESULTS_DIR/NAME/logs/ray.log`` instead
of the console (``-v`` shows them).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from ray.tune import Callback

from tlsearch import storage


class Progress(Callback):
    """Counts trials as Tune reports them and draws the search's state."""

    def __init__(self, total: int, max_epochs: int, stream: TextIO | None = None, live: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.max_epochs = total, max_epochs
        self._stream = stream
        self.live = self.stream.isatty() if live is None else live
        self.clock = clock
        self.started = clock()
        self.running: set[str] = set()
        self.ended: dict[str, str] = {}  # trial id -> completed | stopped | failed
        self.last_epoch: dict[str, int] = {}
        self.best: tuple[float, dict[str, Any]] | None = None

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment; a stream is not picklable (stdout is used instead)."""
        return {**self.__dict__, "_stream": None}

    # ------------------------------------------------------------------------------------------- Tune hooks
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._draw()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "epoch" in result:
            self.last_epoch[trial.trial_id] = int(result["epoch"])
        acc = result.get("val_acc")
        if acc is not None and (self.best is None or acc > self.best[0]):
            config = dict(trial.config or {})
            self.best = (float(acc), dict(config.get("run", config)))  # confirm's runs keep theirs under "run"
        self._draw()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        done = self.last_epoch.get(trial.trial_id, 0) >= self.max_epochs
        self._end(trial.trial_id, "completed" if done else "stopped")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial.trial_id, "failed")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()

    # ------------------------------------------------------------------------------------------------ text
    def line(self) -> str:
        counts = {k: sum(1 for v in self.ended.values() if v == k) for k in ("completed", "stopped", "failed")}
        elapsed = self.clock() - self.started
        done = len(self.ended)
        left = f", ~{_duration(elapsed / done * (self.total - done))} left" if 0 < done < self.total else ""
        best = ""
        if self.best is not None:
            acc, config = self.best
            best = f" | best val_acc {acc:.4f} ({_config_text(config)})"
        return (f"trials {done}/{self.total} done: {counts['completed']} completed, {counts['stopped']} stopped by "
                f"ASHA, {counts['failed']} failed; {len(self.running)} running{best} | "
                f"{_duration(elapsed)} elapsed{left}")

    def _end(self, trial_id: str, how: str) -> None:
        self.running.discard(trial_id)
        self.ended[trial_id] = how
        if not self.live:
            self.stream.write(f"tlsearch: trial {trial_id} {how}; {self.line()}\n")
            self.stream.flush()
        self._draw()

    def _draw(self) -> None:
        if self.live:
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()


def _config_text(config: dict[str, Any]) -> str:
    from tlsearch.config import DIMENSIONS

    parts = []
    for name in DIMENSIONS:
        value = config.get(name)
        if value is not None:
            parts.append(f"{name} {value:.2g}" if isinstance(value, float) else f"{name} {value}")
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@contextmanager
def quiet_ray(folder: str, verbose: int) -> Iterator[str | None]:
    """Ray's log lines and raylet warnings go to ``folder/logs/ray.log`` (on a local results folder) unless -v.

    Yields the log file's path (None when nothing is redirected).
    """
    if verbose > 0 or not storage.is_local(folder):
        yield None
        return
    import optuna  # noqa: F401 - set up Optuna's own handler now, so that it is the one replaced below
    import ray._private.worker as ray_worker

    log_path = Path(storage.normalize(folder)) / "logs" / "ray.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    # optuna: "A new study created in memory" and the like
    loggers = [logging.getLogger(name) for name in ("ray", "ray.tune", "ray.train", "ray.data", "optuna")]
    saved = [(lg, list(lg.handlers), lg.propagate) for lg in loggers]
    original_print = ray_worker.print_to_stdstream
    # Tune's newer console engine prints its header even when silent; its legacy one at verbose 0 prints nothing.
    saved_env = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    with open(log_path, "a") as raw:

        def to_log(data: dict, ignore_prefix: bool = False) -> None:  # raylet warnings, worker output
            for line in data.get("lines", []):
                raw.write(f"({data.get('pid', '?')}) {line}\n")
            raw.flush()

        try:
            for lg in loggers:
                lg.handlers, lg.propagate = [handler], False
            ray_worker.print_to_stdstream = to_log
            yield str(log_path)
        finally:
            ray_worker.print_to_stdstream = original_print
            if saved_env is None:
                os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
            else:
                os.environ["RAY_AIR_NEW_OUTPUT"] = saved_env
            for lg, handlers, propagate in saved:
                lg.handlers, lg.propagate = handlers, propagate
            handler.close()
