"""The search's console: one progress line, plain lines when stdout is not a terminal."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

from tlsearch.search.progress import Progress, quiet_ray


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _trial(trial_id: str, init: str = "pretrained") -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={"init": init, "freeze_depth": 3, "head_lr": 0.0123,
                                                      "pretrained.head_lr": 0.0123, "data_fraction": 0.1})


def test_the_line_counts_trials_names_the_best_and_estimates_what_is_left() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(total=4, max_epochs=3, stream=out, live=False, clock=clock)
    a, b, c = _trial("a"), _trial("b", "scratch"), _trial("c")
    for t in (a, b):
        progress.on_trial_start(0, [], t)
    progress.on_trial_result(0, [], a, {"epoch": 3, "val_acc": 0.91})
    progress.on_trial_result(0, [], b, {"epoch": 1, "val_acc": 0.40})
    clock.now = 30.0
    progress.on_trial_complete(0, [], a)
    progress.on_trial_complete(0, [], b)  # ended before max_epochs: stopped by ASHA
    progress.on_trial_start(0, [], c)
    clock.now = 60.0
    progress.on_trial_error(0, [], c)
    line = progress.line()
    assert line.startswith("trials 3/4 done: 1 completed, 1 stopped by ASHA, 1 failed; 0 running")
    assert "best val_acc 0.9100 (init pretrained, freeze_depth 3, head_lr 0.012, data_fraction 0.1)" in line
    assert "1m00s elapsed, ~20s left" in line
    lines = out.getvalue().splitlines()
    assert [ln.split(";")[0] for ln in lines] == ["tlsearch: trial a completed", "tlsearch: trial b stopped",
                                                 "tlsearch: trial c failed"]
    assert "\r" not in out.getvalue()  # not a terminal: no redraws


def test_on_a_terminal_one_line_is_redrawn_and_the_callback_pickles() -> None:
    out = io.StringIO()
    progress = Progress(total=2, max_epochs=1, stream=out, live=True)
    progress.on_trial_start(0, [], _trial("a"))
    progress.on_trial_result(0, [], _trial("a"), {"epoch": 1, "val_acc": 0.5})
    progress.on_experiment_end([])
    assert out.getvalue().count("\r\033[K") == 2 and out.getvalue().endswith("\n")
    restored = pickle.loads(pickle.dumps(progress))  # Tune saves its callbacks with the experiment
    assert restored.best == progress.best and restored.stream is not out


def test_a_confirmation_runs_configuration_is_shown_too() -> None:
    progress = Progress(total=1, max_epochs=1, stream=io.StringIO(), live=False)
    run = SimpleNamespace(trial_id="r", config={"run": {"init": "scratch", "data_fraction": 0.1, "seed": 1000}})
    progress.on_trial_result(0, [], run, {"epoch": 1, "val_acc": 0.5})
    assert "(init scratch, data_fraction 0.1)" in progress.line()


def test_quietly_ray_and_optuna_log_lines_go_to_the_searchs_log_file(tmp_path: Path, capsys: object) -> None:
    import optuna  # noqa: F401 - sets up Optuna's own stderr handler at INFO, as in a search

    with quiet_ray(str(tmp_path), verbose=0) as log_file:
        logging.getLogger("optuna").info("A new study created in memory with name: optuna")
        logging.getLogger("ray.tune").warning("process_trial_result took 1.93 s")
    assert log_file is not None
    text = Path(log_file).read_text()
    assert "A new study created" in text and "process_trial_result" in text
    assert "new study" not in capsys.readouterr().err  # type: ignore[attr-defined]
    assert logging.getLogger("optuna").propagate or logging.getLogger("optuna").handlers  # restored


def test_a_trial_starts_when_its_tune_functions_process_did() -> None:
    import subprocess
    import sys

    code = ("import time; time.sleep(0.5); from tlsearch.search.trial import trial_started_at as s; "
            "print(time.time() - s())")
    waited = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.5 <= waited < 30  # the process's start-up and the sleep count; not "now"
