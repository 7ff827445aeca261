"""prepare: checks run cheapest first, the source must not have seen the target, the hub fails fast offline."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tlsearch import models
from tlsearch.cli import cli
from tlsearch.config import build_config
from tlsearch.errors import ConfigError, DataError, ModelError
from tlsearch.search.prepare import prepare
from tlsearch.search.session import Resources

FAST = {"model": "test_resnet", "image_size": 16, "name": "p"}


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub must not be asked: a test fails if anything reaches it."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"the hub was asked for {name} before a cheaper check failed")

    monkeypatch.setattr(models, "hub_model", refuse)


@pytest.mark.usefixtures("no_hub")
def test_a_bad_dataset_is_reported_before_missing_weights(tmp_path: Path) -> None:
    nowhere = str(tmp_path / "nonexistent")
    results = str(tmp_path / "r")
    for weights in (None, str(tmp_path / "nope.safetensors")):  # none (so the hub's) or a missing file
        config = build_config(None, **FAST, dataset=nowhere, weights=weights, results_dir=results)
        with pytest.raises(DataError, match="neither a built-in"):
            prepare(config)
    with pytest.raises(DataError, match="neither a built-in"):  # before the model is built for the freeze range
        prepare(build_config(None, **FAST, dataset=nowhere, freeze_depth="99", results_dir=results))
    with pytest.raises(ModelError, match="unknown timm model"):  # a name needs no file: first of all
        prepare(build_config(None, **{**FAST, "model": "resnet10x"}, dataset=nowhere, results_dir=results))


def _weights(tmp_path: Path, model: str = "test_resnet", size: int = 16, **sidecar: Any) -> str:
    path = tmp_path / f"{model}-{size}.safetensors"
    models.save(models.create(model, num_classes=5, in_chans=1), path, {
        "model": model, "num_classes": 5,
        "input": {"in_chans": 1, "size": size, "mean": [0.5], "std": [0.25]}, **sidecar})
    return str(path)


def test_a_source_trained_on_the_target_images_is_refused(tmp_path: Path) -> None:
    seen = _weights(tmp_path, dataset="digits", classes=[str(d) for d in range(10)])
    config = build_config(None, **FAST, dataset="digits-split", weights=seen, results_dir=str(tmp_path / "r"))
    with pytest.raises(DataError, match="were trained on digits, which holds the target digits-split's classes"):
        prepare(config)
    unseen = _weights(tmp_path, dataset="digits-split", classes=["0", "1", "2", "3", "4"])
    plan = prepare(build_config(None, **FAST, dataset="digits-split", weights=unseen, results_dir=str(tmp_path)))
    assert set(plan.sources) == {"test_resnet"} and plan.classes == ("5", "6", "7", "8", "9")


def test_no_network_hub_weights_fail_in_seconds_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # no offline mode: the hub would be tried...
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")  # ...where nothing listens
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    caplog.set_level(logging.DEBUG)
    args = ["run", "--model", "test_resnet", "--dataset", "digits-split", "--image-size", "16", "--init",
            "pretrained", "--results-dir", str(tmp_path / "r")]
    started = time.perf_counter()
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    elapsed = time.perf_counter() - started
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "cannot be reached" in lines[0], result.stderr
    assert "--weights FILE" in lines[0] and "tlsearch pretrain" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert elapsed < 8, elapsed  # huggingface_hub's retry ladder alone takes 46 s for the two files timm asks for
    library = [r for r in caplog.records if r.name.split(".")[0] in ("huggingface_hub", "httpx", "urllib3", "timm")]
    assert not library, [r.getMessage() for r in library]
    assert not (tmp_path / "r").exists()


@pytest.mark.usefixtures("no_hub")
def test_two_models_each_with_its_weights_groups_and_normalisation(tmp_path: Path) -> None:
    unseen = {"dataset": "digits-split", "classes": ["0", "1", "2", "3", "4"]}
    resnet = _weights(tmp_path, **unseen)
    effnet = _weights(tmp_path, "test_efficientnet", **unseen)
    config = build_config(None, **{**FAST, "model": "test_resnet,test_efficientnet"}, dataset="digits-split",
                          weights=f"test_resnet={resnet},test_efficientnet={effnet}", results_dir=str(tmp_path))
    plan = prepare(config)
    assert plan.groups == {"test_resnet": 6, "test_efficientnet": 7} and plan.num_groups is None
    assert {m: s.origin for m, s in plan.sources.items()} == {"test_resnet": resnet, "test_efficientnet": effnet}
    assert plan.config.space.freeze_share is not None and plan.images.shape[1:] == (1, 16, 16)
    assert plan.payload().source_for("test_efficientnet") is plan.sources["test_efficientnet"]
    spec = plan.trial_spec(Resources(1, False, 1.0, 0.0, 1, 1))
    assert spec.model == "test_resnet" and spec.for_model("test_efficientnet").model == "test_efficientnet"
    with pytest.raises(ValueError, match="not one of this search's models"):
        spec.for_model("test_vit")


@pytest.mark.usefixtures("no_hub")
def test_models_that_take_different_sizes_are_refused_unless_one_size_is_asked(tmp_path: Path) -> None:
    unseen = {"dataset": "digits-split", "classes": ["0", "1", "2", "3", "4"]}
    small, large = _weights(tmp_path, size=16, **unseen), _weights(tmp_path, "test_efficientnet", size=24, **unseen)
    options = {**FAST, "model": "test_resnet,test_efficientnet", "image_size": None, "dataset": "digits-split",
               "weights": f"test_resnet={small},test_efficientnet={large}", "results_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"different inputs \(test_resnet 1x16x16, test_efficientnet 1x24x24\)"):
        prepare(build_config(None, **options))
    assert prepare(build_config(None, **{**options, "image_size": 20})).images.shape[1:] == (1, 20, 20)


def test_a_scratch_search_of_two_models_needs_no_weights(tmp_path: Path, no_hub: None) -> None:
    config = build_config(None, **{**FAST, "model": "test_resnet,test_vit", "image_size": 32}, init="scratch",
                          dataset="digits-split", results_dir=str(tmp_path))
    plan = prepare(config)
    assert plan.sources == {} and plan.payload().source_for("test_vit") is None
    assert set(plan.input_specs) == {"test_resnet", "test_vit"} and plan.groups["test_vit"] > 2
