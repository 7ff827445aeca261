"""Searching the model: bad lists, weights and shares are one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tlsearch import models
from tlsearch.cli import cli


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "resnet.safetensors"
    models.save(models.create("test_resnet", num_classes=5), path, {"model": "test_resnet", "num_classes": 5})
    return path


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "test_resnet,resnet10x"], "unknown timm model 'resnet10x'"),
        (["--model", "test_resnet,test_vit", "--weights", "test_efficientnet={w}"],
         "weights: got a file for 'test_efficientnet', which is not a searched model; valid: test_resnet, test_vit"),
        (["--model", "test_resnet,test_vit", "--weights", "{w}"], "name its model, e.g. test_resnet={w}"),
        (["--model", "test_resnet,test_vit", "--freeze-share", "0:1.5"], "freeze_share: must be in [0, 1]"),
        (["--model", "test_resnet", "--freeze-share", "-0.5"], "freeze_share: must be in [0, 1]"),
        (["--model", "test_resnet,test_vit", "--freeze-depth", "0:2"], "use freeze_share 0:1 instead"),
        (["--model", "test_resnet,test_vit", "--weights", "test_vit={w}"],
         "was trained for model 'test_resnet', not 'test_vit'"),
    ],
)
def test_bad_model_choices_are_one_line_exit_2_nothing_written(
    tmp_path: Path, weights: Path, flags: list[str], message: str
) -> None:
    results = tmp_path / "results"
    args = ["run", "--dataset", "digits-split", "--image-size", "16", "--results-dir", str(results), "--name", "m",
            *(f.format(w=weights) for f in flags)]
    outcome = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert outcome.exit_code == 2, outcome.output
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and message.format(w=weights) in lines[0], outcome.stderr
    assert outcome.stdout == "" and not results.exists()


@pytest.mark.slow
def test_a_search_over_two_models(tmp_path: Path, ray_2_cpus: None) -> None:
    """Two pretrained source models searched together on Ray: every trial builds the model it drew, freezes the
    share's depth of that model, and the tables, test scores, export and report follow the model."""
    from tlsearch import pretrain, report, results
    from tlsearch.config import build_config
    from tlsearch.search import run_search
    from tlsearch.space import depth_for_share

    files = {}
    for name in ("test_resnet", "test_efficientnet"):
        files[name] = tmp_path / f"{name}.safetensors"
        pretrain("digits-split", name, files[name], epochs=1, image_size=16, echo=lambda _: None)
    config = build_config(
        None, dataset="digits-split", model="test_resnet,test_efficientnet", trials=6, max_epochs=2,
        weights=",".join(f"{m}={f}" for m, f in files.items()), freeze_share="0,1", data_fraction="0.5",
        name="two", results_dir=str(tmp_path / "results"), batch_size=32, seed=3)
    run_search(config, echo=lambda _: None)
    trials = results.open(tmp_path / "results").trials.to_table().to_pylist()
    assert len(trials) == 6 and all(t["status"] in ("completed", "stopped") for t in trials), trials
    for t in trials:
        assert t["model"] in files and t["freeze_depth"] == depth_for_share(t["freeze_share"], t["num_groups"])
    probes = [t for t in trials if t["init"] == "pretrained" and t["freeze_share"] == 1.0]
    assert all(t["feature_cache"] in ("miss", "hit") for t in probes)
    assert {t["num_groups"] for t in trials} <= {6, 7}
    scored = [t for t in trials if t["test_acc"] is not None]
    assert {(t["init"], t["model"]) for t in trials} <= {(t["init"], t["model"]) for t in scored}
    best = json.loads((tmp_path / "results" / "two" / "best.json").read_text())
    assert best["model"] == results.best_trial(trials)["model"]  # type: ignore[index]
    rep = report.build_report(report.load_experiment(tmp_path / "results"))
    assert (rep.models is not None) == (len({t["model"] for t in trials}) > 1)
