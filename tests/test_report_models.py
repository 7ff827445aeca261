"""The report on a search over two models: each model's best, each fraction's winner, compute to target."""

from __future__ import annotations

import json
from pathlib import Path

import factories

from tlsearch import report
from tlsearch.report import plots

# trial: (model, init, data_fraction, val_acc per epoch, device_s per epoch, test_acc of its best checkpoint)
TRIALS = {
    "a1": ("a", "pretrained", 0.1, [0.60, 0.80], 10.0, 0.78),
    "b1": ("b", "pretrained", 0.1, [0.70, 0.75], 5.0, 0.74),
    "s1": ("a", "scratch", 0.1, [0.50, 0.65], 10.0, None),
    "a2": ("a", "pretrained", 1.0, [0.70, 0.85], 20.0, None),
    "b2": ("b", "pretrained", 1.0, [0.80, 0.90], 8.0, 0.88),
    "s2": ("b", "scratch", 1.0, [0.60, 0.70], 8.0, None),
}


def write(folder: Path, trials: dict = TRIALS) -> Path:
    trial_rows, epoch_rows = [], []
    for tid, (model, init, fraction, accs, cost, test) in trials.items():
        trial = factories.trial_row(tid, "two", model=model, init=init, data_fraction=fraction,
                                    freeze_share=0.0 if init == "scratch" else 0.5, best_val_acc=max(accs),
                                    best_epoch=accs.index(max(accs)) + 1, device_s=cost * len(accs), test_acc=test)
        trial_rows.append(trial)
        epoch_rows += [{**r, "model": model} for r in factories.curve_rows(trial, accs, cost)]
    factories.write_search(folder / "two", factories.experiment_row("two", model="a,b"), trial_rows, epoch_rows)
    return folder


def test_each_model_its_best_and_each_fraction_its_winner(tmp_path: Path) -> None:
    rep = report.build_report(report.load_experiment(write(tmp_path)))
    assert rep.models is not None
    bests = {(b.model, b.init): (b.trials, b.trial_id, b.best_val_acc, b.test_acc) for b in rep.models.bests}
    assert bests == {("a", "pretrained"): (2, "a2", 0.85, None), ("a", "scratch"): (1, "s1", 0.65, None),
                     ("b", "pretrained"): (2, "b2", 0.90, 0.88), ("b", "scratch"): (1, "s2", 0.70, None)}
    winners = {w.data_fraction: (w.winner["trial_id"] if w.winner else None, w.target) for w in rep.models.winners}
    assert winners == {0.1: ("a1", 0.65), 1.0: ("b2", 0.70)}  # the target: scratch's best at that fraction
    # first epoch at the target, paid = device_s so far + start-up (2.0 a trial in the factories)
    paid = {w.data_fraction: {m: (h.compute_s, h.trial_id, h.epoch) for m, h in w.to_target.items()}
            for w in rep.models.winners}
    assert paid == {0.1: {"a": (22.0, "a1", 2), "b": (7.0, "b1", 1)}, 1.0: {"a": (22.0, "a2", 1), "b": (10.0, "b2", 1)}}
    assert {p.model for p in rep.points} == {"a", "b"}
    assert rep.freeze_column == "freeze_share"  # a depth means different things in different models
    assert [(g.init, g.key, g.best_val_acc, g.trials) for g in rep.by_freeze] == [
        ("pretrained", 0.5, 0.90, 4), ("scratch", 0.0, 0.70, 2)]


def test_the_report_says_which_model_won(tmp_path: Path) -> None:
    outcome = report.write_report(write(tmp_path))
    text = Path(outcome.markdown).read_text()
    assert "## Which model" in text
    assert "| 1 | b (pretrained) | 90.00% | 88.00% | 70.00% | 22.0 device-s" in text
    assert "| b | pretrained | 2 | 90.00% | 88.00% | 0.50 | 0 | b2 |" in text
    summary = json.loads(Path(outcome.summary).read_text())
    assert [w["winner"]["model"] for w in summary["models"]["winners"]] == ["a", "b"]
    assert (Path(outcome.folder) / "pareto.png").stat().st_size > 5000
    assert "## Accuracy against freeze share and data fraction" in text
    assert (Path(outcome.folder) / "accuracy_vs_freeze_share.png").is_file()


def test_a_fraction_without_a_target_has_no_compute_to_target(tmp_path: Path) -> None:
    no_scratch = {k: v for k, v in TRIALS.items() if k != "s2"}  # nothing sets fraction 1.0's default target
    rep = report.build_report(report.load_experiment(write(tmp_path, no_scratch)))
    assert rep.models is not None
    last = rep.models.winners[-1]
    assert (last.data_fraction, last.target, last.to_target) == (1.0, None, {})
    assert "| 1 | b (pretrained) | 90.00% | 88.00% | -- | -- | -- |" in report.markdown(rep, {})


def test_one_model_has_no_model_section(tmp_path: Path) -> None:
    single = {k: ("a", *v[1:]) for k, v in TRIALS.items()}
    rep = report.build_report(report.load_experiment(write(tmp_path, single)))
    assert rep.models is None
    written = plots.write_plots(rep, str(tmp_path / "plots"))
    assert "pareto" in written
    assert "## Which model" not in report.markdown(rep, written)
